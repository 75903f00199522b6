"""Tracking figures from the perception step alone (``platform/eval/perception_tracks.py``): the tracks equal those
the scene-ordered evaluation leaves (which runs the LLM too), with and without temporal state, and the figures of a
whole split come out of an export."""
from __future__ import annotations

import numpy as np
import pytest
import torch

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
            ids, xy, vel = got[tok]
            np.testing.assert_array_equal(ids, ref["track_ids"][i])
            np.testing.assert_allclose(xy.reshape(-1), ref["track_xy"][i], atol=1e-5)
            np.testing.assert_allclose(vel.reshape(-1), ref["track_vel"][i], atol=1e-5)
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
    val = read_split(shards_dir, "val", columns=["agent_instance"]).to_pylist()
    Q = cfg.model.vision.num_agent_queries
    figs = {t: perception_tracking_figures(str(export), cfg.data, "val", temporal=t, prefix=f"t{int(t)}/")
            for t in (False, True)}
    for t, m in figs.items():
        p = f"t{int(t)}/"
        assert m[f"{p}gt_agents"] == sum(len(r["agent_instance"] or []) for r in val) > 0
        assert m[f"{p}tracks"] == Q * len(val)  # birth score 0: every slot is a track on every keyframe
        assert 0.0 <= m[f"{p}recall"] <= 1.0 and m[f"{p}id_switches"] >= 0
    with pytest.raises(FileNotFoundError, match="split 'test'"):
        perception_tracking_figures(str(export), cfg.data, "test", temporal=False)
