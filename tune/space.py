"""Search spaces of the sweeps: the paper's stage-subset ablation crossed with model size, and LR HPO.

A trial's parameters are plain values (``stages`` is a '+'-joined string such as ``'stage1+stage3'`` so that it
prints in tables and survives Tune's flattening); ``trial_overrides`` turns them into config overrides.
"""
from __future__ import annotations

from ray import tune

from odvla.platform.config import Config, ConfigError
from odvla.platform.config.schema import MODEL_PRESETS, STAGES

PAPER_ABLATION = [["stage3"], ["stage1", "stage3"], ["stage1", "stage2", "stage3"],
                  ["stage1", "stage2", "stage2_5", "stage3"]]
"""Stage subsets of the OpenDriveVLA ablation (planning only; +alignment; +instruction tuning; +interaction)."""

# Resources one trial's training workers need, per model size: (workers, GPUs per worker).
# 0.5b fits one H100 with ZeRO-1; 3b wants ZeRO-2 over 4; 7b ZeRO-3 over a full 8-GPU node.
TRIAL_GPUS = {"tiny": (1, 0), "0.5b": (1, 1), "3b": (4, 1), "7b": (8, 1)}


def stage_key(stages: list[str]) -> str:
    bad = [s for s in stages if s not in STAGES]
    if bad or not stages:
        raise ConfigError(f"sweep.stage_sets: unknown stage(s) {bad or stages} (known: {', '.join(STAGES)})")
    ordered = [s for s in STAGES if s in stages]
    if ordered != list(stages):
        raise ConfigError(f"sweep.stage_sets: stages {stages} must be in pipeline order {STAGES}")
    return "+".join(stages)


def build_param_space(cfg: Config) -> dict:
    """Grid over stage sets x model sizes; learning rate from ``sweep.lrs`` (grid) or log-uniform for HPO."""
    sw = cfg.sweep
    for size in sw.model_sizes:
        if size not in MODEL_PRESETS:
            raise ConfigError(f"sweep.model_sizes: unknown size {size!r} (known: {', '.join(MODEL_PRESETS)})")
    space = {
        "stages": tune.grid_search([stage_key(s) for s in sw.stage_sets]),
        "model_size": tune.grid_search(list(sw.model_sizes)),
    }
    if sw.lrs:
        space["lr"] = tune.grid_search([float(x) for x in sw.lrs])
    return space


def build_hpo_space(cfg: Config) -> dict:
    """Learning-rate HPO for one stage set and size: the searcher samples ``lr`` log-uniformly."""
    sw = cfg.sweep
    return {
        "stages": stage_key(sw.stage_sets[0]),
        "model_size": sw.model_sizes[0],
        "lr": tune.loguniform(sw.lr_min, sw.lr_max),
    }


def trial_overrides(params: dict) -> list[str]:
    out = [f"model.preset={params['model_size']}"]
    if "lr" in params:
        out.append(f"train.lr={params['lr']}")
    return out


def trial_resources(size: str, use_gpu: bool) -> tuple[int, int]:
    """(num_workers, gpus_per_worker) for a trial of this model size."""
    workers, gpus = TRIAL_GPUS[size]
    return (workers, gpus) if use_gpu else (1, 0)
