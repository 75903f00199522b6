"""The Parquet shard schema: one row per nuScenes keyframe (docs/data.md, Shards).

Frames and units: every geometric column is in the nuScenes ego frame of *this* keyframe (x forward, y left,
z up, metres, yaw in radians counter-clockwise from x), except ``cam_ego2global``/``ego2global`` which map into
the global frame. Times are microseconds (nuScenes timestamps). Arrays are stored flattened row-major in
``list<float32>`` columns; the shapes below say how to reshape them (``N`` agents, ``M`` future boxes,
``P`` map points in total).

The schema version is written into the file metadata (``odvla.schema_version``); a reader refuses a shard of
another version with an error naming the file.
"""
from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "2"
META_VERSION_KEY = b"odvla.schema_version"

from odvla.model.constants import (  # noqa: F401  (re-exported: the contract's vocabulary)
    CAMERAS,
    COMMANDS,
    DETECTION_CLASSES,
    EGO_STATE_FIELDS,
    FUTURE_STEPS,
    MAP_CLASSES,
    PAST_STEPS,
    STEP_SECONDS,
)

f32 = pa.list_(pa.float32())

SCHEMA = pa.schema(
    [
        ("sample_token", pa.string()),
        ("scene_token", pa.string()),
        ("scene_name", pa.string()),
        ("log_location", pa.string()),  # map name, e.g. 'singapore-onenorth'
        ("timestamp", pa.int64()),
        ("frame_index", pa.int32()),  # index of the keyframe inside its scene (0 = first)
        ("split", pa.string()),  # 'train' | 'val' (| 'test')
        ("prev_sample_token", pa.string()),  # '' at scene start
        # cameras, in CAMERAS order (odvla.platform.config.CAMERAS)
        ("cam_paths", pa.list_(pa.string())),  # [6] paths relative to the dataroot
        ("cam_intrinsics", f32),  # [6,3,3] pixels, for the full-size image
        ("cam_sensor2ego", f32),  # [6,4,4] camera -> ego (at the camera's timestamp)
        ("cam_ego2global", f32),  # [6,4,4] ego at the camera's timestamp -> global
        ("image_hw", pa.list_(pa.int32())),  # [2] full-size image height, width
        ("ego2global", f32),  # [4,4] keyframe ego (LIDAR_TOP sample_data pose) -> global
        ("lidar2ego", f32),  # [4,4] LIDAR_TOP sensor -> keyframe ego (calibrated_sensor; UniAD/VAD planning frame)
        # ego
        ("ego_state", f32),  # [7] EGO_STATE_FIELDS
        ("vad_ego", f32),  # [7] VAD_EGO_FIELDS (model/prompt_released.py): VAD gt_ego_lcf_feat, records.py
        ("command", pa.int8()),  # index into COMMANDS
        ("past_traj", f32),  # [4,2] ego positions at t-2.0..t-0.5 s, oldest first
        ("past_mask", f32),  # [4] 1 = valid
        ("future_traj", f32),  # [6,2] ego positions at t+0.5..t+3.0 s
        ("future_yaw", f32),  # [6] ego yaw at those steps, relative to now
        ("future_mask", f32),  # [6]
        # agents at this keyframe
        ("agent_boxes", f32),  # [N,9] x, y, z, w, l, h, yaw, vx, vy  (w across, l along heading; nuScenes wlh)
        ("agent_class", pa.list_(pa.int8())),  # [N] index into DETECTION_CLASSES, -1 for others
        ("agent_category", pa.list_(pa.string())),  # [N] full nuScenes category name
        ("agent_instance", pa.list_(pa.string())),  # [N] instance token (tracking id)
        ("agent_visibility", pa.list_(pa.int8())),  # [N] nuScenes visibility level 1..4 (4 = 80-100 %)
        ("agent_future", f32),  # [N,6,2] agent centres at t+0.5..t+3.0 s
        ("agent_future_mask", f32),  # [N,6]
        ("agent_future_yaw", f32),  # [N,6] agent yaw at t+0.5..t+3.0 s (ego frame of this keyframe), 0 where masked
        ("agent_num_pts", pa.list_(pa.int32())),  # [N] num_lidar_pts + num_radar_pts (VAD's valid_flag: > 0)
        # future boxes for collision checks: every annotated box at each future keyframe
        ("future_boxes", f32),  # [M,5] x, y, w, l, yaw
        ("future_box_step", pa.list_(pa.int8())),  # [M] 0..5 (0 = t+0.5 s)
        ("future_box_class", pa.list_(pa.int8())),  # [M] DETECTION_CLASSES index, -1 others
        ("future_box_visibility", pa.list_(pa.int8())),  # [M] 1..4
        # map elements around the ego
        ("map_points", f32),  # [P,2] all polyline vertices, concatenated
        ("map_lengths", pa.list_(pa.int32())),  # [E] vertices per element; sum = P
        ("map_class", pa.list_(pa.int8())),  # [E] index into MAP_CLASSES
    ],
    metadata={META_VERSION_KEY: SCHEMA_VERSION.encode()},
)
