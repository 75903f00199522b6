"""The planning frame of UniAD / VAD / OpenDriveVLA: the keyframe's LiDAR frame, and the shard values moved into it.

What the references score (read from their code):

* UniAD ``trajectory_api.get_sdc_planning_label``: a pseudo box at the origin of the *future* keyframe's LIDAR_TOP
  frame, moved lidar -> ego -> global -> keyframe ego -> keyframe lidar. The ground truth is the LiDAR sensor's
  path (not the rear axle's) in the keyframe's LiDAR frame (x right, y forward); the mask is 0 after the scene's
  last keyframe (positions there are 0).
* VAD ``vad_nuscenes_converter.py`` ``gt_ego_fut_trajs``: ``get_global_sensor_pose`` of each future keyframe (the
  LiDAR sensor's global pose), moved into the keyframe's ego then LiDAR frame: the same path.
* Boxes: UniAD's occupancy boxes are moved into the keyframe LiDAR frame the same way; VAD's agent boxes and their
  futures are in the keyframe LiDAR frame from the converter.

LIDAR_TOP sits about 0.94 m ahead of nuScenes' ego origin (the rear axle), so this frame differs from the shard's
ego frame by that lever arm and by the sensor's ~90 degree mounting yaw. The shards keep ego-frame training targets
(rear-axle positions, x forward, y left; the model learns those) and the LIDAR_TOP calibration ``lidar2ego``; the
evaluation transforms here, at scoring time:

* ground truth: sensor position at step k = rear-axle position + R(yaw_k) * lidar translation, with the logged
  ``future_yaw``, at the sensor's height; then into the LiDAR frame with the full 3-D calibration. Masked steps
  are 0, as UniAD's.
* predictions (rear-axle waypoints): the same lever arm with the heading estimated from the predicted path (the
  rear axle moves along the heading: central differences, the origin as the 0th point, the previous heading where
  the path moves < 5 cm). A prediction equal to the logged path lands within a few centimetres of the GT.
* boxes: centres at ground height (box bottoms; the references move bottom centres), yaw by the calibration's yaw.

Values come out as (forward, left) metres in the LiDAR frame: ``forward = y_lidar``, ``left = -x_lidar``, the
layout ``occupancy.py`` reads; ``to_text_frame`` gives the references' (x right, y forward).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from odvla.model.constants import DETECTION_CLASSES, FUTURE_STEPS

VAD_RANGE = (15.0, 30.0)
"""VAD's ``point_cloud_range`` [-15, -30, -2, 15, 30, 2]: |x| < 15 m (lateral), |y| < 30 m (forward), LiDAR frame,
box centres, strict (``in_range_bev``)."""
_MIN_HEADING_STEP = 0.05  # m: a predicted path that moves less keeps the previous heading


def _calib(lidar2ego) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(lidar2ego, dtype=np.float64).reshape(4, 4)
    return m[:3, :3], m[:3, 3]


def ego_to_planning(xy: np.ndarray, lidar2ego, z: float | np.ndarray = 0.0) -> np.ndarray:
    """Points [..., 2] of the keyframe ego frame (x forward, y left; height ``z`` m) -> [..., 2] (forward, left) of
    the keyframe LiDAR frame."""
    R, t = _calib(lidar2ego)
    xy = np.asarray(xy, dtype=np.float64)
    p = np.concatenate([xy, np.broadcast_to(np.asarray(z, np.float64), xy.shape[:-1])[..., None]], -1)
    pl = (p - t) @ R  # R^T (p - t), row vectors
    return np.stack([pl[..., 1], -pl[..., 0]], -1)


def yaw_to_planning(yaw: np.ndarray, lidar2ego) -> np.ndarray:
    """Headings (rad, ego frame) -> headings in the (forward, left) LiDAR frame."""
    R, _ = _calib(lidar2ego)
    yaw = np.asarray(yaw, dtype=np.float64)
    d = np.stack([np.cos(yaw), np.sin(yaw), np.zeros_like(yaw)], -1) @ R
    return np.arctan2(-d[..., 0], d[..., 1])


def path_heading(traj: np.ndarray) -> np.ndarray:
    """Heading (rad) of a rear-axle path at each waypoint from central differences. traj [..., T, 2] -> [..., T].

    The origin (the ego now, heading 0) is the point before the first waypoint; the last waypoint uses the backward
    difference; where the difference is shorter than 5 cm the previous heading is kept.
    """
    traj = np.asarray(traj, dtype=np.float64)
    pts = np.concatenate([np.zeros_like(traj[..., :1, :]), traj], -2)  # [..., T+1, 2]
    T = traj.shape[-2]
    out = np.zeros(traj.shape[:-1])
    last = np.zeros(traj.shape[:-2])
    for k in range(1, T + 1):
        d = pts[..., min(k + 1, T), :] - pts[..., k - 1, :]
        ok = np.hypot(d[..., 0], d[..., 1]) >= _MIN_HEADING_STEP
        last = np.where(ok, np.arctan2(d[..., 1], d[..., 0]), last)
        out[..., k - 1] = last
    return out


def sensor_path(traj: np.ndarray, yaw: np.ndarray, lidar2ego) -> np.ndarray:
    """Rear-axle waypoints [T, 2] with headings [T] (ego frame) -> LiDAR sensor positions, (forward, left) LiDAR
    frame [T, 2]."""
    _, t = _calib(lidar2ego)
    traj = np.asarray(traj, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    pos = np.stack([traj[..., 0] + c * t[0] - s * t[1], traj[..., 1] + s * t[0] + c * t[1]], -1)
    return ego_to_planning(pos, lidar2ego, z=t[2])


def prediction_to_planning(pred: np.ndarray, lidar2ego) -> np.ndarray:
    """A predicted rear-axle path [T, 2] (ego frame) -> the sensor path in the LiDAR frame [T, 2] (heading from the
    path); NaN stays NaN."""
    pred = np.asarray(pred, dtype=np.float64)
    if not np.isfinite(pred).all():
        return np.full(pred.shape, np.nan)
    return sensor_path(pred, path_heading(pred), lidar2ego)


def ground_truth_to_planning(row: Mapping) -> tuple[np.ndarray, np.ndarray]:
    """The logged future of a shard row as the references' ground truth: (traj [6, 2] LiDAR (forward, left), mask
    [6]); 0 where the mask is 0 (UniAD's ``planning_all`` zeros)."""
    fut = np.asarray(row["future_traj"], np.float64).reshape(FUTURE_STEPS, 2)
    yaw = np.asarray(row["future_yaw"], np.float64).reshape(FUTURE_STEPS)
    mask = np.asarray(row["future_mask"], np.float64).reshape(FUTURE_STEPS)
    gt = sensor_path(fut, yaw, row["lidar2ego"])
    return np.where(mask[:, None] > 0.5, gt, 0.0), mask


def boxes_to_planning(boxes: np.ndarray, lidar2ego) -> np.ndarray:
    """BEV boxes [M, 5] x, y, w, l, yaw (ego frame) -> [M, 5] in the (forward, left) LiDAR frame (ground height)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 5)
    out = b.copy()
    out[:, :2] = ego_to_planning(b[:, :2], lidar2ego, 0.0)
    out[:, 4] = yaw_to_planning(b[:, 4], lidar2ego)
    return out


def vad_agent_occupancy(row: Mapping) -> dict:
    """VAD's occupancy boxes of a shard row (``metric_stp3.get_birds_eye_view_label`` on its test pipeline).

    Agents of the *current* keyframe with ``num_lidar_pts + num_radar_pts > 0`` (``use_valid_flag``), of the ten
    detection classes (``CustomObjectNameFilter``), centre inside ``VAD_RANGE`` (``CustomObjectRangeFilter``), each
    drawn at step k at its annotated position and yaw at t+k where the instance has an annotation (``fut_mask``),
    with its current width and length. Returns {'boxes' [A, 5] (forward, left) LiDAR frame, 'step' [A], 'cls' [A]}.
    """
    tok = row.get("sample_token", "?")
    boxes = np.asarray(row["agent_boxes"], np.float64).reshape(-1, 9)
    n = len(boxes)
    cls = np.asarray(row["agent_class"], np.int64).reshape(-1)
    pts = np.asarray(row["agent_num_pts"], np.int64).reshape(-1)
    fut = np.asarray(row["agent_future"], np.float64).reshape(-1, FUTURE_STEPS, 2)
    fmask = np.asarray(row["agent_future_mask"], np.float64).reshape(-1, FUTURE_STEPS)
    fyaw = np.asarray(row["agent_future_yaw"], np.float64).reshape(-1, FUTURE_STEPS)
    if not (len(cls) == len(pts) == len(fut) == len(fmask) == len(fyaw) == n):
        raise ValueError(f"sample {tok}: agent_boxes has {n} agents but agent_class/agent_num_pts/agent_future/"
                         f"agent_future_mask/agent_future_yaw have {len(cls)}/{len(pts)}/{len(fut)}/{len(fmask)}/"
                         f"{len(fyaw)}")
    l2e = row["lidar2ego"]
    now = ego_to_planning(boxes[:, :2], l2e, 0.0)  # (forward, left): lidar x = -left, y = forward
    keep = (pts > 0) & (cls >= 0) & (cls < len(DETECTION_CLASSES))
    keep &= (np.abs(now[:, 1]) < VAD_RANGE[0]) & (np.abs(now[:, 0]) < VAD_RANGE[1])
    a, k = np.nonzero(keep[:, None] & (fmask > 0.5))
    fb = np.stack([fut[a, k, 0], fut[a, k, 1], boxes[a, 3], boxes[a, 4], fyaw[a, k]], -1).reshape(-1, 5)
    return {"boxes": boxes_to_planning(fb, l2e), "step": k.astype(np.int64), "cls": cls[a]}


def planning_inputs(row: Mapping) -> dict:
    """A shard row's GT and collision inputs in the planning frame: {'gt' [6,2], 'mask' [6], 'future_boxes': a
    ``planning_metrics.future_boxes_from_row`` dict (future annotations + VAD's agents)}."""
    from odvla.platform.eval.planning_metrics import future_boxes_from_row

    gt, mask = ground_truth_to_planning(row)
    fb = future_boxes_from_row({
        "sample_token": row.get("sample_token", "?"),
        "future_boxes": boxes_to_planning(np.asarray(row["future_boxes"], np.float64).reshape(-1, 5),
                                          row["lidar2ego"]),
        "future_box_step": row["future_box_step"], "future_box_class": row["future_box_class"],
        "future_box_visibility": row["future_box_visibility"], "agent_occupancy": vad_agent_occupancy(row)})
    return {"gt": gt, "mask": mask, "future_boxes": fb}


def to_text_frame(traj: np.ndarray) -> np.ndarray:
    """(forward, left) -> the references' / OpenDriveVLA text frame (x right, y forward). [..., 2]."""
    traj = np.asarray(traj, dtype=np.float64)
    return np.stack([-traj[..., 1], traj[..., 0]], -1)
