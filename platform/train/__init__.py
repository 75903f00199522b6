"""Four-stage training on Ray Train V2 + DeepSpeed, tracked in MLflow.

    from odvla.platform.train import run_stage, run_pipeline

Imports are lazy so that importing a submodule does not pull in Ray Train. The model export (the hand-over
between stages, what eval and serve load) lives in ``odvla.platform.export``, outside training.
"""
from __future__ import annotations

_EXPORTS = {
    "run_stage": "odvla.platform.train.trainer",
    "StageResult": "odvla.platform.train.trainer",
    "run_pipeline": "odvla.platform.train.pipeline",
    "PipelineResult": "odvla.platform.train.pipeline",
    "stage_config": "odvla.platform.train.stages",
    "InitSource": "odvla.platform.train.stages",
    "train_func": "odvla.platform.train.loop",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'odvla.platform.train' has no attribute {name!r}")
