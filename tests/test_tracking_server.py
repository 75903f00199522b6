"""MLflow against a real ``mlflow server`` on loopback: a training run logs its per-step metrics there, the server
is killed mid-run, and training goes on to its final checkpoint and export, saying that tracking was lost."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from odvla.platform.config import load_config
from train_helpers import Background, wait_for

PORT = 5987


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@pytest.fixture
def mlflow_server(tmp_path):
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on 127.0.0.1:5987, in its own session."""
    url = f"http://127.0.0.1:{PORT}"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    log = open(tmp_path / "mlflow-server.log", "w")
    proc = subprocess.Popen(
        [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(PORT), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: _healthy(url) or proc.poll() is not None, 180, "mlflow server to answer")
        assert proc.poll() is None, (tmp_path / "mlflow-server.log").read_text()[-2000:]
        yield url, proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)
        log.close()


def test_resilient_tracker_outlives_server(mlflow_server):
    """The logger itself: records land while the server lives; afterwards calls return at once and warn."""
    from odvla.platform.tracking import ResilientTracker, ensure_experiment, get_or_create_run

    url, proc = mlflow_server
    tracker = ResilientTracker(url, None, retry_after_s=0.0)
    run_id, _ = tracker.call("open", lambda: get_or_create_run(
        tracker.client, ensure_experiment(tracker.client, "test-logger", url), "/k/logger", "logger", {}))
    tracker.run_id = run_id
    tracker.log_metrics({"loss": 1.5}, step=1)
    tracker.log_params({"a.b": 3})
    assert [m.value for m in tracker.client.get_metric_history(run_id, "loss")] == [1.5]
    assert not tracker.lost and tracker.dropped == 0

    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)
    tracker.log_metrics({"loss": 1.0}, step=2)  # must not raise
    tracker.set_tags({"x": "y"})
    assert tracker.lost and tracker.dropped == 2
    assert any("127.0.0.1:5987" in m and "training continues" in m for m in tracker.messages)


@pytest.mark.integration
def test_training_survives_tracking_server_loss(ray_session, shards_dir, mlflow_server, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking import find_run
    from odvla.platform.train import run_stage
    from train_helpers import PauseAfterFirstCheckpoint

    url, proc = mlflow_server
    hook = tmp_path / "hook"
    storage = tmp_path / "runs"
    cfg = load_config(model="tiny", stage="stage3", overrides=[
        f"data.shards={shards_dir}", "train.num_workers=1", "train.max_steps=4", "train.checkpoint_every=2",
        "data.batch_size=2", f"train.storage_path={storage}", "train.run_name=lost-server",
        f"tracking.tracking_uri={url}", "tracking.experiment=test-server", "tracking.log_checkpoint=false"])
    bg = Background(lambda: run_stage(cfg, register=False, worker_hooks=[PauseAfterFirstCheckpoint(hook)]))
    wait_for(lambda: (hook / "rank0-0.pid").exists(), 400, "the first checkpoint", bg)

    client = MlflowClient(url)
    run = find_run(client, client.get_experiment_by_name("test-server").experiment_id, f"{storage}/lost-server")
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert run.data.params["train.max_steps"] == "4" and run.data.tags["odvla.stage"] == "stage3"

    os.killpg(proc.pid, signal.SIGKILL)  # the tracking server goes away mid-run
    proc.wait(30)
    (hook / "go").touch()
    res = bg.result(600)

    assert res.metrics["global_step"] == 4 and res.metrics["final"] is True
    assert res.metrics["tracking_lost"] is True and res.metrics["tracking_dropped"] >= 2  # steps 3, 4 not logged
    assert (res.export_dir / "model.safetensors").exists()
    assert res.run_id == run.info.run_id
    assert any("failed" in m and "training continues" in m for m in res.tracking_messages)
    # no hang on the dead server: bg.result(600) bounds the run, and records after the first failure were dropped
    # without a network call (a tracker that retried every call would have as many failures as drops)
    assert 1 <= res.metrics["tracking_failures"] < res.metrics["tracking_dropped"]
