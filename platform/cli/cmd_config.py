"""``odvla config``: print the resolved config (presets + files + overrides) as YAML."""
from __future__ import annotations

from odvla.platform.config.args import add_config_args, config_from_args
from odvla.platform.config import dump_yaml


def register(sub) -> None:
    p = sub.add_parser("config", help="print the resolved config as YAML")
    add_config_args(p)
    p.set_defaults(func=run)


def run(args) -> int:
    print(dump_yaml(config_from_args(args)), end="")
    return 0
