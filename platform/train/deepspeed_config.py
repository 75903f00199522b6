"""DeepSpeed config dict from the job config: ZeRO stage, bf16, micro-batch, accumulation, clipping, AdamW and a
warm-up + cosine schedule. The same dict serves GPUs (NCCL) and the CPU (gloo; DeepSpeed's CPU accelerator).

Batch arithmetic (DeepSpeed's invariant): ``train_batch_size = micro_batch * grad_accum * world_size`` where the
micro-batch is ``data.batch_size`` rows per worker per forward.
"""
from __future__ import annotations

import math


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float = 0.1) -> float:
    """Learning-rate multiplier of optimiser step ``step`` (0-based): linear warm-up over ``warmup_steps`` that is
    already non-zero at step 0 (``(step + 1) / warmup``), then cosine decay to ``min_ratio`` at ``total_steps``.

    DeepSpeed's own ``WarmupCosineLR`` gives the first two optimiser steps a learning rate of 0, so a short stage
    (``train.max_steps=2``) would not change a single weight; this schedule runs as a client scheduler instead.
    """
    total = max(int(total_steps), 1)
    warmup = min(max(int(warmup_steps), 0), total)
    if step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    progress = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, train_cfg, total_steps: int):
    """``torch.optim.lr_scheduler.LambdaLR`` with ``lr_factor``; DeepSpeed steps it once per optimiser step and
    saves its state with every checkpoint."""
    import torch

    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, train_cfg.warmup_steps))


def build_ds_config(train_cfg, micro_batch: int, world_size: int) -> dict:
    """DeepSpeed config dict from ``train_cfg`` (``TrainConfig``) and ``micro_batch`` (``data.batch_size``, rows per
    worker per forward); the schedule is ``build_scheduler`` (a client scheduler), not part of the dict."""
    t = train_cfg
    if t.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage: expected 0, 1, 2 or 3, got {t.zero_stage}")
    if micro_batch < 1 or t.grad_accum < 1:
        raise ValueError(f"data.batch_size ({micro_batch}) and train.grad_accum ({t.grad_accum}) must be >= 1")
    zero: dict = {"stage": t.zero_stage}
    if t.zero_stage >= 2:
        zero.update({"overlap_comm": bool(t.use_gpu), "contiguous_gradients": True,
                     "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7})
    if t.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True})
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": micro_batch * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip if t.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(t.bf16)},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: works on CPU and GPU without compiling DeepSpeed's fused/CPU Adam ops.
            "params": {"lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": t.weight_decay,
                       "torch_adam": True},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
