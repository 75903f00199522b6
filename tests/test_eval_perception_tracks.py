"""Perception figures from the perception step alone (``platform/eval/perception_tracks.py``): the tracks equal those
the scene-ordered evaluation leaves (which runs the LLM too), with and without temporal state, and the figures of a
whole split come out of an export."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from odvla.platform.eval.nusc_submission import TRACKING_CLASSES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _model(cfg):
    from odvla.model.track_policy import TrackPolicy
    from odvla.model.vla import OpenDriveVLA

    torch.manual_seed(0)
    model = OpenDriveVLA(cfg.model).eval()
    model.vision.track_policy = TrackPolicy(birth=0.0, keep=0.0)  # untrained scores: every slot is a track
    return model


def test_perception_tracks_equal_the_scene_evaluations_with_and_without_state(shards_dir):
    from odvla.platform.config import load_config
    from odvla.platform.data.collate import rows_from_table
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.rows import RowSpec
    from odvla.platform.data.shards import read_split
    from odvla.platform.eval.perception_tracks import perception_tracks
    from odvla.platform.eval.scene_eval import plan_scene

    cfg = load_config(model="tiny", overrides=[f"data.shards={shards_dir}"])
    t = read_split(shards_dir, "val")
    first = t["scene_token"][0].as_py()
    keep = [i for i, (s, f) in enumerate(zip(t["scene_token"].to_pylist(), t["frame_index"].to_pylist()))
            if s == first and f < 3]
    rows = rows_from_table(t.take(keep), resolve_dataroot(cfg.data), RowSpec.from_config(cfg.data, cfg.model.vision))
    model = _model(cfg)
    for temporal in (False, True):
        ref = plan_scene(model, rows, temporal=temporal, max_new_tokens=40)
        got = perception_tracks(model, list(reversed(rows)), temporal=temporal)
        assert list(got) == ref["sample_token"].tolist()  # keyframe order whatever the input order
        for i, tok in enumerate(ref["sample_token"]):
            ids, boxes, scores, labels = got[tok]
            np.testing.assert_array_equal(ids, ref["track_ids"][i])
            np.testing.assert_allclose(boxes.reshape(-1), ref["track_boxes"][i], atol=1e-5)
            np.testing.assert_allclose(boxes[:, 0:2].reshape(-1), ref["track_xy"][i], atol=1e-5)
            np.testing.assert_allclose(scores, ref["track_scores"][i], atol=1e-6)
            np.testing.assert_array_equal(labels, ref["track_labels"][i])
    on, off = perception_tracks(model, rows, True), perception_tracks(model, rows, False)
    last = ref["sample_token"][-1]
    assert not np.allclose(on[last][1], off[last][1])  # the carried state changed what the last keyframe sees


def test_perception_tracking_figures_of_an_export(shards_dir, tmp_path):
    from odvla.platform.config import load_config
    from odvla.platform.data.shards import read_split
    from odvla.platform.eval.perception_tracks import perception_tracking_figures
    from odvla.platform.export import save_export

    cfg = load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", "model.vision.track_birth_score=0", "model.vision.track_keep_score=0"])
    export = save_export(_model(cfg), cfg, tmp_path / "export")
    val = read_split(shards_dir, "val", columns=["sample_token"]).to_pylist()
    Q = cfg.model.vision.num_agent_queries
    figs = {t: perception_tracking_figures(str(export), cfg.data, "val", temporal=t, prefix=f"t{int(t)}/",
                                           out_dir=tmp_path / f"t{int(t)}")
            for t in (False, True)}
    for t, m in figs.items():
        p = f"t{int(t)}/"
        assert m[f"{p}samples"] == len(val)
        det = json.loads((tmp_path / f"t{int(t)}" / "detection" / "results_nusc.json").read_text())
        assert sum(len(v) for v in det["results"].values()) == Q * len(val)  # every query is a detection
        # birth score 0: every slot is a track on every keyframe; the tracking classes' ones are submitted
        trk = json.loads((tmp_path / f"t{int(t)}" / "tracking" / "results_nusc.json").read_text())
        n_trk = sum(b["detection_name"] in TRACKING_CLASSES for v in det["results"].values() for b in v)
        assert m[f"{p}tracks"] == sum(len(v) for v in trk["results"].values()) == n_trk > 0
        assert all(b["tracking_name"] in TRACKING_CLASSES for v in trk["results"].values() for b in v)
        assert f"{p}mAP" in m and f"{p}NDS" in m
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        perception_tracking_figures(str(export), cfg.data, "test", temporal=False)
