"""A keyframe's annotations as numpy arrays, decoded from one shard row, plus the geometry words the generators
share (where an agent is, how it moves).

Frame: nuScenes ego frame of the keyframe (x forward, y left, metres); speeds in m/s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from odvla.model.constants import COMMANDS, DETECTION_CLASSES, FUTURE_STEPS, MAP_CLASSES

SHARD_COLUMNS = (
    "sample_token", "scene_token", "split", "ego_state", "command", "future_traj", "future_mask",
    "agent_boxes", "agent_class", "agent_category", "agent_instance", "agent_future", "agent_future_mask",
    "map_points", "map_lengths", "map_class",
)
"""Shard columns the generators read (odvla.platform.data.shard_schema)."""

STATIONARY_MPS = 0.5
"""Below this speed an agent is described as stationary."""

CLASS_WORDS = {
    "car": ("car", "cars"), "truck": ("truck", "trucks"),
    "construction_vehicle": ("construction vehicle", "construction vehicles"), "bus": ("bus", "buses"),
    "trailer": ("trailer", "trailers"), "barrier": ("barrier", "barriers"),
    "motorcycle": ("motorcycle", "motorcycles"), "bicycle": ("bicycle", "bicycles"),
    "pedestrian": ("pedestrian", "pedestrians"), "traffic_cone": ("traffic cone", "traffic cones"),
}
MAP_WORDS = {"divider": ("lane divider", "lane dividers"), "boundary": ("road boundary", "road boundaries"),
             "crossing": ("pedestrian crossing", "pedestrian crossings")}
MOVERS = ("car", "truck", "construction_vehicle", "bus", "trailer", "motorcycle", "bicycle", "pedestrian")


@dataclass
class SceneView:
    """Arrays of one keyframe. ``N`` agents (detection classes only), ``E`` map elements."""

    sample_token: str
    split: str
    ego_state: np.ndarray  # [7] EGO_STATE_FIELDS
    command: int  # index into COMMANDS
    future_traj: np.ndarray  # [6,2] ego waypoints
    future_mask: np.ndarray  # [6]
    boxes: np.ndarray  # [N,9] x, y, z, w, l, h, yaw, vx, vy
    classes: list  # [N] DETECTION_CLASSES names
    instances: list  # [N] instance tokens
    agent_future: np.ndarray  # [N,6,2]
    agent_future_mask: np.ndarray  # [N,6]
    map_elements: list  # [E] (MAP_CLASSES name, pts [k,2])

    @property
    def command_text(self) -> str:
        return COMMANDS[self.command]

    @property
    def ego_speed(self) -> float:
        return float(self.ego_state[5])

    def distances(self) -> np.ndarray:
        """[N] metres from the ego origin to each agent centre."""
        return np.hypot(self.boxes[:, 0], self.boxes[:, 1]) if len(self.boxes) else np.zeros(0)

    def speeds(self) -> np.ndarray:
        return np.hypot(self.boxes[:, 7], self.boxes[:, 8]) if len(self.boxes) else np.zeros(0)


def _arr(values, shape) -> np.ndarray:
    return np.asarray(values if values is not None else [], dtype=np.float32).reshape(shape)


def views_from_table(table: pa.Table) -> list[SceneView]:
    """Decode shard rows (``odvla.platform.data.shard_schema.SCHEMA``) into ``SceneView``s.

    Agents outside the detection classes (``agent_class == -1``) are left out: the generators talk about
    the classes the model detects. Raises naming the sample token when a row's arrays disagree in length.
    """
    missing = [c for c in SHARD_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"shard table lacks columns {missing} (expected odvla shard schema)")
    views = []
    for row in table.select(list(SHARD_COLUMNS)).to_pylist():
        token = row["sample_token"]
        try:
            cls_idx = np.asarray(row["agent_class"] or [], dtype=np.int64)
            n = len(cls_idx)
            boxes = _arr(row["agent_boxes"], (n, 9))
            fut = _arr(row["agent_future"], (n, FUTURE_STEPS, 2))
            fut_mask = _arr(row["agent_future_mask"], (n, FUTURE_STEPS))
            instances = list(row["agent_instance"] or [])
            if len(instances) != n:
                raise ValueError(f"{len(instances)} agent instances for {n} agents")
            lengths = list(row["map_lengths"] or [])
            pts = _arr(row["map_points"], (sum(lengths), 2))
            map_cls = list(row["map_class"] or [])
            if len(map_cls) != len(lengths):
                raise ValueError(f"{len(map_cls)} map classes for {len(lengths)} map elements")
            future_traj = _arr(row["future_traj"], (FUTURE_STEPS, 2))
            future_mask = _arr(row["future_mask"], (FUTURE_STEPS,))
            ego_state = _arr(row["ego_state"], (7,))
            for name, values in (("agent_boxes", boxes), ("ego_state", ego_state), ("map_points", pts),
                                 ("future_traj", future_traj[future_mask > 0]), ("agent_future", fut[fut_mask > 0])):
                if not np.all(np.isfinite(values)):
                    raise ValueError(f"non-finite values in {name} (valid entries)")
        except ValueError as e:
            raise ValueError(f"shard row of sample {token}: {e}") from e
        keep = cls_idx >= 0
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(int)
        views.append(SceneView(
            sample_token=token, split=row["split"], ego_state=ego_state, command=int(row["command"]),
            future_traj=future_traj, future_mask=future_mask, boxes=boxes[keep],
            classes=[DETECTION_CLASSES[i] for i in cls_idx[keep]],
            instances=[t for t, k in zip(instances, keep) if k], agent_future=fut[keep],
            agent_future_mask=fut_mask[keep],
            map_elements=[(MAP_CLASSES[c], pts[offsets[i]:offsets[i + 1]]) for i, c in enumerate(map_cls)],
        ))
    return views


def plural(n: int, words: tuple[str, str]) -> str:
    return f"{n} {words[0] if n == 1 else words[1]}"


def there_are(n: int, words: tuple[str, str], tail: str = "") -> str:
    """'There is 1 car within ...' / 'There are 3 cars within ...'."""
    return f"There {'is' if n == 1 else 'are'} {plural(n, words)}{tail}"


def join_words(parts: list[str]) -> str:
    if not parts:
        return ""
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def direction_words(x: float, y: float) -> str:
    """Where an ego-frame point lies: 'ahead', 'ahead on the left', 'behind on the right', 'to the left' ..."""
    ang = np.degrees(np.arctan2(y, x))  # 0 ahead, +90 left
    if abs(ang) <= 15:
        return "ahead"
    if abs(ang) >= 165:
        return "behind"
    side = "left" if ang > 0 else "right"
    if abs(ang) <= 70:
        return f"ahead on the {side}"
    if abs(ang) < 110:
        return f"to the {side}"
    return f"behind on the {side}"


def motion_words(vx: float, vy: float) -> str:
    """How an agent moves relative to the ego heading (velocity in the ego frame, m/s)."""
    speed = float(np.hypot(vx, vy))
    if speed < STATIONARY_MPS:
        return "stationary"
    ang = np.degrees(np.arctan2(vy, vx))
    if abs(ang) <= 30:
        return "moving in the same direction as the ego vehicle"
    if abs(ang) >= 150:
        return "moving against the ego vehicle's direction"
    return "crossing to the left" if ang > 0 else "crossing to the right"


def in_ego_path(view: SceneView, half_width: float = 2.0, max_ahead: float = 30.0) -> np.ndarray:
    """[N] bool: agent centre within ``half_width`` m of the ego's planned path and up to ``max_ahead`` m ahead."""
    if not len(view.boxes):
        return np.zeros(0, bool)
    path = np.concatenate([np.zeros((1, 2), np.float32), view.future_traj[view.future_mask > 0]])
    if len(path) < 2:  # no plan: straight ahead
        path = np.array([[0.0, 0.0], [max_ahead, 0.0]], np.float32)
    xy = view.boxes[:, :2]
    dists = np.min(np.stack([_dist_to_segment(xy, a, b) for a, b in zip(path[:-1], path[1:])]), axis=0)
    return (dists < half_width) & (xy[:, 0] > 0) & (xy[:, 0] < max_ahead)


def _dist_to_segment(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ab = b - a
    t = np.clip(((p - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
    return np.linalg.norm(p - (a + t[:, None] * ab), axis=1)
