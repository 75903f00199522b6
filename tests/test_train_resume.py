"""Fault tolerance for real: a 2-worker DeepSpeed run of the tiny OpenDriveVLA on Ray Train V2, whose rank-0 worker
process is SIGKILLed after the first checkpoint, finishes from that checkpoint at the right global step, trains
exactly the sample sequence of an uninterrupted run with the same seed (per-step sample log, every rank), and logs
into one MLflow run across the restart (params, per-step metrics, lineage tags, config / export / checkpoint
artifacts, registry version)."""
from __future__ import annotations

import os
import signal

import pytest

from odvla.platform.config import load_config
from train_helpers import Background, PauseAfterFirstCheckpoint, committed_checkpoints, wait_for

MAX_STEPS, EVERY, BATCH, WORKERS = 4, 2, 2, 2


def _cfg(shards_dir, storage, run_name, uri, experiment):
    return load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"train.num_workers={WORKERS}", f"train.max_steps={MAX_STEPS}",
        f"train.checkpoint_every={EVERY}", f"data.batch_size={BATCH}", f"train.storage_path={storage}",
        f"train.run_name={run_name}", f"tracking.tracking_uri={uri}", f"tracking.experiment={experiment}",
        "tracking.registered_model=odvla-planner-test", "train.max_failures=2", "train.zero_stage=1",
        "tracking.log_system_metrics=false"])


@pytest.mark.integration
@pytest.mark.slow
def test_killed_worker_resumes_from_checkpoint(ray_session, shards_dir, mlflow_sqlite, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking import find_run
    from odvla.platform.export import load_export
    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log

    storage = tmp_path / "runs"
    # the reference: the same stage, seed and data, never interrupted
    ref = run_stage(_cfg(shards_dir, storage, "reference", mlflow_sqlite, "test-resume-ref"), register=False)
    assert ref.metrics["restarts"] == 0
    reference = read_sample_log(str(storage / "reference" / LOG_DIR))

    hook = tmp_path / "hook"
    cfg = _cfg(shards_dir, storage, "resume", mlflow_sqlite, "test-resume")
    bg = Background(lambda: run_stage(cfg, worker_hooks=[PauseAfterFirstCheckpoint(hook)]))

    pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 900,
                        "the first checkpoint of attempt 0", bg)
    pid, step = map(int, pid_file.read_text().split()[:2])
    assert step == EVERY
    wait_for(lambda: committed_checkpoints(storage / "resume"), 120, "Ray Train to commit the checkpoint", bg)
    os.kill(pid, signal.SIGKILL)  # the rank-0 train worker process dies mid-run
    (hook / "go").touch()
    res = bg.result(600)

    m = res.metrics
    assert m["global_step"] == MAX_STEPS and m["final"] is True
    assert m["restarts"] == 1  # resumed once, from the step-2 checkpoint
    assert m["samples_seen"] == MAX_STEPS * BATCH * WORKERS  # no batch counted twice
    second_pid, second_step = map(int, (hook / "rank0-1.pid").read_text().split()[:2])
    assert second_pid != pid and second_step == MAX_STEPS  # attempt 1's first checkpoint is the final one

    # exact resume: step for step, rank for rank, the samples of the uninterrupted run, none twice
    resumed = read_sample_log(str(storage / "resume" / LOG_DIR))
    assert sorted(resumed) == sorted(reference) == list(range(1, MAX_STEPS + 1))
    assert [resumed[s]["attempt"] for s in sorted(resumed)] == [0] * EVERY + [1] * (MAX_STEPS - EVERY)
    for s in reference:
        assert resumed[s]["ranks"] == reference[s]["ranks"], f"step {s} trained other samples after the resume"
        assert all(len(r) == BATCH for r in resumed[s]["ranks"]) and len(resumed[s]["ranks"]) == WORKERS
    tokens = [t for s in sorted(resumed) for r in resumed[s]["ranks"] for t in r]
    assert len(tokens) == len(set(tokens)) == MAX_STEPS * BATCH * WORKERS  # no sample trained twice

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
