"""bf16 DeepSpeed engines: DeepSpeed casts the parameters to bf16 and keeps the buffers in float32, so a frozen
(eval-mode) ResNet's BatchNorm got bf16 weights with float32 running statistics and the first forward of every bf16
run failed. After ``match_norm_buffers`` the real engine runs the visual encoder in bf16, and Qwen2's rotary
``inv_freq`` buffer is left in float32."""
from __future__ import annotations

import os

import pytest
import torch

from odvla.platform.config import load_config


@pytest.fixture(scope="module")
def one_rank_group():
    """A 1-rank gloo process group for in-process DeepSpeed engines, shared by the module (DeepSpeed keeps the
    group it first saw), destroyed afterwards with DeepSpeed's handle on it."""
    import socket

    import deepspeed.comm.comm as ds_comm
    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()
    ds_comm.cdb = None
    for k in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        os.environ.pop(k, None)


def test_bf16_engine_runs_the_frozen_backbone(one_rank_group):
    import deepspeed

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.train.deepspeed_config import build_ds_config
    from odvla.platform.train.mixed_precision import match_norm_buffers

    cfg = load_config(model="tiny", stage="stage1", overrides=["train.bf16=true", "train.zero_stage=2"])
    torch.manual_seed(0)
    model = OpenDriveVLA(cfg.model)
    model.set_trainable(cfg.stage.trainable)  # stage 1: the visual encoder is frozen, in eval mode
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params,
                                      config=build_ds_config(cfg.train, 1, 1))
    backbone = engine.module.vision.backbone
    assert not backbone.training
    bn = backbone.stem[1]
    assert bn.weight.dtype == torch.bfloat16 and bn.running_mean.dtype == torch.float32  # DeepSpeed's cast
    images = torch.rand(6, 3, cfg.model.vision.image_height, cfg.model.vision.image_width, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match="BFloat16|Float"):
        backbone(images)  # what every bf16 run hit before

    n_bn = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in engine.module.modules())
    assert match_norm_buffers(engine.module) == 2 * n_bn > 0
    assert bn.running_var.dtype == torch.bfloat16
    with torch.no_grad():
        feats = backbone(images)
    assert all(f.dtype == torch.bfloat16 and torch.isfinite(f.float()).all() for f in feats)
    inv_freq = [b for n, b in engine.module.named_buffers() if n.endswith("inv_freq")]
    assert inv_freq and all(b.dtype == torch.float32 for b in inv_freq)  # not rounded to 16 bits
    assert match_norm_buffers(engine.module) == 0  # idempotent


def test_bf16_engine_llm_is_built_in_bf16(tmp_path):
    """With ``train.bf16`` the LLM is built in bf16 (from an export too): it never exists in float32 on a rank."""
    from odvla.platform.export import save_export
    from odvla.platform.train.deepspeed_config import build_ds_config
    from odvla.platform.train.partitioned_init import build_model

    cfg = load_config(model="tiny", overrides=["train.bf16=true", "train.zero_stage=2"])
    ds = build_ds_config(cfg.train, 1, 1)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds)
    assert {p.dtype for p in model.llm.parameters()} == {torch.bfloat16}
    assert next(model.vision.parameters()).dtype == torch.float32  # DeepSpeed casts the rest
    assert torch.get_default_dtype() == torch.float32  # restored after the build
    out = save_export(model, cfg, tmp_path / "export")
    again = build_model(cfg.model, ds, init_from=out)
    assert {p.dtype for p in again.llm.parameters()} == {torch.bfloat16}
    a, b = model.llm.state_dict(), again.llm.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    fp32 = build_model(cfg.model, build_ds_config(load_config(model="tiny").train, 1, 1))
    assert {p.dtype for p in fp32.llm.parameters()} == {torch.float32}


def test_bf16_zero3_engine_builds_and_runs(one_rank_group):
    """ZeRO-3 + bf16: DeepSpeed casts no parameter of a partitioned-init model, so the whole-built vision encoder
    and projectors must join the LLM's bf16 before ``deepspeed.initialize`` (it asserted one dtype per group)."""
    import deepspeed

    from odvla.platform.bench.bench_model import synthetic_batch
    from odvla.platform.train.deepspeed_config import build_ds_config
    from odvla.platform.train.mixed_precision import match_norm_buffers
    from odvla.platform.train.partitioned_init import build_model

    cfg = load_config(model="tiny", stage="stage3", overrides=["train.bf16=true", "train.zero_stage=3"])
    ds = build_ds_config(cfg.train, 1, 1)
    torch.manual_seed(0)
    model = build_model(cfg.model, ds)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    model.set_trainable(cfg.stage.trainable)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=[p for p in model.parameters()
                                                                     if p.requires_grad], config=ds)
    match_norm_buffers(engine.module)
    from odvla.platform.train.loop import _total_loss

    loss = _total_loss(engine(synthetic_batch(cfg.model.vision, B=1)), cfg.stage.loss_weights)
    engine.backward(loss)
    engine.step()  # a bf16 ZeRO-3 optimiser step on the whole model
    assert torch.isfinite(loss.float()) and engine.global_steps == 1
