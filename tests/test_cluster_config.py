"""cluster.yaml is a valid Ray cluster-launcher config, and the KubeRay manifest matches its shape."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_cluster_yaml_passes_rays_own_schema():
    import jsonschema
    from ray.autoscaler._private.util import prepare_config, validate_config

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    validate_config(prepare_config(cfg))  # raises jsonschema.ValidationError on a bad field
    gpu = cfg["available_node_types"]["gpu_p5"]
    assert gpu["resources"]["GPU"] == 8 and gpu["node_config"]["InstanceType"] == "p5.48xlarge"
    assert cfg["available_node_types"]["head"]["resources"]["GPU"] == 0
    assert any("constraints.txt" in c for c in cfg["setup_commands"])
    broken = dict(cfg, available_node_types={**cfg["available_node_types"], "gpu_p5": {**gpu, "bogus": 1}})
    with pytest.raises(jsonschema.ValidationError):
        validate_config(prepare_config(broken))


def test_kuberay_manifest_has_h100_group_and_shared_storage():
    doc = yaml.safe_load((ROOT / "kuberay.yaml").read_text())
    assert doc["kind"] == "RayCluster" and doc["apiVersion"] == "ray.io/v1"
    groups = {g["groupName"]: g for g in doc["spec"]["workerGroupSpecs"]}
    gpu = groups["gpu-h100"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == "8"
    assert any(v["mountPath"] == "/mnt/shared" for v in gpu["volumeMounts"])
    assert doc["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"


def test_cluster_setup_commands_are_bash_and_pin_the_mlflow_address(tmp_path):
    """The runtime settings land in ~/.bashrc with the head's address resolved when the command runs (the launcher
    sources ~/.bashrc before it exports RAY_HEAD_IP, so a literal $RAY_HEAD_IP there would be empty)."""
    import os
    import subprocess

    cfg = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    for key in ("setup_commands", "head_setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in cfg[key]:
            subprocess.run(["bash", "-n", "-c", cmd], check=True)
    env_cmd = next(c for c in cfg["setup_commands"] if "MLFLOW_TRACKING_URI" in c)
    env = {**os.environ, "HOME": str(tmp_path), "RAY_HEAD_IP": "10.1.2.3"}
    for _ in range(2):  # idempotent: a second `ray up` does not append twice
        subprocess.run(["bash", "-c", env_cmd], check=True, env=env)
    rc = (tmp_path / ".bashrc").read_text()
    assert rc.count("export MLFLOW_TRACKING_URI=http://10.1.2.3:5000\n") == 1
    assert "ODVLA_STORAGE_PATH=/mnt/shared" in rc
