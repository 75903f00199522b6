"""Shared command-line arguments that build a ``Config``: ``--model``, ``--stage``, ``--config``, ``--set``."""
from __future__ import annotations

import argparse

from odvla.platform.config import Config, load_config


def add_config_args(p: argparse.ArgumentParser, model: str | None = "tiny", stage: str | None = None) -> None:
    p.add_argument("--model", default=model, help="model size preset: tiny, 0.5b, 3b, 7b (default: %(default)s)")
    p.add_argument("--stage", default=stage, help="stage preset (stage1, stage2, stage2_5, stage3) or a stage YAML file")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="config file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set train.lr=2e-5 (repeatable)")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(model=args.model, stage=getattr(args, "stage", None), files=args.config,
                       overrides=args.overrides)
