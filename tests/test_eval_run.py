"""End to end: an export of an untrained tiny model -> run_eval on the synthetic val split (Ray Data actor pool,
real MLflow SQLite store) -> predictions Parquet, metrics of every protocol and baseline, QA, table, plots; and the
``odvla eval`` command on the same export."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from odvla.platform.config import load_config


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory, shards_dir):
    import torch

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.export import save_export

    torch.manual_seed(0)
    cfg = load_config(model="tiny", stage="stage3", overrides=[f"data.shards={shards_dir}"])
    model = OpenDriveVLA(cfg.model)
    return save_export(model, cfg, tmp_path_factory.mktemp("export") / "export")


@pytest.fixture(scope="module")
def instructions(tmp_path_factory, shards_dir):
    from odvla.platform.data.conversations.build import build_instructions

    out = tmp_path_factory.mktemp("conversations")
    build_instructions(shards_dir, seed=0, out_dir=out)
    return out


def test_run_eval_end_to_end(ray_session, shards_dir, export_dir, instructions, tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from odvla.platform.eval.evaluate import run_eval
    from odvla.platform.eval.planning_metrics import PROTOCOLS

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("eval-test", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    cfg = load_config(model="tiny", overrides=[
        f"data.shards={shards_dir}", f"data.instructions={instructions}", f"tracking.tracking_uri={uri}",
        "eval.batch_size=5", "eval.concurrency=1", "eval.max_new_tokens=120", "eval.plots=2",
        "eval.qa_max_examples=6", "eval.baseline_mlp_epochs=50"])
    res = run_eval(cfg, str(export_dir), out_dir=tmp_path / "eval", run_id=run_id)

    val_tokens = pq.read_table(sorted((shards_dir / "val").glob("*.parquet"))[0], columns=["sample_token"])
    m = res.metrics
    n_val = m["predict/samples"]
    assert n_val >= 1 and n_val == sum(
        pq.read_table(f, columns=["sample_token"]).num_rows for f in sorted((shards_dir / "val").glob("*.parquet")))
    # every protocol for the model and both baselines, L2 finite for the baselines
    for prefix in ("", "cv/", "mlp/"):
        for p in PROTOCOLS:
            for k in ("L2_1s", "L2_2s", "L2_3s", "L2_avg", "col_1s", "col_2s", "col_3s", "col_avg", "n"):
                assert f"{prefix}{p}/{k}" in m, f"{prefix}{p}/{k}"
    assert np.isfinite(m["cv/uniad/L2_avg"]) and np.isfinite(m["mlp/odvla/L2_avg"])
    # malformed outputs are counted, and the scored samples are exactly the parsed ones
    assert m["predict/malformed"] + m["uniad/n"] == n_val
    # QA on the generated val instruction examples
    assert m["qa/n"] == 6 and all(np.isfinite(m[f"qa/{k}"]) for k in ("BLEU_4", "METEOR", "CIDEr", "ROUGE_L"))

    pred = pq.read_table(res.predictions_path).to_pylist()
    planning = [r for r in pred if r["task"] == "planning"]
    assert len(planning) == n_val and len(pred) == n_val + 6 and m["predict/rows_per_s"] > 0
    assert {r["sample_token"] for r in planning} >= set(val_tokens.column(0).to_pylist())
    for r in planning:
        assert len(r["pred_traj"]) == 12 and len(r["gt_traj"]) == 12 and len(r["gt_mask"]) == 6
        assert r["parsed"] == all(np.isfinite(r["pred_traj"])) and (r["parsed"] or r["error"])
    assert all(r["reference"] for r in pred if r["task"] != "planning")

    assert "| OpenDriveVLA-0.5B | published | stp3 |" in res.table_md and "| this model | measured" in res.table_md
    # the stateless default still scores every agent query each keyframe leaves, through the devkit
    assert m["predict/temporal"] == 0.0 and m["perception/samples"] == n_val
    assert "| off (every keyframe from an empty state) |" in res.table_md
    assert all(len(r["track_ids"]) * 2 == len(r["track_xy"]) == len(r["track_vel"]) == len(r["track_boxes"]) * 2 / 9
               == len(r["track_scores"]) * 2 == len(r["track_labels"]) * 2 for r in pred)
    det = json.loads((res.out_dir / "perception" / "detection" / "results_nusc.json").read_text())
    plan = [r for r in pred if r["task"] == "planning"]
    assert sum(len(v) for v in det["results"].values()) == sum(len(r["track_ids"]) for r in plan)
    assert (res.out_dir / "results.md").read_text() == res.table_md
    assert json.loads((res.out_dir / "metrics.json").read_text())["predict/samples"] == n_val
    pngs = sorted(p.name for p in (res.out_dir / "plots").glob("*.png"))
    assert sum(p.startswith("bev_") for p in pngs) == 2 and sum(p.startswith("cam_") for p in pngs) == 2

    logged = client.get_run(run_id).data.metrics
    assert logged["eval/uniad/L2_avg"] == pytest.approx(m["uniad/L2_avg"], nan_ok=True) or \
        not np.isfinite(m["uniad/L2_avg"])
    assert logged["eval/cv/stp3/L2_avg"] == pytest.approx(m["cv/stp3/L2_avg"])
    arts = {a.path for a in client.list_artifacts(run_id, "eval")}
    assert {"eval/results.md", "eval/predictions.parquet", "eval/plots"} <= arts
    assert mlflow.active_run() is None


def test_odvla_eval_command_on_a_runs_uri(ray_session, shards_dir, export_dir, tmp_path, capsys):
    """``odvla eval --model runs:/<id>/export``: the export comes from an MLflow run's artifacts."""
    from mlflow.tracking import MlflowClient

    from odvla.platform.cli.main import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("eval-cli", artifact_location=(tmp_path / "artifacts").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(export_dir), artifact_path="export")
    rc = main(["eval", "--model", f"runs:/{run_id}/export", "--shards", str(shards_dir), "--out",
               str(tmp_path / "cli"), "--set", f"tracking.tracking_uri={uri}", "--set", "eval.plots=0",
               "--set", "eval.max_new_tokens=120", "--set", "eval.baseline_mlp_epochs=5",
               "--set", f"data.instructions={tmp_path / 'none'}", "--official-out", str(tmp_path / "official"),
               "--protocol", "pdms"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| constant velocity | measured" in out and "malformed answers" in out
    # --protocol pdms: NAVSIM's PDM score for the model, both baselines and the logged expert
    metrics = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert "PDM score (NAVSIM, on the logs)" in out and "| logged expert |" in out
    assert metrics["expert/pdms/n"] == metrics["cv/pdms/n"] == metrics["mlp/pdms/n"] > 0
    assert metrics["pdms/n"] <= metrics["expert/pdms/n"] and 0.0 <= metrics["cv/pdms/score"] <= 1.0
    assert (tmp_path / "cli" / "predictions.parquet").is_file()
    summary = json.loads((tmp_path / "official" / "summary.json").read_text())
    n_val = sum(pq.read_table(f, columns=["sample_token"]).num_rows for f in sorted((shards_dir / "val").glob("*.parquet")))
    assert summary["samples"] == n_val and "official evaluation files" in out
    assert len((tmp_path / "official" / "outputs.jsonl").read_text().splitlines()) == n_val
    assert {p.name for p in (tmp_path / "official" / "gt").iterdir()} == {
        "gt_traj.pkl", "gt_traj_mask.pkl", "planing_gt_segmentation_val", "vad_gt_seg.pkl"}
    malformed = int(pq.read_table(tmp_path / "cli" / "predictions.parquet", columns=["parsed"]).column(0)
                    .to_numpy(zero_copy_only=False).__invert__().sum())
    assert summary["fallback_constant_velocity"] == malformed
    # a non-empty --official-out is refused before the model runs
    assert main(["eval", "--model", f"runs:/{run_id}/export", "--shards", str(shards_dir), "--set",
                 f"tracking.tracking_uri={uri}", "--official-out", str(tmp_path / "official")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path / "missing"), "--shards", str(shards_dir)]) == 2
    assert "not an export folder" in capsys.readouterr().err
