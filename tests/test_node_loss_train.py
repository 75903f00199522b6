"""Node loss in training, on a three-node Ray cluster on one machine (head + two worker nodes, one train worker on
each, checkpoints on a folder every node sees):

- the node of rank 0 is killed after the first checkpoint and a replacement node joins 5 s later: the stage finishes
  from that checkpoint, trains exactly the sample sequence of an uninterrupted run with the same seed, and MLflow
  keeps one run;
- no replacement: the stage fails after ``train.capacity_timeout_s`` with an error naming the missing resource,
  instead of Ray's default of retrying the worker group forever, and its MLflow run is marked FAILED.

Each prints its figure (time to recover, steps repeated). Slow: each test a few minutes on 2 cores at most.
"""
from __future__ import annotations

import time

import pytest

from cluster_helpers import TRAIN_NODE, add_train_node, kill_node, multinode_cluster, node_by_id
from odvla.platform.config import load_config
from train_helpers import Background, PauseAfterFirstCheckpoint, committed_checkpoints, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_STEPS, EVERY, BATCH, WORKERS = 4, 2, 2, 2


def _cfg(shards_dir, storage, run_name, uri, experiment, *extra):
    return load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"train.num_workers={WORKERS}", f"train.max_steps={MAX_STEPS}",
        f"train.checkpoint_every={EVERY}", f"data.batch_size={BATCH}", f"train.storage_path={storage}",
        f"train.run_name={run_name}", f"tracking.tracking_uri={uri}", f"tracking.experiment={experiment}",
        f"train.worker_resources.{TRAIN_NODE}=1", "train.max_failures=2", "train.zero_stage=1",
        "tracking.log_system_metrics=false", "tracking.log_checkpoint=false", *extra])


def _kill_rank0_node(cluster, nodes, hook, storage, run_name, bg):
    pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 600,
                        "the first checkpoint of attempt 0", bg)
    _, step, node_id = pid_file.read_text().split()
    assert int(step) == EVERY
    wait_for(lambda: committed_checkpoints(storage / run_name), 120, "Ray Train to commit the checkpoint", bg)
    victim = node_by_id(nodes, node_id)
    return kill_node(cluster, victim), time.time(), victim


def test_node_loss_with_replacement_resumes_exactly(shards_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log, repeated_steps

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "shared" / "runs"
    hook = tmp_path / "hook"
    with multinode_cluster(workers=2) as (cluster, nodes):
        ref = run_stage(_cfg(shards_dir, storage, "reference", uri, "node-loss-ref"), register=False)
        reference = read_sample_log(str(storage / "reference" / LOG_DIR))

        cfg = _cfg(shards_dir, storage, "node-loss", uri, "node-loss", "train.capacity_timeout_s=120")
        bg = Background(lambda: run_stage(cfg, register=False, worker_hooks=[PauseAfterFirstCheckpoint(hook)]))
        killed_at, killed_wall, victim = _kill_rank0_node(cluster, nodes, hook, storage, "node-loss", bg)
        time.sleep(5)
        add_train_node(cluster)  # the replacement (a new spot instance joining)
        res = bg.result(600)

    assert ref.metrics["global_step"] == MAX_STEPS
    m = res.metrics
    assert m["global_step"] == MAX_STEPS and m["final"] is True and m["restarts"] == 1
    resumed = read_sample_log(str(storage / "node-loss" / LOG_DIR))
    assert sorted(resumed) == sorted(reference) == list(range(1, MAX_STEPS + 1))
    assert [resumed[s]["attempt"] for s in sorted(resumed)] == [0] * EVERY + [1] * (MAX_STEPS - EVERY)
    for s in reference:
        assert resumed[s]["ranks"] == reference[s]["ranks"], f"step {s} trained other samples after the node loss"

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("node-loss")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 1 and runs[0].info.run_id == res.run_id and runs[0].info.status == "FINISHED"
    history = {h.step: h.timestamp for h in client.get_metric_history(res.run_id, "loss")}
    assert sorted(history) == list(range(1, MAX_STEPS + 1))
    recover_s = history[EVERY + 1] / 1000.0 - killed_wall
    print(f"\n[fault figure] train node loss, replacement after 5 s: first step after the kill in {recover_s:.1f} s, "
          f"steps repeated {repeated_steps(str(storage / 'node-loss' / LOG_DIR))}, restarts {m['restarts']}, "
          f"killed node {victim.node_id[:8]} {time.monotonic() - killed_at:.0f} s before the end", flush=True)


def test_node_loss_without_replacement_fails_with_named_resources(shards_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.platform.train import run_stage
    from odvla.platform.train.trainer import CapacityError

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "shared" / "runs"
    hook = tmp_path / "hook"
    with multinode_cluster(workers=2, start_timeout_s=10) as (cluster, nodes):
        cfg = _cfg(shards_dir, storage, "no-capacity", uri, "node-loss-none", "train.capacity_timeout_s=20")
        bg = Background(lambda: run_stage(cfg, register=False, worker_hooks=[PauseAfterFirstCheckpoint(hook)]))
        killed_at, _, _ = _kill_rank0_node(cluster, nodes, hook, storage, "no-capacity", bg)
        with pytest.raises(CapacityError) as err:
            bg.result(300)
        gave_up_s = time.monotonic() - killed_at

    msg = str(err.value)
    assert f"{TRAIN_NODE}': '2 wanted, 1 in the cluster" in msg, msg
    assert "train.capacity_timeout_s=20" in msg and "train.run_name" in msg
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("node-loss-none").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FAILED"
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
    print(f"\n[fault figure] train node loss, no replacement: failed with CapacityError {gave_up_s:.1f} s after the "
          f"kill (capacity_timeout_s=20), steps kept {EVERY} of {MAX_STEPS}", flush=True)
