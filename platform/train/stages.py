"""The four training stages: what trains, on which data, with which losses, starting from what.

The numbers live in the stage presets (``platform/config/presets/stage_<name>.yaml``: ``stage.trainable``,
``stage.mixture``, ``stage.loss_weights``, ``stage.init_from``, ``train.lr``, ``train.warmup_steps``); this module
names the order, resolves ``init_from`` and builds each stage's config inside a pipeline.

    stage1    vision-language alignment: projectors only             init: random (or a folder / runs:/ URI)
    stage2    driving instruction tuning: projectors + LLM           init: auto = stage1's export
    stage2_5  agent-environment interaction: projectors + LLM (+ agent/motion heads by config)   auto = stage2's
    stage3    end-to-end planning: everything, visual encoder too    init: auto = the previous stage's export
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterable, Optional

from odvla.platform.config import Config, ConfigError, load_config, to_dict
from odvla.platform.config.schema import STAGES

PIPELINE_ORDER = STAGES
LOSS_TERMS = ("lm", "det", "map", "motion")


@dataclass
class InitSource:
    """Where a stage's weights come from: ``ref`` (folder / runs:/ / models:/ URI, None = random init) and the
    MLflow run id that produced it (for the ``odvla.init_from_run`` lineage tag; '' when unknown)."""

    ref: Optional[str]
    run_id: str = ""


def check_stage(cfg: Config) -> None:
    """Validate the stage section; errors name the key."""
    s = cfg.stage
    if s.name not in STAGES:
        raise ConfigError(f"stage.name: unknown stage {s.name!r} (known: {', '.join(STAGES)})")
    if s.trainable not in STAGES:
        raise ConfigError(f"stage.trainable: unknown trainable set {s.trainable!r} (known: {', '.join(STAGES)})")
    bad = [k for k in s.loss_weights if k not in LOSS_TERMS]
    if bad:
        raise ConfigError(f"stage.loss_weights: unknown loss term(s) {bad} (known: {', '.join(LOSS_TERMS)})")
    if not s.mixture or any(float(w) < 0 for w in s.mixture.values()) or sum(map(float, s.mixture.values())) <= 0:
        raise ConfigError(f"stage.mixture: need task weights >= 0 with a positive sum, got {s.mixture}")


def previous_stage(stage: str, stages: Iterable[str]) -> Optional[str]:
    """The stage before ``stage`` in this pipeline's list (None for the first)."""
    stages = list(stages)
    i = stages.index(stage)
    return stages[i - 1] if i > 0 else None


def resolve_init(cfg: Config, previous: Optional[InitSource] = None) -> InitSource:
    """``stage.init_from``: None -> random init; 'auto' -> ``previous`` (the pipeline's previous stage export) or
    random init when the stage runs first; a folder or URI -> itself."""
    ref = cfg.stage.init_from
    if ref in (None, "", "none"):
        return InitSource(None)
    if ref == "auto":
        if previous is None or previous.ref is None:
            print(f"[odvla.train] {cfg.stage.name}: init_from=auto and no previous stage in this pipeline: "
                  "random init (set stage.init_from to an export folder or runs:/<id>/export to continue one)")
            return InitSource(None)
        return previous
    from odvla.platform.tracking.lineage import run_id_of_export

    return InitSource(ref, run_id_of_export(ref))


def stage_config(base: Config, stage: str, files: Iterable[str] = (), overrides: Iterable[str] = ()) -> Config:
    """``base`` with the stage preset on top, then the user's ``files``/``overrides`` again so they win."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    cfg = load_config(base=to_dict(base), stage=stage, files=files, overrides=overrides)
    check_stage(cfg)
    return cfg


def default_run_name(cfg: Config) -> str:
    """``train.run_name`` or ``odvla-<stage>-<UTC time>``; rerun with the same name to resume from a checkpoint."""
    return cfg.train.run_name or f"odvla-{cfg.stage.name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
