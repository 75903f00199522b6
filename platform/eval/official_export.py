"""``odvla eval --official-out DIR``: the files the released OpenDriveVLA evaluation reads, so the platform's
predictions can be scored with the official script unchanged (DriveVLA/OpenDriveVLA ``drivevla/eval_drivevla.py``
and ``drivevla/eval_share/evaluation.py``).

Written under DIR (each file atomically: a temporary file in the same folder, then ``os.replace``):

* ``outputs.jsonl`` — the input of ``eval_drivevla.py --output``: one line per val sample,
  ``{"id": "<sample_token>_trajectory", "question": ..., "answer": ["[(x1,y1),...,(x6,y6)]"]}``.
* ``pred_trajs_dict.json`` — what ``eval_drivevla.py`` derives from it: ``{id: [[[x, y] x 6]]}``.
* ``gt/gt_traj.pkl`` — ``{sample_token: float64 [1, 6, 2]}``, ``gt/gt_traj_mask.pkl`` — ``{token: float64 [1, 6, 2]}``
  (UniAD's ``sdc_planning`` / ``sdc_planning_mask``: 0 after the scene's last keyframe).
* ``gt/planing_gt_segmentation_val`` (the released name, typo included) — ``{token: uint8 [1, 7, 200, 200]}``: UniAD's
  vehicle-only occupancy (all visibilities, ``cv2.fillPoly``, ``uniad`` raster) for the current keyframe and the 6
  future ones; a future keyframe past the scene's end is 255 everywhere (UniAD's ``ignore_index``, which makes the
  script skip that step). ``evaluation.py`` drops the current frame (odd length) and flips the last axis itself.
* ``gt/vad_gt_seg.pkl`` — ``{token: uint8 [1, 6, 200, 200]}``: VAD's occupancy (current agents at their future
  poses, vehicles + pedestrians, ``vad`` raster), read by the script with ``only_vehicle=False``.
* ``summary.json`` — counts: samples, predictions that did not parse and got the fallback, the frame.

Frame and values: every trajectory is the LiDAR sensor's path in the keyframe's LiDAR frame (``planning_frame.py``)
in the text frame X right, Y forward, metres; answers carry 2 decimals. Predictions come from the decoded absolute
trajectory (``pred_traj``), never from the answer text (delta and residual encodings are not absolute).
Every val token is written. A prediction that did not parse gets the **constant-velocity** trajectory of its ego
state (``baselines.constant_velocity``) and is counted in ``summary.json`` (``fallback_constant_velocity``) with its
token listed (``fallback_tokens``). Pickles hold plain numpy arrays and builtins only (no torch objects).
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from odvla.model.constants import COMMANDS, FUTURE_STEPS
from odvla.platform.eval import occupancy as occ
from odvla.platform.eval.baselines import constant_velocity
from odvla.platform.eval.planning_frame import boxes_to_planning, to_text_frame
from odvla.platform.eval.planning_metrics import PROTOCOLS, protocol_occupancy

SEGMENTATION_NAME = "planing_gt_segmentation_val"  # the released file name, as evaluation.py opens it
IGNORE_INDEX = 255  # UniAD's GenerateOccFlowLabels ignore_index for a missing future keyframe


class OfficialOutError(ValueError):
    """The --official-out folder cannot be written (names the folder)."""


def check_out_dir(out: str | Path, force: bool) -> Path:
    """A non-empty folder is an error unless ``force``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OfficialOutError(f"--official-out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise OfficialOutError(f"--official-out {out} is not empty; pass --force to overwrite its files")
    return out


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _pickle(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


def answer_text(traj_xy: np.ndarray) -> str:
    """[6, 2] (x right, y forward) -> ``[(x1,y1),...,(x6,y6)]`` with 2 decimals, no spaces."""
    return "[" + ",".join(f"({x:.2f},{y:.2f})" for x, y in np.asarray(traj_xy, np.float64)) + "]"


def current_boxes(row) -> dict:
    """The keyframe's own annotations (frame 0 of UniAD's segmentation) as a future_boxes-style dict, step 0."""
    b = np.asarray(row["agent_boxes"], np.float64).reshape(-1, 9)
    return {"boxes": boxes_to_planning(b[:, [0, 1, 3, 4, 6]], row["lidar2ego"]),
            "step": np.zeros(len(b), np.int64), "cls": np.asarray(row["agent_class"], np.int64).reshape(-1),
            "vis": np.asarray(row["agent_visibility"], np.int64).reshape(-1),
            "agents": {"boxes": np.zeros((0, 5)), "step": np.zeros(0, np.int64), "cls": np.zeros(0, np.int64),
                       "vis": np.zeros(0, np.int64)}}


def write_official(out: str | Path, rows: Sequence[dict], truth, pred_ego: np.ndarray, parsed: np.ndarray,
                   force: bool = False, chunk: int = 256) -> dict:
    """Write the official evaluation's files for every val row (see the module docstring). Returns the summary.

    rows: the val shard rows (``sample_token``, ``command``, ``ego_state``, ``agent_boxes``, ``agent_class``,
    ``agent_visibility``, ``lidar2ego``), in the order of ``truth`` (``evaluate.PlanningTruth``) and of pred_ego
    [N, 6, 2] (decoded absolute rear-axle waypoints, ego frame) and parsed [N] bool.
    """
    out = check_out_dir(out, force)
    n = len(rows)
    pred_ego = np.asarray(pred_ego, np.float64).reshape(n, FUTURE_STEPS, 2)
    parsed = np.asarray(parsed, bool).reshape(n) & np.isfinite(pred_ego).all(axis=(1, 2))
    tokens = [r["sample_token"] for r in rows]
    if list(truth.tokens) != tokens:
        raise ValueError("write_official: rows and ground truth are not in the same order")
    ego_state = np.asarray([r["ego_state"] for r in rows], np.float64).reshape(n, -1)
    filled = np.where(parsed[:, None, None], pred_ego, constant_velocity(ego_state))
    pred_xy = to_text_frame(truth.to_planning(filled))
    gt_xy = to_text_frame(truth.gt) * (truth.mask[..., None] > 0.5)

    lines, pred_dict = [], {}
    for i, tok in enumerate(tokens):
        ans = answer_text(pred_xy[i])
        question = f"Mission goal: {COMMANDS[int(rows[i]['command'])]}\nPlanning trajectory:"
        lines.append(json.dumps({"id": f"{tok}_trajectory", "question": question, "answer": [ans]}))
        pred_dict[f"{tok}_trajectory"] = [[[round(float(x), 2), round(float(y), 2)] for x, y in pred_xy[i]]]
    _atomic_write(out / "outputs.jsonl", ("\n".join(lines) + "\n").encode())
    _atomic_write(out / "pred_trajs_dict.json", json.dumps(pred_dict, indent=1).encode())

    gt_traj = {t: np.ascontiguousarray(gt_xy[i][None], np.float64) for i, t in enumerate(tokens)}
    gt_mask = {t: np.repeat(truth.mask[i][None, :, None], 2, -1).astype(np.float64) for i, t in enumerate(tokens)}
    _atomic_write(out / "gt" / "gt_traj.pkl", _pickle(gt_traj))
    _atomic_write(out / "gt" / "gt_traj_mask.pkl", _pickle(gt_mask))

    seg, vad = {}, {}
    for s in range(0, n, chunk):  # rasters chunk by chunk: the whole val set's transient grids never coexist
        fb = truth.future_boxes[s:s + chunk]
        uniad = protocol_occupancy(fb, PROTOCOLS["uniad"])  # [C,6,200,200] future keyframes
        now = protocol_occupancy([current_boxes(r) for r in rows[s:s + chunk]], PROTOCOLS["uniad"], steps=1)
        stp3 = protocol_occupancy(fb, PROTOCOLS["stp3"])
        for j, t in enumerate(tokens[s:s + chunk]):
            fut = uniad[j]
            fut[truth.mask[s + j] < 0.5] = IGNORE_INDEX
            seg[t] = np.concatenate([now[j], fut])[None]
            vad[t] = stp3[j][None].copy()
    _atomic_write(out / "gt" / SEGMENTATION_NAME, _pickle(seg))
    del seg
    _atomic_write(out / "gt" / "vad_gt_seg.pkl", _pickle(vad))
    del vad

    fallback = [t for t, ok in zip(tokens, parsed) if not ok]
    summary = {"samples": n, "fallback_constant_velocity": len(fallback), "fallback_tokens": fallback,
               "frame": "keyframe LiDAR frame, LIDAR_TOP sensor path, X right, Y forward, metres",
               "occupancy": {SEGMENTATION_NAME: "UniAD vehicle occupancy, current + 6 future keyframes, uint8 "
                                                "[1,7,200,200], 255 past the scene end",
                             "vad_gt_seg.pkl": "VAD current-agent occupancy, vehicles + pedestrians, uint8 "
                                               "[1,6,200,200]"},
               "grid": {"cells": occ.GRID_SIZE, "cell_m": occ.CELL}}
    _atomic_write(out / "summary.json", json.dumps(summary, indent=1).encode())
    return summary
