"""A stage is data: a fifth stage defined in one YAML file (not a preset, unknown to the code) trains for 2 steps on
Ray Train + DeepSpeed, trains exactly the parts its ``stage.trainable`` names, and takes its place in the
curriculum by ``stage.order``."""
from __future__ import annotations

import pytest
import torch

from odvla.platform.config import ConfigError, check_pipeline_order, load_config, stage_names

FIFTH = """\
# A probe stage between interaction and planning: projectors and the agent heads only.
stage: {name: stage2_7_probe, order: 30, trainable: [projectors, agent_heads], registers_model: false,
        demo_steps: 2, init_from: null, mixture: {planning: 1.0},
        loss_weights: {lm: 1.0, det: 0.5, map: 0.0, motion: 0.2}}
train: {lr: 1.0e-2, warmup_steps: 1}
"""


def test_stage_list_comes_from_the_presets(tmp_path):
    assert stage_names() == ("stage1", "stage2", "stage2_5", "stage3")
    f = tmp_path / "stage_probe.yaml"
    f.write_text(FIFTH)
    assert check_pipeline_order(["stage1", "stage2_5", str(f), "stage3"])
    with pytest.raises(ConfigError, match="pipeline order"):
        check_pipeline_order(["stage1", "stage3", str(f)])
    bad = tmp_path / "bad.yaml"
    bad.write_text(FIFTH.replace("agent_heads", "bev_magic"))
    from odvla.platform.train.stages import check_stage

    with pytest.raises(ConfigError, match="stage.trainable.*bev_magic"):
        check_stage(load_config(stage=str(bad)).stage)
    with pytest.raises(ConfigError, match="stage file .*missing.yaml does not exist"):
        load_config(stage=str(tmp_path / "missing.yaml"))


@pytest.mark.integration
def test_a_fifth_stage_from_one_yaml_trains(ray_session, shards_dir, mlflow_sqlite, tmp_path):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.train import run_stage

    f = tmp_path / "stage_probe.yaml"
    f.write_text(FIFTH)
    cfg = load_config(model="tiny", stage=str(f), overrides=[
        f"data.shards={shards_dir}", f"train.storage_path={tmp_path / 'runs'}", "train.run_name=probe",
        "train.num_workers=1", "train.checkpoint_every=0", "train.max_steps=2", "data.batch_size=2",
        f"tracking.tracking_uri={mlflow_sqlite}", "tracking.experiment=test-stage-data",
        "tracking.log_checkpoint=false"])
    res = run_stage(cfg)
    assert res.stage == "stage2_7_probe" and res.metrics["global_step"] == 2
    assert res.registered_version is None  # registers_model: false
    run = MlflowClient(mlflow_sqlite).get_run(res.run_id)
    assert run.data.tags["odvla.stage"] == "stage2_7_probe"
    assert run.data.params["stage.trainable"] == "['projectors', 'agent_heads']"

    torch.manual_seed(cfg.train.seed)  # the training function's random init, rebuilt here
    init = OpenDriveVLA(cfg.model).state_dict()
    trained = load_file(str(res.export_dir / "model.safetensors"))
    changed = {k for k, v in trained.items() if k in init and not torch.equal(v.float(), init[k].float())}
    assert any(k.startswith("projectors.") for k in changed)
    assert not any(k.startswith("llm.") for k in changed)  # frozen: not a trainable part of this stage
    assert not any(k.startswith("vision.backbone.") for k in changed)
