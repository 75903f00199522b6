"""StageProgress: the driver-side thread that reports a running stage's steps from its MLflow run."""
from __future__ import annotations

import time

from odvla.platform.train.progress import StageProgress


def test_progress_follows_the_logged_steps(mlflow_sqlite):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(mlflow_sqlite)
    exp = client.create_experiment(f"progress-{time.time_ns()}")
    run_id = client.create_run(exp).info.run_id
    seen = []
    p = StageProgress(mlflow_sqlite, run_id, "stage3", 10, lambda *a: seen.append(a), interval_s=0.1)
    assert p.poll() is False and seen == []  # nothing logged yet
    for step in (1, 2, 3):
        client.log_metric(run_id, "loss", 4.0 - step, step=step)
    client.log_metric(run_id, "samples_per_s", 2.5, step=3)
    assert p.poll() is True
    assert seen == [("stage3", 3, 10, {"loss": 1.0, "samples_per_s": 2.5})]
    assert p.poll() is False  # no new step, no new line
    # the thread form: lines arrive while the block runs, and it stops with the block
    with StageProgress(mlflow_sqlite, run_id, "stage3", 10, lambda *a: seen.append(a), interval_s=0.05):
        client.log_metric(run_id, "loss", 0.5, step=7)
        deadline = time.time() + 10
        while len(seen) < 2 and time.time() < deadline:
            time.sleep(0.05)
    assert seen[-1][:3] == ("stage3", 7, 10) and seen[-1][3]["loss"] == 0.5
    # an unreachable store gives no lines and no error in the thread
    with StageProgress("http://127.0.0.1:9", run_id, "stage3", 10, lambda *a: seen.append(a), interval_s=0.05):
        time.sleep(0.3)
    assert len(seen) == 2
