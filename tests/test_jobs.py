"""The user path: a real local Ray cluster (``ray start --head``), ``ray job submit --working-dir . -- python
jobs/stage3.py <tiny overrides>``, then the job's status and its MLflow run (metrics, checkpoint artifact)."""
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

REPO = Path(__file__).resolve().parents[1]
GCS_PORT, DASHBOARD_PORT = 6391, 8291


def _ray(*args, env=None, timeout=300, check=True):
    ray_bin = str(Path(sys.executable).with_name("ray"))
    return subprocess.run([ray_bin, *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          check=check)


@pytest.fixture(scope="module")
def local_cluster():
    """``ray start --head --block`` on our own ports and temp dir; stopped by signalling that process group only."""
    temp = Path(tempfile.mkdtemp(prefix="odvla-ray-", dir="/tmp"))
    # Token auth off for this throwaway loopback cluster: the default token lives in ~/.ray, shared with every other
    # Ray on the machine, so a token rewritten there would lock this test out of its own cluster.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled",
           # the job's `python` is this venv's, as for a user who activated it before `ray start`
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    ray_bin = str(Path(sys.executable).with_name("ray"))
    log = open(temp / "head.log", "w")
    proc = subprocess.Popen(
        [ray_bin, "start", "--head", "--block", "--port", str(GCS_PORT), "--dashboard-port", str(DASHBOARD_PORT),
         "--dashboard-host", "127.0.0.1", "--node-ip-address", "127.0.0.1", "--temp-dir", str(temp),
         "--num-cpus", "4", "--include-dashboard", "true", "--disable-usage-stats",
         # every auxiliary port of our own: other Ray instances on this machine hold the defaults (52365, 10001, ...)
         "--dashboard-agent-listen-port", "52391", "--dashboard-agent-grpc-port", "52392",
         "--runtime-env-agent-port", "52393", "--metrics-export-port", "52394", "--ray-client-server-port", "6392"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=REPO)
    address = f"http://127.0.0.1:{DASHBOARD_PORT}"
    try:
        from train_helpers import wait_for_job_api

        wait_for_job_api(proc, temp / "head.log", address)
        yield address, env
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # `ray start --block` stops the processes it started
            try:
                proc.wait(15)  # then the whole group: a graceful stop took 30 s of the suite
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        log.close()


@pytest.mark.integration
def test_ray_job_submit_stage3(local_cluster, shards_dir, tmp_path):
    from mlflow.tracking import MlflowClient

    from odvla.platform.tracking import find_run

    address, env = local_cluster
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    runtime_env = {"env_vars": {"MLFLOW_TRACKING_URI": uri, "RAY_USAGE_STATS_ENABLED": "0",
                                "MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING": "false", "TOKENIZERS_PARALLELISM": "false"}}
    storage = tmp_path / "runs"
    deadline = time.monotonic() + 180
    while True:
        out = _ray("job", "submit", "--address", address, "--working-dir", ".",
                   "--runtime-env-json", json.dumps(runtime_env), "--",
                   "python", "jobs/stage3.py", "--model", "tiny", "--set", f"data.shards={shards_dir}",
                   "--set", "train.max_steps=2", "--set", "train.num_workers=1", "--set", "data.batch_size=2",
                   "--set", f"train.storage_path={storage}", "--set", "train.run_name=job-stage3",
                   "--set", "tracking.experiment=test-job", env=env, timeout=900, check=False)
        text = out.stdout + out.stderr
        # a fresh head answers the job API before its job agent is up: submit again until it takes the job
        if "No available agent" not in text or time.monotonic() > deadline:
            break
        time.sleep(3)
    match = re.search(r"(raysubmit_\w+)", text)
    assert match, text[-3000:]
    status = _ray("job", "status", "--address", address, match.group(1), env=env, check=False)
    said = status.stdout + status.stderr
    assert f"Job '{match.group(1)}' succeeded" in said or "SUCCEEDED" in said, (said + text)[-4000:]
    assert out.returncode == 0
    assert "export:" in text  # the job's own summary line

    client = MlflowClient(uri)
    run = find_run(client, client.get_experiment_by_name("test-job").experiment_id, f"{storage}/job-stage3")
    assert run is not None and run.info.status == "FINISHED"
    assert [h.step for h in client.get_metric_history(run.info.run_id, "loss")] == [1, 2]
    assert "checkpoint" in {a.path for a in client.list_artifacts(run.info.run_id)}
    assert any(a.path.endswith("train_state.json")
               for a in client.list_artifacts(run.info.run_id, "checkpoint"))
