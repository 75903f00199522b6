"""DeepSpeed config dict from the job config: ZeRO stage, bf16, micro-batch, accumulation, clipping, AdamW and a
warm-up + cosine schedule. The same dict serves GPUs (NCCL) and the CPU (gloo; DeepSpeed's CPU accelerator).

Batch arithmetic (DeepSpeed's invariant): ``train_batch_size = micro_batch * grad_accum * world_size`` where the
micro-batch is ``data.batch_size`` rows per worker per forward.
"""
from __future__ import annotations

from odvla.platform.config import Config


def build_ds_config(cfg: Config, world_size: int, total_steps: int) -> dict:
    """``total_steps``: optimiser steps of the stage (for the cosine decay); warm-up from ``train.warmup_steps``."""
    t = cfg.train
    if t.zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"train.zero_stage: expected 0, 1, 2 or 3, got {t.zero_stage}")
    if cfg.data.batch_size < 1 or t.grad_accum < 1:
        raise ValueError(f"data.batch_size ({cfg.data.batch_size}) and train.grad_accum ({t.grad_accum}) must be >= 1")
    total = max(int(total_steps), 1)
    warmup = min(max(int(t.warmup_steps), 1), total)  # DeepSpeed requires >= 1
    zero: dict = {"stage": t.zero_stage}
    if t.zero_stage >= 2:
        zero.update({"overlap_comm": bool(t.use_gpu), "contiguous_gradients": True,
                     "reduce_bucket_size": 5e7, "allgather_bucket_size": 5e7})
    if t.zero_stage == 3:
        zero.update({"stage3_gather_16bit_weights_on_model_save": True})
    return {
        "train_micro_batch_size_per_gpu": cfg.data.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": cfg.data.batch_size * t.grad_accum * world_size,
        "gradient_clipping": t.grad_clip if t.grad_clip > 0 else 0.0,
        "zero_optimization": zero,
        "bf16": {"enabled": bool(t.bf16)},
        "optimizer": {
            "type": "AdamW",
            # torch's AdamW: works on CPU and GPU without compiling DeepSpeed's fused/CPU Adam ops.
            "params": {"lr": t.lr, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": t.weight_decay,
                       "torch_adam": True},
        },
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {"total_num_steps": total, "warmup_num_steps": warmup, "warmup_min_ratio": 0.0,
                       "cos_min_ratio": 0.1, "warmup_type": "linear"},
        },
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
