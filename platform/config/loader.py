"""Config loading: defaults -> presets -> YAML file -> ``--set a.b=c`` overrides, with type checking.

    cfg = load_config(model="tiny", stage="stage3", files=["my.yaml"], overrides=["train.lr=2e-5"])

Unknown keys and values of the wrong type are errors that name the key, so a typo in a sweep never trains the
default silently.
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from pathlib import Path
from typing import Any, Iterable, Optional

import yaml

from odvla.platform.config.model_catalog import model_preset_names
from odvla.platform.config.schema import Config
from odvla.platform.config.stage_catalog import PRESET_DIR, stage_names


class ConfigError(ValueError):
    """A config key or value that does not fit the schema; the message names the dotted key."""


def to_dict(cfg: Any) -> dict:
    """Dataclass tree -> plain dict of YAML-safe values (tuples become lists)."""

    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def from_dict(data: dict) -> Config:
    cfg = Config()
    merge(cfg, data)
    return cfg


def _coerce(key: str, typ: Any, value: Any) -> Any:
    origin = typing.get_origin(typ)
    if typ is Any or typ is object:
        return value
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        return _coerce(key, args[0], value)
    if typ is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    if typ in (tuple, list) or origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(value) if typ is tuple or origin is tuple else list(value)
    if typ is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def merge(node: Any, data: dict, prefix: str = "") -> None:
    """Merge a nested dict into a dataclass tree in place, checking keys and types."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(type(node))
    names = {f.name for f in dataclasses.fields(node)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {dotted!r} (known: {', '.join(sorted(names))})")
        current = getattr(node, key)
        if dataclasses.is_dataclass(current):
            merge(current, value, dotted + ".")
        else:
            setattr(node, key, _coerce(dotted, hints[key], value))


def parse_override(text: str) -> dict:
    """``'train.lr=2e-5'`` -> ``{'train': {'lr': 2e-05}}``; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form a.b=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw) if raw.strip() else ""
    if isinstance(value, str):  # YAML 1.1 reads 2e-5 as a string
        try:
            value = float(value) if any(c in value for c in "eE.") and not value.isalpha() else value
        except ValueError:
            pass
    out: dict = {}
    node = out
    parts = key.strip().split(".")
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = value
    return out


def apply_override(cfg: Any, text: str) -> None:
    """Apply one ``a.b=value`` override to ``cfg`` in place. A key that goes into a mapping-valued field sets that one
    entry and keeps the others (``stage.loss_weights.det=2.0`` leaves ``lm``, ``map`` and ``motion`` as they were); a
    key that names the field itself replaces the whole mapping (``stage.mixture={qa: 1.0}``)."""
    data = parse_override(text)
    parts = text.split("=", 1)[0].strip().split(".")
    node, i = cfg, 0
    while i < len(parts) - 1 and dataclasses.is_dataclass(getattr(node, parts[i], None)):
        node, i = getattr(node, parts[i]), i + 1
    current = getattr(node, parts[i], None) if parts[i] in {f.name for f in dataclasses.fields(node)} else None
    if i == len(parts) - 1 or not isinstance(current, dict):
        merge(cfg, data)  # a plain field, the whole mapping, or an unknown key (named by merge)
        return
    leaf: Any = data
    for part in parts:
        leaf = leaf[part]
    updated = copy.deepcopy(current)
    target = updated
    for depth, part in enumerate(parts[i + 1:-1], start=i + 1):
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"override {text!r}: {'.'.join(parts[:depth + 1])} is {target!r}, not a mapping")
    target[parts[-1]] = leaf
    field = ".".join(parts[:i + 1])
    setattr(node, parts[i], _coerce(field, typing.get_type_hints(type(node))[parts[i]], updated))


def preset_path(kind: str, name: str) -> Path:
    """``presets/<kind>_<name>.yaml``; a stage may also be given as the path of its YAML file."""
    if kind == "stage" and name.endswith((".yaml", ".yml")):
        if not Path(name).is_file():
            raise ConfigError(f"stage file {name} does not exist")
        return Path(name)
    path = PRESET_DIR / f"{kind}_{name}.yaml"
    if not path.exists():
        known = model_preset_names() if kind == "model" else stage_names()
        raise ConfigError(f"unknown {kind} preset {name!r} (known: {', '.join(known)})")
    return path


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top")
    return data


def load_config(
    model: Optional[str] = None,
    stage: Optional[str] = None,
    files: Iterable[str | Path] = (),
    overrides: Iterable[str] = (),
    base: Optional[dict] = None,
) -> Config:
    """Build a ``Config``. ``model``/``stage`` name presets in ``presets/`` (``stage`` may be a YAML file); later
    sources win."""
    cfg = Config()
    if base:
        merge(cfg, base)
    if model:
        merge(cfg, read_yaml(preset_path("model", model)))
    if stage:
        merge(cfg, read_yaml(preset_path("stage", stage)))
    for f in files:
        merge(cfg, read_yaml(f))
    for o in overrides:
        apply_override(cfg, o)
    return cfg


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def flatten(d: dict, prefix: str = "") -> dict:
    """Nested dict -> ``{'train.lr': 1e-3, ...}`` (for MLflow params)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
