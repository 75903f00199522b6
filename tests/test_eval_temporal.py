"""Evaluation with temporal state: scene-ordered planning carrying SceneState, and the perception figures."""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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


def test_results_table_has_a_perception_table_only_with_figures():
    from odvla.platform.eval.report import results_table

    assert "## Perception" not in results_table({"predict/samples": 3.0})
    md = results_table({"predict/temporal": 1.0, "perception/mAP": 0.25, "perception/NDS": 0.5,
                        "perception/mATE": 0.7, "perception/mAVE": 1.5, "perception/AMOTA": 0.125,
                        "perception/AMOTP": 1.75, "perception/IDS": 3.0, "perception/recall": 0.5,
                        "perception/det_classes_with_gt": 4.0, "perception/trk_classes_with_gt": 3.0,
                        "perception/AP/car": 0.75, "perception/AP/bus": 0.0})
    assert "## Perception" in md
    assert "| on (scene order, SceneState carried) | 0.250 | 0.500 | 0.70 | 1.50 | 0.125 | 1.75 | 3 | 0.500 |" in md
    assert "4 of 10 detection classes, 3 of 7 tracking classes" in md
    assert "| class | bus | car |" in md and "| AP | 0.000 | 0.750 |" in md


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
    m_off = off.metrics
    # every live track of a tracking class is a box of the devkit's tracking submission
    from odvla.platform.eval.nusc_submission import TRACKING_CLASSES
    from odvla.model.constants import DETECTION_CLASSES

    trk_labels = [DETECTION_CLASSES.index(c) for c in TRACKING_CLASSES]
    n_tracks = sum(int(((np.asarray(r["track_ids"]) >= 0) & np.isin(r["track_labels"], trk_labels)).sum())
                   for r in got.values())
    assert m_off["predict/temporal"] == 0.0 and m_off["perception/tracks"] == n_tracks
    sub = json.loads((tmp_path / "off" / "perception" / "tracking" / "results_nusc.json").read_text())
    assert sum(len(v) for v in sub["results"].values()) == n_tracks and set(sub["results"]) == set(got)

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment(
        "temporal", artifact_location=(tmp_path / "artifacts").as_uri())).info.run_id
    rc = main(["eval", "--model", str(tracking_export), "--temporal", "on", "--out", str(tmp_path / "on"),
               "--run-id", run_id] + [a for kv in common + [f"tracking.tracking_uri={uri}"] for a in ("--set", kv)])
    out = capsys.readouterr().out
    assert rc == 0 and "## Perception" in out and "| on (scene order, SceneState carried) |" in out
    assert "temporal state on (nuScenes devkit): mAP" in out
    m_on = json.loads((tmp_path / "on" / "metrics.json").read_text())
    assert m_on["predict/temporal"] == 1.0 and m_on["perception/samples"] == m_off["perception/samples"]
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
    assert logged["eval/perception/mAP"] == m_on["perception/mAP"]
    assert logged["eval/predict/temporal"] == 1.0
