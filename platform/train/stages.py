"""Training stages: what trains, on which data, with which losses, starting from what.

A stage is data: its preset (``platform/config/presets/stage_<name>.yaml``: ``stage.order``, ``stage.trainable``,
``stage.mixture``, ``stage.loss_weights``, ``stage.init_from``, ``stage.registers_model``, ``train.lr``, ...) or any
YAML file with a ``stage:`` section. This module validates a stage, resolves ``init_from`` and builds each stage's
config inside a pipeline. The shipped curriculum:

    stage1    vision-language alignment: projectors only             init: random (or a folder / runs:/ URI)
    stage2    driving instruction tuning: projectors + LLM           init: auto = stage1's export
    stage2_5  agent-environment interaction: projectors + LLM (+ agent_heads by config)   auto = stage2's
    stage3    end-to-end planning: everything, visual encoder too    init: auto = the previous stage's export
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterable, Optional

from odvla.model.vla import LOSS_KEYS, MODEL_PARTS
from odvla.platform.config import Config, ConfigError, load_config, to_dict

log = logging.getLogger(__name__)


@dataclass
class InitSource:
    """Where a stage's weights come from: ``ref`` (folder / runs:/ / models:/ URI, None = random init) and the
    MLflow run id that produced it (for the ``odvla.init_from_run`` lineage tag; '' when unknown)."""

    ref: Optional[str]
    run_id: str = ""


def check_stage(s) -> None:
    """Validate a stage section (``StageConfig``); errors name the key."""
    if not s.name or not all(c.isalnum() or c in "_-." for c in s.name):
        raise ConfigError(f"stage.name: {s.name!r} must be a non-empty name of letters, digits, '_', '-', '.'")
    bad = [p for p in s.trainable if p not in MODEL_PARTS]
    if bad or not s.trainable:
        raise ConfigError(f"stage.trainable: unknown or no model part(s) {bad or s.trainable} "
                          f"(known: {', '.join(MODEL_PARTS)})")
    bad = [k for k in s.loss_weights if k not in LOSS_KEYS]
    if bad:
        raise ConfigError(f"stage.loss_weights: unknown loss term(s) {bad} (known: {', '.join(LOSS_KEYS)})")
    if not s.mixture or any(float(w) < 0 for w in s.mixture.values()) or sum(map(float, s.mixture.values())) <= 0:
        raise ConfigError(f"stage.mixture: need task weights >= 0 with a positive sum, got {s.mixture}")


def previous_stage(stage: str, stages: Iterable[str]) -> Optional[str]:
    """The stage before ``stage`` in this pipeline's list (None for the first)."""
    stages = list(stages)
    i = stages.index(stage)
    return stages[i - 1] if i > 0 else None


def resolve_init(stage_cfg, previous: Optional[InitSource] = None) -> InitSource:
    """``stage.init_from``: None -> random init; 'auto' -> ``previous`` (the pipeline's previous stage export) or
    random init when the stage runs first; a folder or URI -> itself."""
    ref = stage_cfg.init_from
    if ref in (None, "", "none"):
        return InitSource(None)
    if ref == "auto":
        if previous is None or previous.ref is None:
            log.info("%s: init_from=auto and no previous stage in this pipeline: random init (set stage.init_from "
                     "to an export folder or runs:/<id>/export to continue one)", stage_cfg.name)
            return InitSource(None)
        return previous
    from odvla.platform.tracking.lineage import run_id_of_export

    return InitSource(ref, run_id_of_export(ref))


def stage_config(base: Config, stage: str, files: Iterable[str] = (), overrides: Iterable[str] = ()) -> Config:
    """``base`` with the stage preset (a name or a stage YAML file) on top, then the user's ``files``/``overrides``
    again so they win. An unknown stage is a ConfigError naming the known ones."""
    cfg = load_config(base=to_dict(base), stage=stage, files=files, overrides=overrides)
    check_stage(cfg.stage)
    return cfg


def default_run_name(train_cfg, stage_name: str) -> str:
    """``train.run_name`` or ``odvla-<stage>-<UTC time>``; rerun with the same name to resume from a checkpoint."""
    return train_cfg.run_name or f"odvla-{stage_name}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
