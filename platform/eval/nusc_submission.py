"""The agent queries' boxes as nuScenes submissions: the detection and tracking result files the devkit reads.

Format (nuScenes devkit ``nuscenes/eval/detection/README.md`` and ``eval/tracking/README.md``; the same dicts as
UniAD's ``NuScenes3DDetTrackDataset._format_bbox`` in
``projects/mmdet3d_plugin/datasets/nuscenes_e2e_dataset.py``)::

    {"meta": {"use_camera": true, "use_lidar": false, ...},
     "results": {sample_token: [box, ...]}}               # every sample of the split, [] where no box

    detection box: sample_token, translation [3] (global, m, box centre), size [3] (w, l, h, m), rotation [4]
                   (w, x, y, z, global), velocity [2] (vx, vy, global, m/s), detection_name, detection_score,
                   attribute_name
    tracking box:  the same geometry, tracking_id (str, unique within a scene), tracking_name, tracking_score

The model's boxes are in the keyframe's ego frame (``SceneState.track_boxes``: x, y, z, w, l, h, yaw, vx, vy); they
move to the global frame with the keyframe's ego pose (the shard column ``ego2global``, the LIDAR_TOP sample_data's
ego pose, the pose the devkit's ``add_center_dist`` measures ranges from). Detections are every agent query with a
detection class (``DETECTION_CLASSES``); tracks are the slots carrying a track id (``track_ids >= 0``) of the seven
tracking classes. Attributes follow UniAD's rule: speed above 0.2 m/s gives ``vehicle.moving`` /
``cycle.with_rider``, else ``pedestrian.standing`` / ``vehicle.stopped`` (bus), else the class default.
"""
from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion

from odvla.model.constants import DETECTION_CLASSES

META = {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}
"""The submission's ``meta``: camera only (the model reads the six cameras and no LiDAR)."""

DEFAULT_ATTRIBUTE = {"car": "vehicle.parked", "pedestrian": "pedestrian.moving", "trailer": "vehicle.parked",
                     "truck": "vehicle.parked", "bus": "vehicle.moving", "motorcycle": "cycle.without_rider",
                     "construction_vehicle": "vehicle.parked", "bicycle": "cycle.without_rider", "barrier": "",
                     "traffic_cone": ""}
"""Attribute of a class when speed says nothing (UniAD / mmdet3d ``DefaultAttribute``)."""

TRACKING_CLASSES = ("bicycle", "bus", "car", "motorcycle", "pedestrian", "trailer", "truck")
"""The devkit's ``TRACKING_NAMES`` (``nuscenes/eval/tracking/constants.py``)."""


def attribute(name: str, speed: float) -> str:
    """The attribute written for a box of class ``name`` moving at ``speed`` m/s (UniAD's rule)."""
    if speed > 0.2:
        if name in ("car", "construction_vehicle", "bus", "truck", "trailer"):
            return "vehicle.moving"
        if name in ("bicycle", "motorcycle"):
            return "cycle.with_rider"
        return DEFAULT_ATTRIBUTE[name]
    if name == "pedestrian":
        return "pedestrian.standing"
    if name == "bus":
        return "vehicle.stopped"
    return DEFAULT_ATTRIBUTE[name]


def boxes_to_global(boxes: np.ndarray, ego2global: np.ndarray) -> list[dict]:
    """Ego-frame boxes [N, 9] (x, y, z, w, l, h, yaw, vx, vy; metres, rad, m/s) and the ego pose [4, 4] -> per box
    ``translation`` [3], ``size`` [3], ``rotation`` [4] (w, x, y, z) and ``velocity`` [2], global frame."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    e = np.asarray(ego2global, np.float64).reshape(4, 4)
    rot, q_ego = e[:3, :3], Quaternion(matrix=e[:3, :3], atol=1e-5, rtol=1e-5)
    out = []
    for b in boxes:
        centre = rot @ b[0:3] + e[:3, 3]
        vel = rot @ np.array([b[7], b[8], 0.0])
        q = q_ego * Quaternion(axis=[0.0, 0.0, 1.0], radians=float(b[6]))
        out.append({"translation": centre.tolist(), "size": [float(v) for v in b[3:6]],
                    "rotation": [float(v) for v in q.elements], "velocity": vel[:2].tolist()})
    return out


def keyframe_boxes(sample_token: str, ego2global, ids, boxes, scores, labels) -> tuple[list[dict], list[dict]]:
    """One keyframe's detection and tracking boxes. ``ids`` [Q] (-1: no track), ``boxes`` [Q, 9] (or flat [9Q]),
    ``scores`` [Q], ``labels`` [Q] (index into ``DETECTION_CLASSES``, -1: none)."""
    ids, scores = np.asarray(ids).reshape(-1), np.asarray(scores, np.float64).reshape(-1)
    labels = np.asarray(labels).reshape(-1)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 9)
    if not (len(ids) == len(scores) == len(labels) == len(boxes)):
        raise ValueError(f"nuScenes submission: sample {sample_token!r} has {len(boxes)} boxes, {len(ids)} ids, "
                         f"{len(scores)} scores and {len(labels)} labels")
    det, trk = [], []
    for i, geo in enumerate(boxes_to_global(boxes, ego2global)):
        lab = int(labels[i])
        if not 0 <= lab < len(DETECTION_CLASSES) or not np.isfinite(scores[i]):
            continue
        name, score = DETECTION_CLASSES[lab], float(scores[i])
        speed = float(np.hypot(boxes[i, 7], boxes[i, 8]))
        det.append({"sample_token": sample_token, **geo, "detection_name": name, "detection_score": score,
                    "attribute_name": attribute(name, speed)})
        if int(ids[i]) >= 0 and name in TRACKING_CLASSES:
            trk.append({"sample_token": sample_token, **geo, "tracking_id": str(int(ids[i])),
                        "tracking_name": name, "tracking_score": score})
    return det, trk


def submissions(truth: list[dict], tracks: dict) -> tuple[dict, dict]:
    """The detection and tracking submissions of one evaluation. ``truth``: the split's rows (``sample_token``,
    ``ego2global`` [16]); ``tracks``: per sample token ``(ids [Q], boxes [Q*9], scores [Q], labels [Q])``. Every
    sample of ``truth`` is present in both; a sample without tracks is a KeyError naming it."""
    det, trk = {}, {}
    for r in truth:
        tok = str(r["sample_token"])
        if tok not in tracks:
            raise KeyError(f"nuScenes submission: sample {tok!r} has no predicted boxes")
        det[tok], trk[tok] = keyframe_boxes(tok, r["ego2global"], *tracks[tok])
    return {"meta": dict(META), "results": det}, {"meta": dict(META), "results": trk}
