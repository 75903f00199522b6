"""Perception figures from the perception step alone: the vision encoder over every keyframe of a split, without
the LLM, with or without temporal state, scored by the nuScenes devkit (``nusc_devkit.py``).

The tracks a keyframe leaves come from ``OpenDriveVLA.perceive`` (the same per-frame step ``generate`` runs before
it writes the answer), so these figures equal the ``perception/...`` figures of ``run_eval`` with the same
``eval.temporal``, at the cost of one vision forward per keyframe instead of a generation. ``odvla demo`` uses it to
print the stateless figures beside those of its scene-ordered evaluation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from odvla.platform.config.schema import DataConfig


def perception_tracks(model, rows: list[dict], temporal: bool) -> dict:
    """``rows``: training-ready rows of one scene (``collate.rows_from_table``), any order; keyframes run in
    ascending ``frame_index``, carrying ``SceneState`` when ``temporal``. Returns {sample token: (ids [Q] int64,
    boxes [Q, 9] (x, y, z, w, l, h, yaw, vx, vy; ego frame, metres, rad, m/s), scores [Q], labels [Q] int64)}, the
    agent queries after each keyframe (``nusc_devkit.tracks_from_columns``' layout)."""
    import torch

    from odvla.platform.data.collate import collate
    from odvla.platform.eval.predict import state_tracks

    out, states = {}, None
    model.eval()
    for r in sorted(rows, key=lambda r: int(r["frame_index"])):
        with torch.no_grad():
            vis = model.perceive(collate([r]), states if temporal else None, compute_losses=False)
        states = vis.states
        t = state_tracks(states[0])
        out[str(r["sample_token"])] = (t["track_ids"], t["track_boxes"].reshape(-1, 9), t["track_scores"],
                                       t["track_labels"])
    return out


def perception_tracking_figures(export_ref: str, data: DataConfig, split: str, temporal: bool,
                                tracking_uri: Optional[str] = None, prefix: str = "perception/",
                                out_dir: Optional[str | Path] = None) -> dict:
    """The devkit's perception figures (``nusc_devkit.devkit_figures``: mAP, NDS, AMOTA, AMOTP, IDS, ...) of the
    export ``export_ref`` on ``split`` of ``data.shards``, in this process, scene by scene; the submissions and the
    devkit's summaries go to ``out_dir`` (a temporary folder when None). Images are read as the pipeline reads them,
    at the export's image size."""
    from odvla.platform.data.clips import scene_tables
    from odvla.platform.data.collate import rows_from_table
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.rows import SHARD_COLUMNS, RowSpec
    from odvla.platform.data.shards import read_split
    from odvla.platform.eval.nusc_devkit import devkit_figures
    from odvla.platform.export import load_export

    model, _ = load_export(export_ref, tracking_uri=tracking_uri)  # model.config: the export's ModelConfig
    spec, root = RowSpec.from_config(data, model.config.vision), resolve_dataroot(data)
    table = read_split(data.shards, split, columns=SHARD_COLUMNS)
    if table.num_rows == 0:
        raise ValueError(f"tracking figures: split {split!r} of {data.shards} has no keyframes")
    tracks: dict = {}
    for scene in scene_tables(table):
        tracks.update(perception_tracks(model, rows_from_table(scene, root, spec), temporal))
    if out_dir is not None:
        return devkit_figures(data, split, tracks, out_dir, prefix=prefix)
    with tempfile.TemporaryDirectory(prefix="odvla-perception-") as tmp:
        return devkit_figures(data, split, tracks, tmp, prefix=prefix)
