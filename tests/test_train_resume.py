"""Fault tolerance for real: a 2-worker DeepSpeed run of the tiny OpenDriveVLA on Ray Train V2, whose rank-0 worker
process is SIGKILLed after the first checkpoint, finishes from that checkpoint at the right global step without
counting data twice, and logs into one MLflow run across the restart (params, per-step metrics, lineage tags,
config / export / checkpoint artifacts, registry version)."""
from __future__ import annotations

import os
import signal

import pytest

from odvla.platform.config import load_config
from train_helpers import Background, committed_checkpoints, wait_for

MAX_STEPS, EVERY, BATCH, WORKERS = 4, 2, 2, 2


@pytest.mark.integration
def test_killed_worker_resumes_from_checkpoint(ray_session, shards_dir, mlflow_sqlite, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking import find_run
    from odvla.platform.export import load_export
    from odvla.platform.train import run_stage
    from odvla.platform.train.loop import HOOK_ENV

    hook = tmp_path / "hook"
    monkeypatch.setenv(HOOK_ENV, str(hook))
    storage = tmp_path / "runs"
    cfg = load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"train.num_workers={WORKERS}", f"train.max_steps={MAX_STEPS}",
        f"train.checkpoint_every={EVERY}", f"data.batch_size={BATCH}", f"train.storage_path={storage}",
        "train.run_name=resume", f"tracking.tracking_uri={mlflow_sqlite}", "tracking.experiment=test-resume",
        "tracking.registered_model=odvla-planner-test", "train.max_failures=2", "train.zero_stage=1"])
    bg = Background(lambda: run_stage(cfg))

    pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 900,
                        "the first checkpoint of attempt 0", bg)
    pid, step = map(int, pid_file.read_text().split())
    assert step == EVERY
    wait_for(lambda: committed_checkpoints(storage / "resume"), 120, "Ray Train to commit the checkpoint", bg)
    os.kill(pid, signal.SIGKILL)  # the rank-0 train worker process dies mid-run
    (hook / "go").touch()
    res = bg.result(600)

    m = res.metrics
    assert m["global_step"] == MAX_STEPS and m["final"] is True
    assert m["restarts"] == 1  # resumed once, from the step-2 checkpoint
    assert m["samples_seen"] == MAX_STEPS * BATCH * WORKERS  # no batch counted twice
    second_pid, second_step = map(int, (hook / "rank0-1.pid").read_text().split())
    assert second_pid != pid and second_step == MAX_STEPS

    client = MlflowClient(mlflow_sqlite)
    exp = client.get_experiment_by_name("test-resume")
    run = find_run(client, exp.experiment_id, f"{storage}/resume")
    assert run.info.run_id == res.run_id and run.info.status == "FINISHED"
    assert len(client.search_runs([exp.experiment_id])) == 1  # one MLflow run across the restart
    steps = sorted({h.step for h in client.get_metric_history(res.run_id, "loss")})
    assert steps == list(range(1, MAX_STEPS + 1))
    for key in ("lr", "samples_per_s", "tokens_per_s"):
        assert client.get_metric_history(res.run_id, key), key
    tags = run.data.tags
    assert tags["odvla.stage"] == "stage3" and tags["odvla.init_from"] == ""
    assert tags["odvla.resumed_from_step"] == str(EVERY) and tags["odvla.restarts"] == "1"
    assert run.data.params["train.max_steps"] == str(MAX_STEPS) and run.data.params["train.zero_stage"] == "1"
    top = {a.path for a in client.list_artifacts(res.run_id)}
    assert {"config.yaml", "export", "checkpoint"} <= top
    assert "checkpoint/train_state.json" in {a.path for a in client.list_artifacts(res.run_id, "checkpoint")}

    assert res.registered_version is not None
    model, lcfg = load_export(f"models:/odvla-planner-test/{res.registered_version}", tracking_uri=mlflow_sqlite)
    assert lcfg.stage.name == "stage3" and sum(p.numel() for p in model.parameters()) > 0
