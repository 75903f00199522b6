"""Mixed precision around DeepSpeed's module cast.

A bf16 (or fp16) DeepSpeed engine casts the module's parameters to 16 bits and, since DeepSpeed 0.18, keeps its
buffers in float32 unless ``data_types.buffer_dtype`` is set (which would also round Qwen2's rotary ``inv_freq``).
The ResNet's BatchNorm layers then hold 16-bit weights with float32 running statistics, which ``F.batch_norm``
refuses ("expected scalar type BFloat16 but found Float"): every bf16 run of the real presets failed in its first
forward. ``match_norm_buffers`` gives each BatchNorm's running statistics its weights' dtype, after the cast.
"""
from __future__ import annotations

import torch
from torch import nn


def match_norm_buffers(module: nn.Module) -> int:
    """Cast the floating buffers (``running_mean``, ``running_var``) of every BatchNorm in ``module`` to the dtype
    of its weight, in place. Returns how many buffers were cast (0 for a float32 engine)."""
    cast = 0
    for m in module.modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or m.weight is None:
            continue
        dtype = m.weight.dtype
        for name in ("running_mean", "running_var"):
            buf = getattr(m, name, None)
            if isinstance(buf, torch.Tensor) and buf.is_floating_point() and buf.dtype != dtype:
                buf.data = buf.data.to(dtype)
                cast += 1
    return cast
