"""The model sizes, read from the model presets: ``presets/model_<name>.yaml``, smallest first.

This is the one source of model preset names, as ``stage_catalog.py`` is of stage names: a new model size is one
YAML file there. Sizes named ``<N>b`` (billions of LLM parameters: ``0.5b``, ``3b``, ``7b``) are ordered by ``N``;
any other name (``tiny``, a randomly initialised test model) comes before them, alphabetically.
"""
from __future__ import annotations

import re
from functools import lru_cache

from odvla.platform.config.stage_catalog import PRESET_DIR

_BILLIONS = re.compile(r"^(\d+(?:\.\d+)?)b$")


def model_size_key(name: str) -> tuple:
    """Sort key of a model preset name: names that state no size first, then ``<N>b`` by ``N`` (billions)."""
    m = _BILLIONS.match(name)
    return (1, float(m.group(1)), name) if m else (0, 0.0, name)


@lru_cache(maxsize=1)
def model_preset_names() -> tuple[str, ...]:
    """Every model preset, smallest first (``tiny, 0.5b, 3b, 7b`` as shipped)."""
    names = [path.name[len("model_"):-len(".yaml")] for path in PRESET_DIR.glob("model_*.yaml")]
    return tuple(sorted(names, key=model_size_key))
