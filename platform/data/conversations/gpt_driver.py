"""GPT-Driver cache reader: ``cached_nuscenes_info.pkl`` = {sample_token: {gt_boxes, gt_names, gt_agent_fut_trajs,
gt_agent_fut_masks, gt_ego_lcf_feat, gt_ego_his_trajs, gt_ego_his_diff, gt_ego_fut_trajs [7,2],
gt_ego_fut_cmd one-hot [right, left, forward], ...}} and optionally its ``split.json`` ({"train": [...],
"val": [...]}). Loaded with the restricted unpickler (numpy arrays and builtins only).

Each sample gives a stage-3 planning record (task 'planning', empty turns as for every planning record), its
target the reference's ego future: ``gt_ego_fut_trajs[1:7]`` are positions in GPT-Driver's text frame (X right,
Y forward, row 0 the origin), turned into the nuScenes ego frame (x forward, y left) as x = Y, y = -X. ``meta``
keeps the reference inputs (command index in COMMANDS order, ego feature vector, history in the reference frame)
and the reference's answer text, so a user can train on or compare with exactly the reference targets.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from odvla.model.constants import COMMANDS, FUTURE_STEPS
from odvla.model.traj_codec import text_to_ego

from .schema import ConversationFormatError, make_record
from .safe_pickle import safe_load

SOURCE = "gpt_driver"


def _array(info: dict, key: str, shape: tuple, path, where) -> np.ndarray:
    if key not in info:
        raise ConversationFormatError(path, where, f"missing field {key!r}")
    try:
        arr = np.asarray(info[key], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ConversationFormatError(path, where, f"field {key!r} is not numeric: {e}") from e
    if arr.shape != shape:
        raise ConversationFormatError(path, where, f"field {key!r} has shape {arr.shape}, expected {shape}")
    if not np.all(np.isfinite(arr)):
        raise ConversationFormatError(path, where, f"field {key!r} holds non-finite values")
    return arr


def read_split_file(path: Path) -> dict[str, str]:
    """split.json -> {sample_token: split}."""
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConversationFormatError(path, f"at line {e.lineno}", f"invalid JSON: {e.msg}") from e
    if not isinstance(data, dict) or not all(isinstance(v, list) for v in data.values()):
        raise ConversationFormatError(path, "(top level)", "expected {split: [sample tokens]}")
    return {t: s for s, toks in data.items() for t in toks}


def read_gpt_driver(path: Path, split_file: Path | None = None) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GPT-Driver cache not found: {path}")
    data = safe_load(path)
    if not isinstance(data, dict):
        raise ConversationFormatError(path, "(top level)", f"expected a dict keyed by sample token, got "
                                                           f"{type(data).__name__}")
    splits = read_split_file(split_file) if split_file else {}
    out = []
    for i, (token, info) in enumerate(data.items()):
        where = f"{i} ({token})"
        if not isinstance(info, dict):
            raise ConversationFormatError(path, where, f"expected a dict, got {type(info).__name__}")
        fut = _array(info, "gt_ego_fut_trajs", (FUTURE_STEPS + 1, 2), path, where)
        cmd = _array(info, "gt_ego_fut_cmd", (3,), path, where)
        if np.count_nonzero(cmd) != 1:
            raise ConversationFormatError(path, where, f"gt_ego_fut_cmd {cmd.tolist()} is not one-hot")
        mask = (_array(info, "gt_ego_fut_masks", (FUTURE_STEPS,), path, where) if "gt_ego_fut_masks" in info
                else np.ones(FUTURE_STEPS))
        target = text_to_ego(fut[1:])
        answer = "[" + ",".join(f"({x:.2f},{y:.2f})" for x, y in fut[1:]) + "]"
        meta = {"command": COMMANDS[int(np.argmax(cmd))], "reference_answer": answer, "split": splits.get(token)}
        for key in ("gt_ego_lcf_feat", "gt_ego_his_trajs", "gt_ego_his_diff"):
            if key in info:
                meta[key] = np.asarray(info[key], np.float64).round(4).tolist()
        out.append(make_record(token, "planning", SOURCE, token, [("human", ""), ("gpt", "")],
                               target_traj=target, target_mask=mask, meta=meta))
    return out
