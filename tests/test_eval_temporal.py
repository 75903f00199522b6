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
    from odvla.platform.data.rows import RowSpec
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.shards import read_split

    cfg = load_config(model="tiny", overrides=[f"data.shards={shards_dir}"])
    t = read_split(shards_dir, "val")
    first = t["scene_token"][0].as_py()
    keep = [i for i, (s, f) in enumerate(zip(t["scene_token"].to_pylist(), t["frame_index"].to_pylist()))
            if s == first and f < 3]
    spec = RowSpec.from_config(cfg.data, cfg.model.vision)
    return cfg, rows_from_table(t.take(keep), resolve_dataroot(cfg.data), spec)


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


def test_tracking_figures_feed_each_scene_in_keyframe_order():
    from odvla.platform.eval.tracking_metrics import tracking_figures

    def row(tok, scene, f, xs):
        return {"sample_token": tok, "scene_token": scene, "frame_index": f,
                "agent_boxes": [[x, 0, 0, 1, 4, 1.5, 0, 2.0, 0] for x in xs], "agent_instance": ["a", "b"][:len(xs)]}

    truth = [row("t2", "s", 2, [4.0]), row("t0", "s", 0, [0.0, 10.0]), row("t1", "s", 1, [2.0, 10.0]),
             row("u0", "r", 0, [0.0])]
    trk = {"t0": ([5, 6], [[0, 0], [10, 0]], [[2, 0], [0, 0]]), "t1": ([5, 7], [[2, 0], [10, 0]], [[2, 0], [0, 0]]),
           "t2": ([5, -1], [[4, 0], [9, 9]], [[1, 0], [0, 0]]), "u0": ([6], [[0.5, 0]], [[2, 0]])}
    m = tracking_figures(truth, trk)
    # b: 6 -> 7 is the only switch; scene r's instance 'a' is another agent than scene s's 'a'
    assert m["tracking/id_switches"] == 1.0 and m["tracking/gt_agents"] == 6.0 and m["tracking/matched"] == 6.0
    assert m["tracking/tracks"] == 6.0 and m["tracking/recall"] == 1.0
    assert m["tracking/velocity_error"] == pytest.approx((0 + 2 + 0 + 2 + 1 + 0) / 6)
    with pytest.raises(KeyError, match="'t1'.*no predicted tracks"):
        tracking_figures(truth, {k: v for k, v in trk.items() if k != "t1"})
    bad = [dict(truth[0], agent_instance=[])]
    with pytest.raises(ValueError, match="'t2' has 1 agent boxes but 0 agent_instance"):
        tracking_figures(bad, trk)


def test_results_table_has_a_tracking_table_only_with_figures():
    from odvla.platform.eval.report import results_table

    assert "## Tracking" not in results_table({"predict/samples": 3.0})
    md = results_table({"predict/temporal": 1.0, "tracking/id_switches": 2.0, "tracking/velocity_error": 0.5,
                        "tracking/recall": 0.25, "tracking/matched": 4.0, "tracking/tracks": 9.0,
                        "tracking/gt_agents": 16.0})
    assert "## Tracking" in md and "| on (scene order, SceneState carried) | 2 | 0.50 | 0.25 | 4 | 9 | 16 |" in md


@pytest.fixture(scope="module")
def tracking_export(tmp_path_factory, shards_dir):
    """An untrained tiny export whose tracker keeps every query (birth and keep scores 0), so tracks exist; its
    config says it trained on clips of 2 keyframes (evaluation still reads single keyframes)."""
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.config import load_config
    from odvla.platform.export import save_export

    torch.manual_seed(0)
    cfg = load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", "data.clip_len=2", "model.vision.track_birth_score=0",
        "model.vision.track_keep_score=0"])
    return save_export(OpenDriveVLA(cfg.model), cfg, tmp_path_factory.mktemp("export") / "export")


@pytest.mark.integration
@pytest.mark.slow
def test_run_eval_temporal_off_is_the_stateless_scene_eval_and_on_carries_tracks(ray_session, shards_dir,
                                                                                 tracking_export, tmp_path, capsys):
    """eval.temporal off (clip_len 1) through run_eval equals the stateless scene-ordered evaluation; `odvla eval
    --temporal on` keeps track ids across each scene and puts the tracking figures in metrics.json, the table and
    MLflow."""
    import json

    import pyarrow.parquet as pq
    from mlflow.tracking import MlflowClient

    from odvla.platform.cli.main import main
    from odvla.platform.config import load_config
    from odvla.platform.eval.evaluate import run_eval
    from odvla.platform.eval.scene_eval import plan_scenes

    common = [f"data.shards={shards_dir}", f"data.instructions={tmp_path / 'none'}", "eval.concurrency=1",
              "eval.max_new_tokens=60", "eval.plots=0", "eval.baseline_mlp_epochs=2"]
    # data.clip_len=2 as the export trained: evaluation still plans single keyframes
    cfg = load_config(model="tiny", overrides=common + ["eval.temporal=false", "eval.batch_size=4", "data.clip_len=2"])
    off = run_eval(cfg, str(tracking_export), out_dir=tmp_path / "off")
    ref = plan_scenes(cfg.data, cfg.model.vision, cfg.eval, str(tracking_export), "val", temporal=False)
    got = {r["sample_token"]: r for r in pq.read_table(off.predictions_path).to_pylist()}
    assert len(got) == len(ref["sample_token"]) == off.metrics["predict/samples"]
    for i, tok in enumerate(ref["sample_token"]):
        assert got[tok]["answer"] == ref["answer"][i], tok
        np.testing.assert_array_equal(np.asarray(got[tok]["pred_traj"], np.float32), ref["pred_traj"][i])
        assert got[tok]["track_ids"] == ref["track_ids"][i].tolist()
    Q = len(ref["track_ids"][0])
    m_off = off.metrics
    assert m_off["predict/temporal"] == 0.0 and m_off["tracking/tracks"] == Q * m_off["predict/samples"]
    assert m_off["tracking/gt_agents"] > 0 and 0.0 <= m_off["tracking/recall"] <= 1.0

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment(
        "temporal", artifact_location=(tmp_path / "artifacts").as_uri())).info.run_id
    rc = main(["eval", "--model", str(tracking_export), "--temporal", "on", "--out", str(tmp_path / "on"),
               "--run-id", run_id] + [a for kv in common + [f"tracking.tracking_uri={uri}"] for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert rc == 0 and "## Tracking" in out and "| on (scene order, SceneState carried) |" in out
    assert "temporal state on: ID switches" in out
    m_on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert m_on["predict/temporal"] == 1.0 and m_on["tracking/tracks"] == m_off["tracking/tracks"]
    assert m_on["tracking/gt_agents"] == m_off["tracking/gt_agents"]
    on = pq.read_table(tmp_path / "on" / "predictions.parquet").to_pylist()
    by_scene: dict = {}
    for r in on:
        by_scene.setdefault(r["scene_token"], []).append(sorted(r["track_ids"]))
    # every slot tracked: the same Q ids live through the scene (stateless runs restart at 0..Q-1 too, so check
    # the states differ through what the tracks saw)
    assert all(ids == frames[0] for frames in by_scene.values() for ids in frames)
    xy_on = {r["sample_token"]: r["track_xy"] for r in on}
    assert any(not np.allclose(xy_on[t], got[t]["track_xy"]) for t in got)
    logged = client.get_run(run_id).data.metrics
    assert logged["eval/tracking/id_switches"] == m_on["tracking/id_switches"]
    assert logged["eval/predict/temporal"] == 1.0
