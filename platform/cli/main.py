"""The ``odvla`` console command.

Each subcommand lives in its own module ``odvla/platform/cli/cmd_<name>.py`` exposing
``register(subparsers) -> None`` (adds its parser and sets ``func=callable(args) -> int``). Modules are found by
name, so adding a subcommand never touches this file. Packages above ``platform`` in the dependency order
(``serve``, ``tune``) contribute commands through the ``odvla.commands`` entry-point group of pyproject.toml, so
``platform`` never imports them.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

from odvla.platform.config import ConfigError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odvla", description="OpenDriveVLA platform: data, training, eval, serving")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import odvla.platform.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"odvla.platform.cli.{mod}").register(sub)
    for ep in sorted(entry_points(group="odvla.commands"), key=lambda e: e.name):
        ep.load()(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # Errors of the user's input: one clear line, no traceback.
        print(f"odvla {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
