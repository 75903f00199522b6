"""The stage list, read from the stage presets: ``presets/stage_<name>.yaml``, ordered by ``stage.order``.

This is the one source of stage names. A new stage is one YAML file there (and one ``jobs/<name>.py`` for
``ray job submit``); a YAML file anywhere can also be given as a stage (``odvla train --stage path/to/stage.yaml``).
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

import yaml

PRESET_DIR = Path(__file__).parent / "presets"


def stage_file_order(path: Path) -> tuple[str, int]:
    """``(stage.name, stage.order)`` of a stage YAML file; errors name the file and key."""
    from odvla.platform.config.loader import ConfigError

    data = yaml.safe_load(Path(path).read_text()) or {}
    stage = data.get("stage") if isinstance(data, dict) else None
    if not isinstance(stage, dict) or not isinstance(stage.get("name"), str):
        raise ConfigError(f"stage file {path}: needs a `stage:` mapping with a `name`")
    order = stage.get("order", 0)
    if isinstance(order, bool) or not isinstance(order, int):
        raise ConfigError(f"stage file {path}: stage.order must be an integer, got {order!r}")
    return stage["name"], order


@lru_cache(maxsize=1)
def _catalog() -> tuple[tuple[str, int], ...]:
    entries = []
    for path in sorted(PRESET_DIR.glob("stage_*.yaml")):
        name, order = stage_file_order(path)
        if f"stage_{name}.yaml" != path.name:
            from odvla.platform.config.loader import ConfigError

            raise ConfigError(f"stage preset {path}: stage.name {name!r} does not match the file name")
        entries.append((name, order))
    return tuple(sorted(entries, key=lambda e: (e[1], e[0])))


def stage_names() -> tuple[str, ...]:
    """Every stage preset, in curriculum order (``stage1, stage2, stage2_5, stage3`` as shipped)."""
    return tuple(name for name, _ in _catalog())


def stage_order(stage: str) -> int:
    """``stage.order`` of a preset name or of a stage YAML file."""
    if stage.endswith((".yaml", ".yml")):
        return stage_file_order(Path(stage))[1]
    for name, order in _catalog():
        if name == stage:
            return order
    from odvla.platform.config.loader import ConfigError

    raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(stage_names())}, or a stage YAML file)")


def check_pipeline_order(stages: Iterable[str], what: str = "pipeline stages") -> list[str]:
    """``stages`` (preset names or stage YAML files) if known and in increasing ``order``; else a ConfigError."""
    from odvla.platform.config.loader import ConfigError

    stages = list(stages)
    if not stages:
        raise ConfigError(f"{what}: no stages given (known: {', '.join(stage_names())})")
    orders = [stage_order(s) for s in stages]
    if orders != sorted(orders) or len(set(orders)) != len(orders):
        raise ConfigError(f"{what}: {stages} must be in pipeline order (the curriculum: {', '.join(stage_names())})")
    return stages
