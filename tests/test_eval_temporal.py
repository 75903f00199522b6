"""Evaluation with temporal state: scene-ordered planning carrying SceneState, and the tracking figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from odvla.platform.eval.tracking_metrics import TrackingAccumulator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_id_switches_and_velocity_error():
    acc = TrackingAccumulator(max_dist=2.0)
    gt_inst = ["a", "b"]
    gt_vel = np.array([[4.0, 0.0], [0.0, 0.0]])
    acc.add("s", [[0.0, 0.0], [10.0, 0.0]], [[3.0, 0.0], [0.0, 0.0]], [7, 8], [[0.5, 0], [10, 0]], gt_vel, gt_inst)
    acc.add("s", [[2.0, 0.0], [10.0, 0.0]], [[4.0, 0.0], [0.0, 1.0]], [7, 9], [[2.0, 0], [10, 0]], gt_vel, gt_inst)
    acc.add("s", [[50.0, 0.0]], [[0.0, 0.0]], [7], [[4.0, 0]], gt_vel[:1], gt_inst[:1])  # too far: unmatched
    acc.add("s", [[4.0, 0.0]], [[0.0, 0.0]], [-1], [[4.0, 0]], gt_vel[:1], gt_inst[:1])  # not a track
    m = acc.metrics()
    assert m["tracking/id_switches"] == 1.0  # b: 8 -> 9
    assert m["tracking/matched"] == 4.0 and m["tracking/recall"] == 4 / 6
    assert m["tracking/velocity_error"] == pytest.approx((1.0 + 0.0 + 0.0 + 1.0) / 4)


@pytest.fixture(scope="module")
def scene_rows(shards_dir):
    from odvla.platform.config import load_config
    from odvla.platform.data.collate import rows_from_table
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.shards import read_split

    cfg = load_config(model="tiny", overrides=[f"data.shards={shards_dir}"])
    t = read_split(shards_dir, "val")
    first = t["scene_token"][0].as_py()
    keep = [i for i, (s, f) in enumerate(zip(t["scene_token"].to_pylist(), t["frame_index"].to_pylist()))
            if s == first and f < 3]
    return cfg, rows_from_table(t.take(keep), resolve_dataroot(cfg), cfg)


def test_stateless_scene_eval_equals_per_keyframe_generate(scene_rows):
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.data.collate import collate
    from odvla.platform.eval.scene_eval import plan_scene

    cfg, rows = scene_rows
    torch.manual_seed(0)
    model = OpenDriveVLA(cfg.model).eval()
    got = plan_scene(model, list(reversed(rows)), temporal=False, max_new_tokens=40)
    assert got["frame_index"].tolist() == [0, 1, 2]
    by_frame = sorted(rows, key=lambda r: int(r["frame_index"]))
    for i, r in enumerate(by_frame):
        ref = model.generate(collate([r]), states=None, max_new_tokens=40)
        assert got["answer"][i] == ref.answers[0]
        np.testing.assert_array_equal(got["pred_traj"][i], np.asarray(ref.trajectories[0], np.float32).reshape(-1))


def test_temporal_scene_eval_carries_track_ids(scene_rows):
    from odvla.model.track_policy import TrackPolicy
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.eval.scene_eval import plan_scene

    cfg, rows = scene_rows
    torch.manual_seed(0)
    model = OpenDriveVLA(cfg.model).eval()
    model.vision.track_policy = TrackPolicy(birth=0.0, keep=0.0)  # untrained scores: every slot is a track
    Q = cfg.model.vision.num_agent_queries
    on = plan_scene(model, rows, temporal=True, max_new_tokens=40)
    off = plan_scene(model, rows, temporal=False, max_new_tokens=40)
    assert all(sorted(ids.tolist()) == list(range(Q)) for ids in off["track_ids"])  # ids restart every keyframe
    assert all(sorted(ids.tolist()) == list(range(Q)) for ids in on["track_ids"])  # the same tracks live on
    assert not np.allclose(on["track_xy"][2], off["track_xy"][2])  # the state changed what frame 2 sees
