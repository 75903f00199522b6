"""Tracking figures from the perception step alone: the vision encoder over every keyframe of a split, without the
LLM, with or without temporal state.

The tracks a keyframe leaves come from ``OpenDriveVLA.perceive`` (the same per-frame step ``generate`` runs before
it writes the answer), so these figures equal the ``tracking/...`` figures of ``run_eval`` with the same
``eval.temporal``, at the cost of one vision forward per keyframe instead of a generation. ``odvla demo`` uses it to
print the stateless tracking figures beside those of its scene-ordered evaluation.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

if TYPE_CHECKING:
    from odvla.platform.config.schema import DataConfig


def perception_tracks(model, rows: list[dict], temporal: bool) -> dict:
    """``rows``: training-ready rows of one scene (``collate.rows_from_table``), any order; keyframes run in
    ascending ``frame_index``, carrying ``SceneState`` when ``temporal``. Returns {sample token: (ids [Q] int64,
    xy [Q, 2] metres, vel [Q, 2] m/s)}, ego frame, the tracks after each keyframe."""
    import torch

    from odvla.platform.data.collate import collate

    out, states = {}, None
    model.eval()
    for r in sorted(rows, key=lambda r: int(r["frame_index"])):
        with torch.no_grad():
            vis = model.perceive(collate([r]), states if temporal else None, compute_losses=False)
        states = vis.states
        s = states[0]
        out[str(r["sample_token"])] = (s.track_ids.cpu().numpy().astype(np.int64),
                                       s.track_boxes[:, 0:2].float().cpu().numpy(),
                                       s.track_boxes[:, 7:9].float().cpu().numpy())
    return out


def perception_tracking_figures(export_ref: str, data: DataConfig, split: str, temporal: bool,
                                tracking_uri: Optional[str] = None, prefix: str = "tracking/") -> dict:
    """The tracking figures (``tracking_metrics.tracking_figures``) of the export ``export_ref`` on ``split`` of
    ``data.shards``, in this process, scene by scene. Images are read as the pipeline reads them, at the export's
    image size."""
    from odvla.platform.data.clips import scene_tables
    from odvla.platform.data.collate import rows_from_table
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.rows import SHARD_COLUMNS, RowSpec
    from odvla.platform.data.shards import read_split
    from odvla.platform.eval.tracking_metrics import TRUTH_COLUMNS, tracking_figures
    from odvla.platform.export import load_export

    model, _ = load_export(export_ref, tracking_uri=tracking_uri)  # model.config: the export's ModelConfig
    spec, root = RowSpec.from_config(data, model.config.vision), resolve_dataroot(data)
    table = read_split(data.shards, split, columns=SHARD_COLUMNS)
    if table.num_rows == 0:
        raise ValueError(f"tracking figures: split {split!r} of {data.shards} has no keyframes")
    tracks: dict = {}
    for scene in scene_tables(table):
        tracks.update(perception_tracks(model, rows_from_table(scene, root, spec), temporal))
    truth = read_split(data.shards, split, columns=list(TRUTH_COLUMNS)).to_pylist()
    return tracking_figures(truth, tracks, prefix=prefix)
