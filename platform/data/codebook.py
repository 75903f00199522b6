"""The action codebook beside the shards: fitting it from a split, finding it for a job, checking a model's against it.

``<shards>/action_codebook.json`` (``odvla codebook fit``) is fitted on the train split's ego futures and histories
(``odvla.model.action_codebook.fit_codebook``); the round trip on the val split is reported beside it
(``action_codebook.report.json``). Training with ``model.text.traj_encoding: action`` reads it from there unless
``model.text.action_codebook`` names another file; an export carries a copy in its tokenizer folder, and evaluating
an export on shards whose codebook differs is an error naming both files.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from odvla.model.action_codebook import (CODEBOOK_FILE, ActionCodebook, RoundTrip, check_same_codebook,
                                         fit_codebook, load_codebook)
from odvla.platform.data.shards import read_split, write_json_atomic

REPORT_FILE = "action_codebook.report.json"
_COLUMNS = ["future_traj", "future_mask", "past_traj", "past_mask"]


def shards_codebook(shards) -> Path:
    """Where the codebook of ``shards`` lives."""
    return Path(shards) / CODEBOOK_FILE


def ego_trajectories(shards, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A split's ego futures [M, 6, 2], their masks [M, 6], histories [M, 4, 2] and masks [M, 4] (ego frame)."""
    t = read_split(shards, split, columns=_COLUMNS)
    if t.num_rows == 0:
        raise ValueError(f"shards {shards}: split {split!r} has no samples")
    d = t.to_pydict()
    return (np.asarray(d["future_traj"], np.float64).reshape(-1, 6, 2), np.asarray(d["future_mask"], np.float64),
            np.asarray(d["past_traj"], np.float64).reshape(-1, 4, 2), np.asarray(d["past_mask"], np.float64))


def fit_from_shards(shards, size: int = 2048, method: str = "auto", seed: int = 0, out: Optional[str] = None,
                    train_split: str = "train", val_split: str = "val") -> tuple[ActionCodebook, Optional[RoundTrip],
                                                                                  Path]:
    """Fit on ``train_split`` of ``shards``, write it (default beside the shards) and its report; returns the
    codebook, the round trip on ``val_split`` (None when the shards have none) and the file."""
    cb = fit_codebook(*ego_trajectories(shards, train_split), size=size, method=method, seed=seed)
    val = None
    try:
        f, fm, _, _ = ego_trajectories(shards, val_split)
        val = cb.round_trip(f, fm)
    except (FileNotFoundError, ValueError):
        val = None  # a shards folder without a val split: nothing to report
    path = cb.save(Path(out) if out else shards_codebook(shards))
    write_json_atomic({"codebook": str(path), "size": cb.size, "method": cb.method, "seed": seed,
                       "fit": cb.fit, f"{val_split}_round_trip": vars(val) if val else None},
                      path.with_name(REPORT_FILE))
    return cb, val, path


def resolve_action_codebook(model_cfg, shards) -> None:
    """``model.text.action_codebook`` of an 'action' model: None -> the file beside ``shards``; then the file must
    load with ``action_codebook_size`` entries (a CodebookError naming it otherwise). No-op for other encodings."""
    t = model_cfg.text
    if t.traj_encoding != "action":
        return
    if not t.action_codebook:
        if not shards:
            raise ValueError("model.text.traj_encoding 'action' needs model.text.action_codebook or data.shards "
                             "(whose action_codebook.json `odvla codebook fit` writes)")
        t.action_codebook = str(shards_codebook(shards).resolve())
    load_codebook(t.action_codebook, t.action_codebook_size)


def check_model_against_shards(model_cfg, shards) -> None:
    """An 'action' model evaluated on ``shards``: its codebook and the shards' must be the same (error naming both
    files); shards without a codebook are fine (nothing to compare; the model's own is used)."""
    if model_cfg.text.traj_encoding != "action" or not shards:
        return
    data_file = shards_codebook(shards)
    if data_file.exists():
        check_same_codebook(model_cfg.text.action_codebook, data_file)

