"""The planning frame (UniAD / VAD: the LIDAR_TOP sensor's path in the keyframe's LiDAR frame) and VAD's occupancy
rules, on hand-built rows with nuScenes' LIDAR_TOP mounting (0.94 m ahead of the rear axle, yawed -90 degrees)."""
from __future__ import annotations

import numpy as np
import pytest

from odvla.model.constants import DETECTION_CLASSES
from odvla.platform.eval.planning_frame import (ground_truth_to_planning, path_heading, prediction_to_planning,
                                                to_text_frame, vad_agent_occupancy)

CAR = DETECTION_CLASSES.index("car")
L2E = np.array([[0.0, 1.0, 0.0, 0.94], [-1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.84], [0, 0, 0, 1]])


def test_gt_is_the_lidar_sensor_path_in_the_lidar_frame():
    # the ego turns left on a 10 m circle: rear axle at angle a has position (10 sin a, 10 (1 - cos a)), yaw a
    a = np.linspace(0.1, 0.6, 6)
    fut = np.stack([10 * np.sin(a), 10 * (1 - np.cos(a))], -1)
    row = {"future_traj": fut.ravel(), "future_yaw": a, "future_mask": [1, 1, 1, 1, 0, 0], "lidar2ego": L2E.ravel()}
    gt, mask = ground_truth_to_planning(row)
    # sensor = rear axle + 0.94 m along the heading, then minus the sensor's own offset (0.94 m forward)
    want = fut + 0.94 * np.stack([np.cos(a), np.sin(a)], -1) - [0.94, 0.0]
    assert np.allclose(gt[:4], want[:4]) and (gt[4:] == 0).all() and mask.tolist() == [1, 1, 1, 1, 0, 0]
    # text frame of the references: x right, y forward
    assert np.allclose(to_text_frame(gt[:1]), [[-want[0, 1], want[0, 0]]])
    # the prediction's heading comes from its own path: on the logged path it lands within 2 cm of the GT
    full = {**row, "future_mask": np.ones(6)}
    gt_full, _ = ground_truth_to_planning(full)
    pred = prediction_to_planning(fut, L2E)
    assert np.abs(path_heading(fut) - a)[:5].max() < 0.03
    assert np.linalg.norm(pred - gt_full, axis=-1)[:5].max() < 0.02


def test_vad_occupancy_keeps_current_agents_with_points_in_range():
    # agents (ego frame x forward, y left): in range; no points; 20 m to the side (out of VAD's 15 m); a sign (-1)
    boxes = np.array([[10.0, 2.0, 0, 1.9, 4.5, 1.5, 0.3, 0, 0], [10.0, -2.0, 0, 1.9, 4.5, 1.5, 0.0, 0, 0],
                      [10.0, 20.0, 0, 1.9, 4.5, 1.5, 0.0, 0, 0], [5.0, 0.0, 0, 0.5, 0.5, 1.0, 0.0, 0, 0]])
    fut = np.tile(boxes[:, None, :2], (1, 6, 1)) + np.array([1.0, 0.0]) * np.arange(1, 7)[None, :, None]
    fmask = np.ones((4, 6))
    fmask[0, 3:] = 0  # the first agent's track ends after 3 steps
    row = {"sample_token": "tok", "agent_boxes": boxes.ravel(), "agent_class": [CAR, CAR, CAR, -1],
           "agent_num_pts": [5, 0, 5, 5], "agent_future": fut.ravel(), "agent_future_mask": fmask.ravel(),
           "agent_future_yaw": np.full(24, 0.3), "lidar2ego": L2E.ravel()}
    out = vad_agent_occupancy(row)
    assert out["step"].tolist() == [0, 1, 2] and (out["cls"] == CAR).all()
    assert np.allclose(out["boxes"][:, :2], fut[0, :3] - [0.94, 0.0])  # future centres, LiDAR frame
    assert np.allclose(out["boxes"][:, 2:4], [1.9, 4.5]) and np.allclose(out["boxes"][:, 4], 0.3)
    row["agent_num_pts"] = [5, 0]
    with pytest.raises(ValueError, match="tok"):
        vad_agent_occupancy(row)
