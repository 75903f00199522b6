"""Tracking figures of the agent queries over a scene's keyframes: ID switches and agent velocity error.

Per keyframe, the predicted tracks (slots with a track id, ``track_ids >= 0``) are matched one-to-one to the
annotated agents by centre distance (Hungarian, ``scipy.optimize.linear_sum_assignment``), pairs farther than
``max_dist`` metres apart dropped, as in the nuScenes tracking benchmark's centre-distance matching (2 m).
- ID switch (CLEAR MOT): an annotated instance matched in this frame to a track id other than the one it was last
  matched to.
- velocity error: mean |v_pred - v_gt| (m/s, ego frame, vx and vy of the box) over matched pairs.
Without temporal state every keyframe starts from empty tracks and ids restart at 0, so an agent keeps its id only
when it happens to land in the same birth order (the figure a tracker must bring down).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import linear_sum_assignment


@dataclass
class TrackingAccumulator:
    """Feed keyframes of each scene in order (``add``); ``metrics()`` gives the figures."""

    max_dist: float = 2.0
    matches: int = 0
    gt_agents: int = 0
    id_switches: int = 0
    vel_err_sum: float = 0.0
    last_id: dict = field(default_factory=dict)
    """(scene, instance) -> track id it was last matched to."""

    def add(self, scene: str, pred_xy: np.ndarray, pred_vel: np.ndarray, pred_ids: np.ndarray, gt_xy: np.ndarray,
            gt_vel: np.ndarray, gt_inst) -> None:
        """One keyframe. pred_* [P, 2] / [P] (only slots with an id >= 0 are tracks); gt_* [G, 2] and G instance
        tokens (ego frame, metres, m/s)."""
        pred_xy, pred_vel, pred_ids = (np.asarray(a) for a in (pred_xy, pred_vel, pred_ids))
        keep = pred_ids >= 0
        pred_xy, pred_vel, pred_ids = pred_xy[keep], pred_vel[keep], pred_ids[keep]
        gt_xy, gt_vel = np.asarray(gt_xy, float).reshape(-1, 2), np.asarray(gt_vel, float).reshape(-1, 2)
        self.gt_agents += len(gt_xy)
        if len(pred_xy) == 0 or len(gt_xy) == 0:
            return
        d = np.linalg.norm(pred_xy[:, None, :] - gt_xy[None, :, :], axis=-1)
        rows, cols = linear_sum_assignment(d)
        for r, c in zip(rows, cols):
            if d[r, c] > self.max_dist:
                continue
            self.matches += 1
            self.vel_err_sum += float(np.linalg.norm(pred_vel[r] - gt_vel[c]))
            key = (scene, str(gt_inst[c]))
            prev = self.last_id.get(key)
            if prev is not None and prev != int(pred_ids[r]):
                self.id_switches += 1
            self.last_id[key] = int(pred_ids[r])

    def metrics(self, prefix: str = "tracking/") -> dict:
        return {f"{prefix}id_switches": float(self.id_switches), f"{prefix}matched": float(self.matches),
                f"{prefix}recall": self.matches / max(self.gt_agents, 1),
                f"{prefix}velocity_error": (self.vel_err_sum / self.matches) if self.matches else float("nan")}


TRUTH_COLUMNS = ("sample_token", "scene_token", "frame_index", "agent_boxes", "agent_instance")
"""Shard columns the figures read: agent boxes [A, 9] (x, y, z, w, l, h, yaw, vx, vy; ego frame) and their
instance tokens."""


def tracking_figures(truth: list[dict], tracks: dict, max_dist: float = 2.0, prefix: str = "tracking/") -> dict:
    """The figures of one evaluation: ``truth`` the val rows (``TRUTH_COLUMNS``), ``tracks`` per sample token the
    keyframe's tracks ``(ids [Q], xy [Q, 2], vel [Q, 2])``. Keyframes are fed scene by scene in ascending
    ``frame_index``; also counts ``{prefix}gt_agents`` and ``{prefix}tracks`` (live tracks summed over keyframes).
    Raises KeyError naming the sample token of a keyframe without tracks."""
    acc = TrackingAccumulator(max_dist=max_dist)
    live = 0
    for r in sorted(truth, key=lambda r: (str(r["scene_token"]), int(r["frame_index"]))):
        tok = str(r["sample_token"])
        if tok not in tracks:
            raise KeyError(f"tracking figures: sample {tok!r} (scene {r['scene_token']!r}) has no predicted tracks")
        ids, xy, vel = tracks[tok]
        boxes = np.asarray(r["agent_boxes"] if r["agent_boxes"] is not None else [], float).reshape(-1, 9)
        inst = list(r["agent_instance"] or [])
        if len(inst) != len(boxes):
            raise ValueError(f"tracking figures: sample {tok!r} has {len(boxes)} agent boxes but {len(inst)} "
                             "agent_instance tokens")
        ids = np.asarray(ids).reshape(-1)
        live += int((ids >= 0).sum())
        acc.add(str(r["scene_token"]), np.asarray(xy, float).reshape(-1, 2), np.asarray(vel, float).reshape(-1, 2),
                ids, boxes[:, 0:2], boxes[:, 7:9], inst)
    out = acc.metrics(prefix)
    out[f"{prefix}gt_agents"] = float(acc.gt_agents)
    out[f"{prefix}tracks"] = float(live)
    return out
