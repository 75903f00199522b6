"""ZeRO-3 builds the model partitioned: a 7b-width OpenDriveVLA (Qwen2.5-7B's hidden 3584 / MLP 18944 / 28 heads,
one decoder layer, the small BPE vocabulary and small images so two CPU workers fit beside the rest of the machine)
on 2 Ray Train workers holds about half its parameter elements on each rank right after it is built, and one
optimiser step from the same initial weights gives the same consolidated export under ZeRO-3 as under ZeRO-1.
Bad ZeRO-3 settings are refused naming the key."""
from __future__ import annotations

import pytest
import torch

from odvla.platform.config import load_config

SEVEN_B_WIDTH = [
    "model.llm.num_hidden_layers=1", "model.llm.tokenizer=bpe", "model.llm.vocab_size=0", "model.dtype=float32",
    "model.gradient_checkpointing=false",
    "model.vision.backbone=resnet18", "model.vision.image_height=64", "model.vision.image_width=112",
    "model.vision.bev_resolution=3.2", "model.vision.bev_channels=32", "model.vision.fpn_channels=32",
    "model.vision.num_scene_queries=4", "model.vision.num_agent_queries=16", "model.vision.num_agent_tokens=4",
    "model.vision.num_map_queries=8", "model.vision.map_points=10", "model.vision.decoder_layers=1",
    "model.vision.decoder_heads=4"]
"""The 7b preset's LLM width with one layer and a small vision encoder: ~0.29 B parameters (1.2 GB in float32)."""


def _cfg(overrides=()):
    return load_config(model="7b", stage="stage3", overrides=[*SEVEN_B_WIDTH, *overrides])


def test_zero3_config_errors_name_the_key():
    from odvla.platform.train.deepspeed_config import build_ds_config
    from odvla.platform.train.partitioned_init import Zero3ConfigError, build_model, check_zero3

    cfg = load_config(model="tiny", overrides=["train.zero_stage=3"])
    ds = build_ds_config(cfg.train, 1, 2)
    assert not torch.distributed.is_initialized()
    with pytest.raises(Zero3ConfigError, match=r"train\.zero_stage=3: .*process group"):
        build_model(cfg.model, ds)  # outside the train workers: named, not DeepSpeed's batch-size assertion
    with pytest.raises(Zero3ConfigError, match=r"train\.zero_stage"):
        check_zero3(build_ds_config(load_config(model="tiny").train, 1, 2))
    bad = dict(ds, zero_optimization={"stage": 3})
    with pytest.raises(Zero3ConfigError, match="stage3_gather_16bit_weights_on_model_save"):
        check_zero3(bad)


def test_local_parameter_counts_of_a_whole_model():
    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.train.partitioned_init import local_parameter_counts

    model = OpenDriveVLA(load_config(model="tiny").model)
    unique = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert local_parameter_counts(model) == (unique, unique)


@pytest.mark.integration
@pytest.mark.slow
def test_zero3_partitions_the_7b_width_model_and_exports_what_zero1_does(ray_session, shards_dir, tmp_path,
                                                                           own_mlflow_store):
    from mlflow.tracking import MlflowClient
    from safetensors.torch import load_file

    mlflow_sqlite = own_mlflow_store  # the two ~1 GB exports it logs go with tmp_path

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.export import WEIGHTS, save_export
    from odvla.platform.train import run_stage

    torch.manual_seed(0)
    init_cfg = _cfg()
    model = OpenDriveVLA(init_cfg.model)
    init_dir = save_export(model, init_cfg, tmp_path / "init")
    llm_params = sum(p.numel() for p in model.llm.parameters())
    del model
    initial = load_file(str(init_dir / WEIGHTS))

    results = {}
    for zero in (1, 3):
        cfg = _cfg([f"data.shards={shards_dir}", "train.num_workers=2", "train.max_steps=1", "data.batch_size=1",
                    "train.grad_accum=1", "train.checkpoint_every=0", f"train.zero_stage={zero}",
                    "train.use_gpu=false", "train.bf16=false", "train.lr=1e-4", "train.warmup_steps=0",
                    "data.shuffle_buffer=0", "stage.trainable=[projectors,llm]", f"stage.init_from={init_dir}",
                    f"train.storage_path={tmp_path / 'runs'}", f"train.run_name=zero{zero}",
                    f"tracking.tracking_uri={mlflow_sqlite}", "tracking.experiment=test-zero3-init",
                    "tracking.log_checkpoint=false", "tracking.log_system_metrics=false"])
        results[zero] = run_stage(cfg, register=False)

    client = MlflowClient(mlflow_sqlite)
    for zero, res in results.items():
        assert res.metrics["global_step"] == 1
        params = client.get_run(res.run_id).data.params
        total = int(params["params_total"])
        local = [int(params[f"params_local_rank{r}"]) for r in range(2)]
        assert total > 250_000_000  # the 7b-width model, not a tiny one
        waits = [m.value for m in client.get_metric_history(res.run_id, "data_wait_frac")]
        assert len(waits) == 1 and 0.0 <= waits[0] <= 1.0  # every run logs how long its step waited for data
        if zero == 1:
            assert local == [total, total]
        else:  # each rank built half the LLM (0.24 B here); the vision encoder and projectors (0.05 B) whole
            rest = total - llm_params
            assert all(abs(n - (rest + llm_params / 2)) < 1e-4 * total for n in local), (local, total, llm_params)

    from odvla.platform.train.sample_log import LOG_DIR, read_sample_log

    logs = [read_sample_log(str(tmp_path / "runs" / f"zero{z}" / LOG_DIR)) for z in (1, 3)]
    assert logs[0] == logs[1] and logs[0]  # the same samples on the same ranks
    one = load_file(str(results[1].export_dir / WEIGHTS))
    three = load_file(str(results[3].export_dir / WEIGHTS))
    assert sorted(one) == sorted(three) == sorted(initial)
    big = "llm.model.layers.0.mlp.gate_proj.weight"
    assert three[big].shape == (18944, 3584)  # consolidated from both ranks' halves
    moved = [k for k in one if k.startswith(("llm.", "projectors.")) and not torch.equal(one[k], initial[k])]
    assert big in moved and len(moved) > 10  # the step trained the LLM and projectors
    # one AdamW step moves a weight by about lr (1e-4) whatever the gradient's size, so a gradient that differed
    # in sign or was missing would differ by 1e-4 to 2e-4; what differs is float noise (measured: at most 2.4e-6)
    for k in one:
        torch.testing.assert_close(three[k], one[k], rtol=0, atol=1e-5, msg=lambda m, k=k: f"{k}: {m}")
    for k in one:  # what did not train stays the initial weights under both
        if not k.startswith(("llm.", "projectors.")) and one[k].is_floating_point() and "running" not in k:
            assert torch.equal(three[k], initial[k]), k
