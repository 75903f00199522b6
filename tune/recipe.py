"""What every trial of a sweep shares: the user's config files and ``--set`` overrides, rebuilt per trial.

A trial changes the model-size preset and the stage presets, so its config cannot be a copy of the sweep's own
``Config``: it is rebuilt in the order ``load_config`` uses (defaults -> model preset -> stage preset -> user files
-> user overrides), then the trial's own values (resources per model size, learning rate, run names) go last.

File contents are read once, on the submitting machine, and travel with the recipe: a trial may run on another
node, from another working directory (Tune starts trials in their trial directory). For the same reason relative
paths in the config (shards, storage, tracking store) are made absolute against the submitting directory.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from odvla.platform.config import Config, apply_override, load_config, parse_override
from odvla.platform.config.loader import merge, read_yaml

# Config fields that hold local paths (URIs such as s3://, runs:/, models:/ are left alone).
PATH_FIELDS = ("data.dataroot", "data.shards", "data.instructions", "train.storage_path", "eval.out",
               "sweep.storage_path", "model.llm.path", "model.vision.backbone_weights")


@dataclass
class SweepRecipe:
    """The user's config files and ``--set key=value`` overrides, applied to every trial."""

    files: list = field(default_factory=list)
    overrides: list = field(default_factory=list)
    file_data: list = field(default_factory=list)
    """Contents of ``files`` (filled by ``resolve``), so trials do not need the files on their node."""
    path_overrides: list = field(default_factory=list)
    """Absolute forms of relative path fields (filled by ``resolve``)."""

    def resolve(self, cfg: Config, cwd: str | Path | None = None) -> "SweepRecipe":
        """Read the files and pin relative paths of ``cfg`` to ``cwd`` (default: the current directory)."""
        cwd = Path(cwd or Path.cwd()).resolve()
        file_data = [read_yaml(f) for f in self.files]
        pins = []
        for dotted in PATH_FIELDS:
            value = _get(cfg, dotted)
            if isinstance(value, str) and value and "://" not in value and ":/" not in value \
                    and not Path(value).is_absolute():
                pins.append(f"{dotted}={cwd / value}")
        uri = cfg.tracking.tracking_uri
        if uri and "://" not in uri and not uri.startswith("file:") and not Path(uri).is_absolute():
            pins.append(f"tracking.tracking_uri={cwd / uri}")
        return SweepRecipe(list(self.files), list(self.overrides), file_data, pins)

    def user_keys(self) -> set[str]:
        """Dotted keys the user set explicitly (in a file or an override)."""
        keys: set[str] = set()
        for d in self.file_data + [parse_override(o) for o in self.overrides]:
            keys |= _dotted_keys(d)
        return keys

    def trial_config(self, model: str, stage: str | None, extra: list[str] = ()) -> Config:
        """The config of one stage of one trial: presets, the user's files and overrides, then ``extra``."""
        cfg = load_config(model=model, stage=stage)
        for data in self.file_data:
            merge(cfg, data)
        for o in list(self.overrides) + list(self.path_overrides) + list(extra):
            apply_override(cfg, o)
        return cfg


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part, None)
        if node is None:
            return None
    return node


def _dotted_keys(d: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and key not in ("stage.mixture", "stage.loss_weights"):
            out |= _dotted_keys(v, key + ".")
        else:
            out.add(key)
    return out
