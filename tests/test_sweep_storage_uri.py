"""``sweep.storage_path`` as a URI: a one-trial ablation sweep whose Tune state, results table, sweep metadata and
per-trial evaluation all go through pyarrow's file systems to a ``file://`` URI, exactly the code path of
``s3://`` (which cannot be reached here); the sweep is then restorable from that URI."""
from __future__ import annotations

from pathlib import Path

import pytest

from odvla.platform.config import load_config


@pytest.mark.integration
@pytest.mark.slow
def test_sweep_state_and_results_on_a_uri(shards_dir, ray_session, tmp_path):
    from ray import tune

    from odvla.tune.recipe import SweepRecipe
    from odvla.tune.sweep import META_FILE, run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    bucket = tmp_path / "bucket"
    overrides = [f"data.shards={shards_dir}", f"tracking.tracking_uri={uri}", f"train.storage_path={tmp_path / 't'}",
                 f"sweep.storage_path=file://{bucket}/sweeps", "sweep.name=on-uri", "sweep.stage_sets=[[stage3]]",
                 "train.max_steps=2", "train.warmup_steps=1", "train.max_failures=0", "eval.plots=0",
                 "eval.baseline_mlp_epochs=5", "eval.batch_size=10", "eval.max_new_tokens=96",
                 "tracking.log_system_metrics=false", "tracking.log_checkpoint=false"]
    out = run_sweep(load_config(model="tiny", overrides=overrides), SweepRecipe(overrides=overrides))

    assert out["experiment_path"] == f"file://{bucket}/sweeps/on-uri"
    assert [r["status"] for r in out["rows"]] == ["done"]
    exp = bucket / "sweeps" / "on-uri"
    for name in (META_FILE, "results.md", "results.json"):
        assert (exp / name).is_file(), name
    assert "| done |" in (exp / "results.md").read_text()
    trial_id = out["rows"][0]["trial_id"]
    assert any((exp / "eval" / trial_id).rglob("*")), "the trial's evaluation was not uploaded beside the sweep"
    assert Path(out["table_path"]).is_file()  # the local copy MLflow logged
    assert tune.Tuner.can_restore(out["experiment_path"])
