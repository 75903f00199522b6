"""Graceful preemption in training, on a three-node Ray cluster on one machine (head + two worker nodes, one train
worker each). After the periodic checkpoint of step 2 the node of rank 0 gets a preemption notice: a drain with
reason PREEMPTION and a 60 s deadline, exactly what ``ray start --block`` sends for its node on SIGTERM
(``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S``). The workers see it after their next step and checkpoint at once
(step 3, which ``checkpoint_every=2`` would not). Then the node's processes get SIGTERM, a replacement node joins,
and the run resumes from that just-in-time checkpoint: the same sample sequence as an uninterrupted run.
"""
from __future__ import annotations

import time

import pytest

from cluster_helpers import TRAIN_NODE, add_train_node, multinode_cluster, node_by_id
from odvla.platform.config import load_config
from train_helpers import Background, PauseAfterFirstCheckpoint, committed_checkpoints, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MAX_STEPS, EVERY, BATCH, WORKERS = 5, 2, 2, 2


def _cfg(shards_dir, storage, run_name, uri):
    return load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", f"train.num_workers={WORKERS}", f"train.max_steps={MAX_STEPS}",
        f"train.checkpoint_every={EVERY}", f"data.batch_size={BATCH}", f"train.storage_path={storage}",
        f"train.run_name={run_name}", f"tracking.tracking_uri={uri}", "tracking.experiment=preemption",
        f"train.worker_resources.{TRAIN_NODE}=1", "train.max_failures=2", "train.zero_stage=1",
        "train.preemption_grace_s=10", "train.capacity_timeout_s=120",
        "tracking.log_system_metrics=false", "tracking.log_checkpoint=false"])


def _steps_of(run_dir) -> list[int]:
    return sorted(int(c["metrics"]["global_step"]) for c in committed_checkpoints(run_dir)
                  if "metrics" in c and "global_step" in c["metrics"])


def test_preemption_notice_checkpoints_before_the_node_goes(shards_dir, tmp_path):
    import ray
    from ray.core.generated import autoscaler_pb2
    from ray.train.v2._internal.constants import DEFAULT_PREEMPTION_POLL_INTERVAL_S

    from odvla.platform.train import run_stage
    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log, repeated_steps

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "shared" / "runs"
    hook = tmp_path / "hook"
    with multinode_cluster(workers=2) as (cluster, nodes):
        cfg = _cfg(shards_dir, storage, "preempted", uri)
        bg = Background(lambda: run_stage(cfg, register=False, worker_hooks=[PauseAfterFirstCheckpoint(hook)]))
        pid_file = wait_for(lambda: (hook / "rank0-0.pid").exists() and hook / "rank0-0.pid", 600,
                            "the first checkpoint", bg)
        _, step, node_id = pid_file.read_text().split()
        assert int(step) == EVERY
        victim = node_by_id(nodes, node_id)
        gcs = ray._raylet.GcsClient(address=cluster.address)
        noticed_at = time.time()
        accepted, why = gcs.drain_node(node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
                                       "spot instance reclaim (test)", int((noticed_at + 60) * 1000))
        assert accepted, why
        # Ray Train's preemption watcher polls the drains every DEFAULT_PREEMPTION_POLL_INTERVAL_S (5 s) and hands
        # what it saw to the workers: step 3 may only start once a poll has certainly come (3 s raced with it)
        time.sleep(2 * DEFAULT_PREEMPTION_POLL_INTERVAL_S)
        (hook / "go").write_text("")
        wait_for(lambda: EVERY + 1 in _steps_of(storage / "preempted"), 120,
                 "the just-in-time checkpoint of step 3", bg)
        saved_in = time.time() - noticed_at
        cluster.remove_node(victim, allow_graceful=True)  # SIGTERM to the node's raylet and workers
        add_train_node(cluster)  # the replacement
        res = bg.result(600)

    m = res.metrics
    assert m["global_step"] == MAX_STEPS and m["final"] is True and m["restarts"] == 1
    log = read_sample_log(str(storage / "preempted" / LOG_DIR))
    assert sorted(log) == list(range(1, MAX_STEPS + 1))
    resumed_from = min(s for s in log if log[s]["attempt"] == 1) - 1
    assert resumed_from >= EVERY + 1, f"resumed from step {resumed_from}, not from the preemption checkpoint"
    repeated = repeated_steps(str(storage / "preempted" / LOG_DIR))
    print(f"\n[fault figure] train preemption notice (60 s deadline): just-in-time checkpoint of step {EVERY + 1} "
          f"committed {saved_in:.1f} s after the notice, resumed from step {resumed_from}, steps repeated "
          f"{repeated}, restarts {m['restarts']}", flush=True)
