"""A new user's job outlives its Ray session: ``ray job submit --working-dir . -- python jobs/stage3.py`` on a local
``ray start --head`` cluster, without ``MLFLOW_TRACKING_URI`` and without ``train.storage_path``, must not log into
Ray's temporary copy of the working directory. After the cluster is stopped (``ray start --block`` ends the
processes it started, as ``ray stop`` does), the MLflow run, its registered model and the checkpoints are still on
disk, under ``$ODVLA_HOME`` (here a temp folder; ``~/.odvla`` by default)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from train_helpers import wait_for_job_api

REPO = Path(__file__).resolve().parents[1]
GCS_PORT, DASHBOARD_PORT = 6401, 8301


def _ray(*args, env, timeout=900):
    return subprocess.run([str(Path(sys.executable).with_name("ray")), *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_job_run_and_registered_model_survive_ray_stop(shards_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    home = tmp_path / "odvla-home"
    temp = Path(tempfile.mkdtemp(prefix="odvla-ray-", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "ODVLA_STORAGE_PATH")}
    env.update({"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled", "ODVLA_HOME": str(home),
                "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "TOKENIZERS_PARALLELISM": "false",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    log = open(temp / "head.log", "w")
    head = subprocess.Popen(
        [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block", "--port", str(GCS_PORT),
         "--dashboard-port", str(DASHBOARD_PORT), "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1",
         "--temp-dir", str(temp), "--num-cpus", "3", "--include-dashboard", "true", "--disable-usage-stats",
         "--dashboard-agent-listen-port", "52401", "--dashboard-agent-grpc-port", "52402",
         "--runtime-env-agent-port", "52403", "--metrics-export-port", "52404", "--ray-client-server-port", "6402"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    try:
        wait_for_job_api(head, temp / "head.log", address)
        deadline = time.monotonic() + 180
        while True:
            out = _ray("job", "submit", "--address", address, "--working-dir", ".", "--",
                       "python", "jobs/stage3.py", "--model", "tiny", "--set", f"data.shards={shards_dir}",
                       "--set", "train.max_steps=2", "--set", "train.num_workers=1", "--set", "data.batch_size=2",
                       "--set", "train.run_name=durable", "--set", "tracking.log_checkpoint=false", env=env)
            text = out.stdout + out.stderr
            if "No available agent" not in text or time.monotonic() > deadline:
                break
            time.sleep(3)
        assert out.returncode == 0, text[-4000:]
        assert "WARNING: train.storage_path='runs' is relative" in text and str(home / "runs") in text, text[-4000:]
        job_copy = re.search(r"\((/\S*runtime_resources/working_dir_files/[^)\s]+)\)", text)
        assert job_copy, text[-4000:]
    finally:
        if head.poll() is None:
            head.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started, like `ray stop`
            try:
                head.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(head.pid, signal.SIGKILL)
        log.close()

    copy = Path(job_copy.group(1))  # Ray's copy of the working directory: nothing of the run went there
    assert not (copy / "mlruns").exists() and not (copy / "runs").exists()
    db = home / "mlruns" / "mlflow.db"
    assert db.exists() and (home / "runs" / "durable").is_dir()
    assert any((home / "runs" / "durable" / "sample_log").glob("*.jsonl"))
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("opendrivevla").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [h.step for h in client.get_metric_history(runs[0].info.run_id, "loss")] == [1, 2]
    version = client.get_model_version("odvla-planner", "1")
    assert version.run_id == runs[0].info.run_id
    from odvla.platform.export import load_export

    model, cfg = load_export("models:/odvla-planner/1", tracking_uri=f"sqlite:///{db}")
    assert cfg.stage.name == "stage3" and sum(p.numel() for p in model.parameters()) > 0
    print(f"\n[durable] job run {runs[0].info.run_id} and models:/odvla-planner/1 kept in {db} after the cluster "
          f"stopped", flush=True)
