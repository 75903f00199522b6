"""Small shard folders in the exact shard schema, written by hand for the conversation tests (a few keyframes
with known agents, futures and map elements, so answers can be checked against the numbers)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from odvla.platform.data.shard_schema import SCHEMA

CAR, PED, OTHER = 0, 8, -1


def shard_row(token: str, split: str, agents: list[dict], ego_speed: float = 5.0, command: int = 2,
              map_elements: list[tuple[int, list]] | None = None, scene: str = "scene-a", frame: int = 0) -> dict:
    """agents: dicts with xy, v (vx, vy), cls, inst, and optional fut [6,2] / fut_mask [6]."""
    n = len(agents)
    boxes = np.zeros((n, 9), np.float32)
    fut = np.zeros((n, 6, 2), np.float32)
    fut_mask = np.zeros((n, 6), np.float32)
    for i, a in enumerate(agents):
        boxes[i, :2] = a["xy"]
        boxes[i, 3:6] = (1.9, 4.5, 1.6)
        boxes[i, 7:9] = a.get("v", (0.0, 0.0))
        steps = np.arange(1, 7, dtype=np.float32)[:, None] * 0.5
        fut[i] = a.get("fut", np.asarray(a["xy"], np.float32) + steps * np.asarray(a.get("v", (0, 0)), np.float32))
        fut_mask[i] = a.get("fut_mask", np.ones(6))
    ego_future = np.stack([np.arange(1, 7) * 0.5 * ego_speed, np.zeros(6)], axis=1).astype(np.float32)
    map_elements = map_elements if map_elements is not None else [(0, [[0, 1.8], [30, 1.8]]), (1, [[0, -5], [30, -5]]),
                                                                   (2, [[12, -4], [12, 4]])]
    pts = [p for _, e in map_elements for p in e]
    return {
        "sample_token": token, "scene_token": scene, "scene_name": scene, "log_location": "boston-seaport",
        "timestamp": 1_000_000 * frame, "frame_index": frame, "split": split, "prev_sample_token": "",
        "cam_paths": ["x.jpg"] * 6, "cam_intrinsics": np.eye(3).repeat(6).tolist()[:54],
        "cam_sensor2ego": [0.0] * 96, "cam_ego2global": [0.0] * 96, "image_hw": [900, 1600],
        "ego2global": np.eye(4).reshape(-1).tolist(),
        "ego_state": [ego_speed, 0, 0, 0, 0, ego_speed, 0], "command": command,
        "past_traj": (-np.stack([np.arange(4, 0, -1) * 0.5 * ego_speed, np.zeros(4)], 1)).reshape(-1).tolist(),
        "past_mask": [1.0] * 4, "future_traj": ego_future.reshape(-1).tolist(), "future_yaw": [0.0] * 6,
        "future_mask": [1.0] * 6,
        "agent_boxes": boxes.reshape(-1).tolist(), "agent_class": [a["cls"] for a in agents],
        "agent_category": ["vehicle.car" if a["cls"] == CAR else "human.pedestrian.adult" for a in agents],
        "agent_instance": [a["inst"] for a in agents], "agent_visibility": [4] * n,
        "agent_future": fut.reshape(-1).tolist(), "agent_future_mask": fut_mask.reshape(-1).tolist(),
        "future_boxes": [], "future_box_step": [], "future_box_class": [], "future_box_visibility": [],
        "map_points": np.asarray(pts, np.float32).reshape(-1).tolist(),
        "map_lengths": [len(e) for _, e in map_elements], "map_class": [c for c, _ in map_elements],
    }


def default_rows() -> list[dict]:
    """Train: s1 (2 cars + 1 ped + 1 non-detection object), s2 (empty road, stopped), s3 (car in the path).
    Val: v1 (one pedestrian)."""
    return [
        shard_row("s1", "train", [
            {"xy": (10.0, 3.0), "v": (4.0, 0.0), "cls": CAR, "inst": "i-car1"},
            {"xy": (-20.0, -2.0), "v": (0.0, 0.0), "cls": CAR, "inst": "i-car2"},
            {"xy": (6.0, -6.0), "v": (0.0, 1.2), "cls": PED, "inst": "i-ped1"},
            {"xy": (3.0, 3.0), "cls": OTHER, "inst": "i-animal"},
        ]),
        shard_row("s2", "train", [], ego_speed=0.0, command=1, map_elements=[], frame=1),
        shard_row("s3", "train", [{"xy": (8.0, 0.5), "v": (0.0, 0.0), "cls": CAR, "inst": "i-car3"}], command=0,
                  frame=2),
        shard_row("v1", "val", [{"xy": (4.0, 2.0), "v": (1.0, 0.0), "cls": PED, "inst": "i-ped9",
                                 "fut_mask": [1, 1, 1, 0, 0, 0]}], scene="scene-b"),
    ]


def write_shards(out: Path, rows: list[dict] | None = None) -> Path:
    rows = rows if rows is not None else default_rows()
    for split in sorted({r["split"] for r in rows}):
        table = pa.Table.from_pylist([r for r in rows if r["split"] == split], schema=SCHEMA)
        (out / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(table, out / split / "part-00000.parquet")
    return out
