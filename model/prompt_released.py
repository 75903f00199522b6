"""The released OpenDriveVLA prompt layout (``text.prompt: released``), reproduced exactly.

Reference: DriveVLA/OpenDriveVLA ``drivevla/data_utils/build_llava_conversation.py`` (user turn, answer),
``llava/conversation.py`` ``conv_qwen_planning_oriented_vlm`` (system text, ChatML) and ``llava/constants.py``
(token strings). The evaluation prompt of the released code is ``conv.get_prompt()``::

    <|im_start|>system\\n{RELEASED_SYSTEM_PROMPT}<|im_end|>\\n<|im_start|>user\\n{user turn}<|im_end|>\\n
    <|im_start|>assistant\\n

which is what the ChatML template of ``odvla.model.tokenizer`` renders for [system, user] with the generation
prompt. (The released *training* code passes the conversation's ``system`` string, which already starts with
``<|im_start|>system\\n``, to ``apply_chat_template`` as the system content, so its training inputs carry that header
twice; this module reproduces the evaluation layout, the one a released checkpoint is scored with.)

Planning user turn (one ego-state line; numbers ``f"{v:.2f}"`` exactly as the released code, ``-0.00`` included)::

    Scene information: <scene_start><SCENE><scene_end>
    Object-wise tracking information: <track_start><TRACK><track_end>
    Map information: <map_start><MAP><map_end>
    Ego states: - Velocity (vx,vy): (0.00,1.87) - Heading Angular Velocity (v_yaw): (-0.01) - Acceleration (ax,ay): (0.02,0.10) - Can Bus: (0.19,-0.02) - Heading Speed: (1.88) - Steering: (-0.05)
    Historical trajectory (last 2 seconds): [(0.01,-7.21),(0.01,-5.39),(0.00,-3.58),(0.00,-1.79)]
    Mission goal: keep forward
    Planning trajectory: <trajectory>

The values follow the cached info the released code reads (GPT-Driver's ``cached_nuscenes_info.pkl``, built with
VAD's ``tools/data_converter/vad_nuscenes_converter.py``); ``vad_ego`` [7] carries VAD's ``gt_ego_lcf_feat`` entries
(:data:`VAD_EGO_FIELDS`; computed by ``odvla.platform.data.records.vad_ego_state``):

- Velocity = ``0.5 * gt_ego_lcf_feat[0:2]``; VAD: ``v * (cos(yaw + pi/2), sin(yaw + pi/2))`` with ``v`` the keyframe
  ego speed from the previous keyframe pose (next one at a scene start) and ``yaw`` VAD's ``quart_to_rpy`` of the
  ego_pose quaternion. VAD's quirk: it unpacks nuScenes' ``[w, x, y, z]`` as ``(x, y, z, w)``, so that angle is
  the pose's roll (about 0 on a road), and the vector is about ``(0, v)`` whatever the heading.
- Heading Angular Velocity = ``(yaw - yaw_prev) / 0.5`` rad/s with the same angle (a roll rate, about 0), not
  wrapped (VAD).
- Acceleration = ``his_diff[-1] - his_diff[-2]``: the change of the last two 0.5 s history displacements (metres),
  text frame, from :func:`released_history`.
- Can Bus = ``gt_ego_lcf_feat[2:4]`` = VAD's ``can_bus[7:9]``: the CAN ``pose`` message's ``accel[0:2]`` (m/s^2,
  vehicle frame) of the first message *after* the keyframe (VAD's loop reads the loop variable, not the message it
  kept); zeros for a scene without CAN data.
- Heading Speed = ``0.5 * v0``; ``v0`` = the CAN ``pose`` ``vel[0]`` nearest the keyframe (m/s), or without CAN data
  ``|his_diff[-1] + fut_diff[0]|`` (metres over 1 s; VAD's fallback).
- Steering = ``kappa = 2 * steering / 2.588`` from the nearest ``steeranglefeedback`` (sign flipped in Singapore),
  0 without CAN data.
- History: the 4 past positions (t-2 s .. t-0.5 s) relative to the current one, text frame; positions before the
  scene start are extrapolated backwards with the earliest known 0.5 s displacement, as VAD does. This project's
  text frame is the ego frame turned (X = -y_ego, Y = x_ego); VAD measures the LiDAR sensor's path in the LiDAR frame
  (a few centimetres apart while turning).

Added tokens (ids from 151665 on Qwen2.5): :data:`RELEASED_ADDED_TOKENS` in ``llava/constants.py`` order, then the
visual placeholders (the released code maps those to negative indices, so their ids are free).
"""
from __future__ import annotations

import numpy as np

from odvla.model.constants import COMMANDS, PAST_STEPS

RELEASED_SYSTEM_PROMPT = """You are Open-DriveVLA, an advanced vision-language driving model. Your core responsibilities include safe trajectory planning and interpretable decision-making. You generate collision-free driving plans while providing clear, logical explanations for user queries.

Context:
 - Coordinates: X-axis is pointing to the right, and Y-axis is pointing to the front. You're at point (0,0). All coordinates are in meters.
 - Objective: Generate a 3-second safe driving plan consisting of 6 waypoints, one every 0.5 seconds. Provide logical responses to user queries.

Task:
- Perception & Prediction: Analyze the driving environment using visual data. Identify road users and hazards and predict their motion.
- Thought Process: Determine critical objects and assess potential hazards. Consider road constraints and traffic rules.
- Trajectory Planning: Define the driving objective. Generate a safe, feasible 3-second route consisting of 6 waypoints.
- Explainability & User Interaction: If the user asks a question, provide a clear and logical response.

Output Format:
1. Trajectory (MOST IMPORTANT):
  - Format: <traj_start>[(x1,y1),(x2,y2),(x3,y3),(x4,y4),(x5,y5),(x6,y6)]<traj_end>
2. User Question Response (OPTIONAL):
  - Format: <answer_start> Answer to the user's question <answer_end>"""
"""``conv_qwen_planning_oriented_vlm.system`` without its leading ``<|im_start|>system\\n`` (the template adds it)."""

TRAJECTORY_TOKEN = "<trajectory>"
RELEASED_ADDED_TOKENS = (
    TRAJECTORY_TOKEN, "<track_start>", "<track_end>", "<traj_start>", "<traj_end>", "<scene_start>", "<scene_end>",
    "<map_start>", "<map_end>", "<ego_start>", "<ego_end>", "<command_start>", "<command_end>",
    "<question_start>", "<question_end>", "<answer_start>", "<answer_end>",
)
"""``llava/constants.py`` declaration order of the released text tokens."""

VAD_EGO_FIELDS = ("vx", "vy", "can_ax", "can_ay", "yaw_rate", "v0", "kappa")
"""``vad_ego`` [7] = VAD ``gt_ego_lcf_feat[[0, 1, 2, 3, 4, 7, 8]]`` (m/s, m/s, m/s^2, m/s^2, rad/s, m/s, 1/m)."""

STEER_TO_KAPPA = 2.0 / 2.588
"""VAD: ``Kappa = 2 * steering / 2.588`` (steering wheel angle, rad -> curvature proxy)."""


def _f(v: float) -> str:
    return f"{float(v):.2f}"


def vad_ego_from_state(ego_state) -> np.ndarray:
    """``vad_ego`` [7] for a row that has only ``ego_state`` [7] (EGO_STATE_FIELDS, ego frame; a serve request):
    what VAD's definitions give for a level pose (module docstring): velocity ``(0, speed)``, heading angular
    velocity 0 (VAD's angle is the roll), CAN acceleration = ``(ax, ay)``, ``v0`` = speed, ``kappa`` from the
    steering angle. So a served row reads like the shard rows a model was trained on."""
    e = np.asarray(ego_state, dtype=np.float64).reshape(-1)
    vx, vy, ax, ay, yaw_rate, speed, steering = (float(v) for v in e)
    return np.array([0.0, speed, ax, ay, 0.0, speed, steering * STEER_TO_KAPPA])


def released_history(past_traj, past_mask, future_traj=None, future_mask=None) -> np.ndarray:
    """[4, 2] text-frame history (oldest first) with VAD's backward extrapolation of positions before the scene
    start. ``past_traj`` [4, 2] ego frame, ``past_mask`` [4]; ``future_traj`` [6, 2] / ``future_mask`` [6] give the
    current step's displacement when no past point exists (VAD uses the next keyframe there)."""
    p = np.asarray(past_traj, dtype=np.float64).reshape(PAST_STEPS, 2)
    m = np.asarray(past_mask, dtype=np.float64).reshape(PAST_STEPS) > 0.5
    pts = np.zeros((PAST_STEPS + 1, 2))
    pts[:PAST_STEPS] = np.stack([-p[:, 1], p[:, 0]], -1) + 0.0  # + 0.0: no '-0.00' from turning an exact 0
    diff = np.zeros((PAST_STEPS + 1, 2))
    if future_traj is not None and future_mask is not None and float(np.asarray(future_mask).reshape(-1)[0]) > 0.5:
        f0 = np.asarray(future_traj, dtype=np.float64).reshape(-1, 2)[0]
        diff[PAST_STEPS] = (-f0[1], f0[0])
    for i in range(PAST_STEPS - 1, -1, -1):
        if m[i]:
            diff[i] = pts[i + 1] - pts[i]
        else:
            pts[i] = pts[i + 1] - diff[i + 1]
            diff[i] = diff[i + 1]
    return pts[:PAST_STEPS]


def released_ego_line(vad_ego, history_text) -> str:
    """The one-line ego state (without the ``Ego states:`` label) from ``vad_ego`` [7] (VAD_EGO_FIELDS) and the
    [4, 2] text-frame history of :func:`released_history` (for the acceleration)."""
    e = np.asarray(vad_ego, dtype=np.float64).reshape(-1)
    if e.shape != (len(VAD_EGO_FIELDS),) or not np.all(np.isfinite(e)):
        raise ValueError(f"vad_ego must be {len(VAD_EGO_FIELDS)} finite values {VAD_EGO_FIELDS}, got {e.tolist()}")
    h = np.asarray(history_text, dtype=np.float64).reshape(PAST_STEPS, 2)
    his = np.concatenate([h, np.zeros((1, 2))])
    d = his[1:] - his[:-1]
    ax, ay = d[-1] - d[-2]
    vx, vy, cx, cy, v_yaw, v0, kappa = e
    return (f"- Velocity (vx,vy): ({_f(vx * 0.5)},{_f(vy * 0.5)})"
            f" - Heading Angular Velocity (v_yaw): ({_f(v_yaw)})"
            f" - Acceleration (ax,ay): ({_f(ax)},{_f(ay)})"
            f" - Can Bus: ({_f(cx)},{_f(cy)})"
            f" - Heading Speed: ({_f(v0 * 0.5)})"
            f" - Steering: ({_f(kappa)})")


def released_visual_header() -> str:
    return ("Scene information: <scene_start><SCENE><scene_end>\n"
            "Object-wise tracking information: <track_start><TRACK><track_end>\n"
            "Map information: <map_start><MAP><map_end>\n")


def build_released_planning_turn(vad_ego, command: int, past_traj, past_mask, future_traj=None, future_mask=None,
                                 ego_token: str = "") -> str:
    """The released planning user turn (module docstring). ``ego_token``: a placeholder written after
    ``Ego states:`` (only with ``text.ego_token``, which the released layout does not have)."""
    c = int(command)
    if not 0 <= c < len(COMMANDS):
        raise ValueError(f"command index must be in 0..{len(COMMANDS) - 1} {COMMANDS}, got {command!r}")
    his = released_history(past_traj, past_mask, future_traj, future_mask)
    his_text = "[" + ",".join(f"({_f(x)},{_f(y)})" for x, y in his) + "]"
    ego = released_ego_line(vad_ego, his)
    return (released_visual_header()
            + f"Ego states: {ego_token + ' ' if ego_token else ''}{ego}\n"
            + f"Historical trajectory (last 2 seconds): {his_text}\n"
            + f"Mission goal: {COMMANDS[c]}\n"
            + f"Planning trajectory: {TRAJECTORY_TOKEN}")


def released_system_prompt(text_cfg=None) -> str:
    """The released system text (the layout has no notes for other trajectory encodings)."""
    return RELEASED_SYSTEM_PROMPT


def planning_turn_for_row(batch: dict, b: int, text_cfg, to_numpy) -> str:
    """Released planning turn of row ``b`` of a model batch (model/batch.py): ``vad_ego`` when the batch has it
    (shards of schema 2), otherwise :func:`vad_ego_from_state` of ``ego_state``."""
    from odvla.model.ego_token import EGO_TOKEN

    vad = batch.get("vad_ego")
    vad_ego = to_numpy(vad[b]) if vad is not None else vad_ego_from_state(to_numpy(batch["ego_state"][b]))
    fut, fmask = batch.get("future_traj"), batch.get("future_mask")
    return build_released_planning_turn(
        vad_ego, int(batch["command"][b]), to_numpy(batch["past_traj"][b]), to_numpy(batch["past_mask"][b]),
        to_numpy(fut[b]) if fut is not None else None, to_numpy(fmask[b]) if fmask is not None else None,
        ego_token=EGO_TOKEN if getattr(text_cfg, "ego_token", False) else "")
