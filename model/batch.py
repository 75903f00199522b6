"""The batch the model consumes: keys, shapes, dtypes, frames. Built by ``odvla.platform.data.collate``.

``B`` batch, ``6`` cameras in ``CAMERAS`` order, ``H, W`` the network input size (``model.vision.image_*``),
``Na`` padded agents, ``Nm`` padded map elements, ``P`` points per map element (``model.vision.map_points``).
Geometry is in the nuScenes ego frame of the keyframe (x forward, y left, metres).

Tensors:
    images            uint8   [B, 6, 3, H, W]  RGB as decoded (the vision encoder applies its backbone's
                                               normalisation); a floating-point tensor is taken as already
                                               normalised (synthetic benchmark batches); collated
                                               batches give a view of channel-last rows [6, H, W, 3]
                                               (non-contiguous; ``.contiguous()`` where memory order matters)
    intrinsics        float32 [B, 6, 3, 3]     pixels of the *resized* image
    sensor2ego        float32 [B, 6, 4, 4]     camera -> ego
    ego_state         float32 [B, 7]           vx, vy, ax, ay, yaw_rate, speed, steering (EGO_STATE_FIELDS)
    command           int64   [B]              index into COMMANDS (right, left, forward)
    past_traj         float32 [B, 4, 2]        past ego positions, oldest first
    past_mask         float32 [B, 4]
    future_traj       float32 [B, 6, 2]        future ego positions t+0.5 .. t+3.0 s
    future_mask       float32 [B, 6]
    gt_boxes          float32 [B, Na, 9]       x, y, z, w, l, h, yaw, vx, vy
    gt_labels         int64   [B, Na]          DETECTION_CLASSES index; -1 = padding / not a detection class
    gt_agent_future   float32 [B, Na, 6, 2]    absolute future centres in the current ego frame
    gt_agent_future_mask float32 [B, Na, 6]
    gt_map_pts        float32 [B, Nm, P, 2]    polylines resampled to P points
    gt_map_labels     int64   [B, Nm]          MAP_CLASSES index; -1 = padding
    frame_index       int64   [B]
Optional tensors (used when present):
    ego2global        float32 [B, 4, 4]        keyframe ego -> global; the vision encoder warps the previous
                                               frame's BEV by the ego motion before fusing it
    gt_instance       int64   [B, Na]          stable id of each target's nuScenes instance (-1 padding): in
                                               training a tracked query keeps following its instance
    vad_ego           float32 [B, 7]           VAD_EGO_FIELDS (``prompt_released``): the released prompt's ego
                                               state (VAD's gt_ego_lcf_feat, from the shards); without it the
                                               released prompt derives it from ego_state
Python lists (length B):
    sample_token, scene_token : str
    task     : str   'planning', 'qa', 'caption_scene', 'caption_agent', 'caption_map', 'interaction', 'external'
                     (``TASKS``, model/tasks.py)
    question : str   the task's question text ('' for 'planning': the model builds the planning prompt from
                     ego_state, command and past_traj)
    answer   : str   target assistant text; '' for 'planning' rows (the model's trajectory codec encodes
                     future_traj) and at inference

Text is the model's business: ``odvla.model.prompt`` builds the full user turn (visual placeholders
<SCENE>/<TRACK>/<MAP>, ego state, command, history, question) from these fields, so the data pipeline, eval and
serve never format prompts themselves.
"""
from __future__ import annotations

TENSOR_KEYS = (
    "images", "intrinsics", "sensor2ego", "ego_state", "command", "past_traj", "past_mask", "future_traj",
    "future_mask", "gt_boxes", "gt_labels", "gt_agent_future", "gt_agent_future_mask", "gt_map_pts",
    "gt_map_labels", "frame_index",
)
TEXT_KEYS = ("sample_token", "scene_token", "task", "question", "answer")
OPTIONAL_TENSOR_KEYS = ("ego2global", "gt_instance", "vad_ego")
