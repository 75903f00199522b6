"""The ``odvla`` console command.

Each subcommand lives in its own module ``odvla/platform/cli/cmd_<name>.py`` exposing
``register(subparsers) -> None`` (adds its parser and sets ``func=callable(args) -> int``). Modules are found by
name, so adding a subcommand never touches this file. Packages above ``platform`` in the dependency order
(``serve``, ``tune``) contribute commands through the ``odvla.commands`` entry-point group of pyproject.toml, so
``platform`` never imports them.

``--quiet`` / ``--verbose`` (before or after the subcommand) set the level of the library's log records on stderr
(WARNING / DEBUG; INFO by default, ``odvla.platform.log_setup``); what a command prints as its output (tables,
result paths, progress lines) is printed whatever the level.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from importlib.metadata import entry_points

from odvla.platform.config import ConfigError
from odvla.platform.log_setup import configure as configure_logging
from odvla.platform.log_setup import level_from_flags


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="odvla", description="OpenDriveVLA platform: data, training, eval, serving")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    import odvla.platform.cli as pkg

    for mod in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("cmd_")):
        importlib.import_module(f"odvla.platform.cli.{mod}").register(sub)
    for ep in sorted(entry_points(group="odvla.commands"), key=lambda e: e.name):
        ep.load()(sub)
    add_log_level_flags(parser, default=False)
    return parser


def add_log_level_flags(parser: argparse.ArgumentParser, default=argparse.SUPPRESS) -> None:
    """``--quiet`` / ``--verbose`` on ``parser`` and on every subcommand parser below it, so they may stand before
    or after the subcommand. Below the top the default is SUPPRESS: a subcommand that was not given the flag
    leaves the top-level value alone."""
    for flag, help_text in (("--quiet", "log only warnings and errors of the library (WARNING)"),
                            ("--verbose", "log the library's debug records too (DEBUG)")):
        try:
            parser.add_argument(flag, action="store_true", default=default, help=help_text)
        except argparse.ArgumentError:  # a subcommand with a flag of that name keeps its own
            pass
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in set(action.choices.values()):
                add_log_level_flags(child)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        configure_logging(level_from_flags(args.quiet, args.verbose))
        return int(args.func(args) or 0)
    except (ConfigError, FileNotFoundError, ValueError) as e:
        # Errors of the user's input: one clear line, no traceback.
        print(f"odvla {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
