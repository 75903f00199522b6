"""Node loss in a sweep, on a multi-node Ray cluster on one machine: the head (4 CPUs: Tune, Ray Data, the trials'
train workers) and two 1-CPU worker nodes, each with one trial slot (``sweep.trial_resources``), so each of the two
concurrent trials' drivers runs on its own worker node. After the first checkpoint of its stage, one trial's node is
killed (its raylet and every process on it, no notice); a replacement node joins 5 s later. Tune retries the trial
(``sweep.max_failures``) on the replacement: the stage continues from its Ray Train checkpoint in the shared storage
with no step repeated, the trial keeps its one MLflow run (two attempts, the nodes they ran on), and the sweep
returns every trial TERMINATED with its evaluation. Prints the figure (time to recover). Slow: about 2 minutes.
"""
from __future__ import annotations

import time

import pytest
from rich.console import Console

from cluster_helpers import add_train_node, kill_node, multinode_cluster, node_by_id
from odvla.platform.bench.bench_faults import FaultFigure, fault_table, table_rows
from odvla.platform.config import load_config
from train_helpers import Background, PauseEachRunAfterFirstCheckpoint, committed_checkpoints, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SLOT = "odvla_sweep_trial_slot"
MAX_STEPS, EVERY = 4, 2


def test_sweep_trial_on_a_lost_node_is_retried_and_the_sweep_finishes(shards_dir, tmp_path):
    from mlflow import MlflowClient
    from ray.tune import ExperimentAnalysis

    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log, repeated_steps
    from odvla.tune.sweep import SweepRecipe, run_sweep

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = tmp_path / "shared"
    hook = tmp_path / "hook"
    overrides = [f"data.shards={shards_dir}", f"tracking.tracking_uri={uri}", f"train.storage_path={storage / 'train'}",
                 f"sweep.storage_path={storage / 'sweeps'}", f"train.max_steps={MAX_STEPS}",
                 f"train.checkpoint_every={EVERY}", "data.batch_size=2", "train.warmup_steps=1", "train.max_failures=0",
                 "eval.plots=0", "eval.baseline_mlp_epochs=5", "eval.batch_size=10", "eval.max_new_tokens=96",
                 "tracking.log_system_metrics=false", "tracking.log_checkpoint=false",
                 "sweep.name=nl", "sweep.stage_sets=[[stage3]]", "sweep.model_sizes=[tiny]", "sweep.lrs=[1e-3,2e-3]",
                 "sweep.max_concurrent_trials=2", "sweep.max_failures=1", f"sweep.trial_resources.{SLOT}=1"]
    cfg = load_config(model="tiny", overrides=overrides)
    client = MlflowClient(uri)

    with multinode_cluster(workers=2, head_cpus=4, worker_cpus=1, worker_resources={SLOT: 1}) as (cluster, nodes):
        bg = Background(lambda: run_sweep(cfg, SweepRecipe(overrides=overrides),
                                          worker_hooks=[PauseEachRunAfterFirstCheckpoint(hook)]))
        marker = wait_for(lambda: next(iter(sorted(hook.glob("nl-*-stage3.ckpt"))), None), 600,
                          "a trial's first checkpoint", bg)
        trial_id = marker.name[len("nl-"):-len("-stage3.ckpt")]
        assert int(marker.read_text().split()[0]) == EVERY
        run_dir = storage / "train" / f"nl-{trial_id}-stage3"
        wait_for(lambda: committed_checkpoints(run_dir), 120, "Ray Train to commit the trial's checkpoint", bg)
        (trial,) = client.search_runs([client.get_experiment_by_name("opendrivevla").experiment_id],
                                      filter_string=f"tags.`odvla.trial_id` = '{trial_id}'"
                                                    " and tags.`odvla.kind` = 'trial'")
        victim = node_by_id(nodes, trial.data.tags["odvla.trial_nodes"])  # the node of the trial's driver
        killed_at, killed_wall = kill_node(cluster, victim), time.time()
        (hook / "go").touch()  # the other trial goes on
        time.sleep(5)
        replacement = add_train_node(cluster, 1, {SLOT: 1})
        out = bg.result(600)
        finished_after = time.monotonic() - killed_at

    assert out["failed"] == [] and not out["interrupted"]
    assert len(out["rows"]) == 2 and all(r["status"] == "done" for r in out["rows"]), out["table_md"]
    assert all(isinstance(r["uniad/L2_avg"], float) for r in out["rows"])
    tune_trials = {t.trial_id: t for t in ExperimentAnalysis(out["experiment_path"]).trials}
    assert {t.status for t in tune_trials.values()} == {"TERMINATED"}
    assert tune_trials[trial_id].num_failures == 1  # retried once after its node was lost
    assert [t.num_failures for k, t in tune_trials.items() if k != trial_id] == [0]

    # MLflow: one run per trial; the killed trial's shows two attempts, on the lost node and on the replacement.
    exp = client.get_experiment_by_name("opendrivevla").experiment_id
    trials = client.search_runs([exp], filter_string="tags.`odvla.kind` = 'trial'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    killed = next(t for t in trials if t.data.tags["odvla.trial_id"] == trial_id)
    assert len(client.get_metric_history(killed.info.run_id, "trial_attempt")) == 2
    assert killed.data.tags["odvla.trial_nodes"].split(",") == [victim.node_id, replacement.node_id]
    other = next(t for t in trials if t.data.tags["odvla.trial_id"] != trial_id)
    assert len(client.get_metric_history(other.info.run_id, "trial_attempt")) == 1
    (stage,) = client.search_runs([exp], filter_string=f"tags.`mlflow.parentRunId` = '{killed.info.run_id}'")
    assert stage.info.status == "FINISHED"
    history = {h.step: h.timestamp for h in client.get_metric_history(stage.info.run_id, "loss")}
    assert sorted(history) == list(range(1, MAX_STEPS + 1))

    # The retry continued the stage from its checkpoint: attempt 0 trained steps 1-2, attempt 1 steps 3-4.
    log_dir = str(run_dir / LOG_DIR)
    steps = read_sample_log(log_dir)
    assert [steps[s]["attempt"] for s in sorted(steps)] == [0] * EVERY + [1] * (MAX_STEPS - EVERY)
    assert repeated_steps(log_dir) == 0
    first_new = min(s for s, r in steps.items() if r["attempt"] == 1)  # the retry's first step, from the log
    recover_s = history[first_new] / 1000.0 - killed_wall
    # the figure, as `odvla bench faults` prints it
    figure = FaultFigure("sweep trial node loss", recover_s, repeated_steps(log_dir),
                         note=f"replacement after 5 s, trial retries 1, sweep finished {finished_after:.0f} s "
                              "after the kill")
    (row,) = table_rows([figure])
    # the printed recovery against the fault's timeline: the retry ran on the replacement node, which joined 5 s
    # after the kill, and trained its first step before the sweep finished; no step trained twice (sample log)
    assert 5.0 <= float(row[1]) <= finished_after and row[2] == str(repeated_steps(log_dir)) == "0"
    print(f"\n[fault figure] {' | '.join(row)}", flush=True)
    Console(width=160).print(fault_table([figure]))
