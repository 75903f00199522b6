"""Where the ``odvla`` library's log records go: ``configure(level)``, called by every entry point.

Library code never prints its messages: each module logs through ``logging.getLogger(__name__)`` (so
``odvla.platform.train.loop``, ``odvla.serve.deployment``, ...), and only what a user must see as a command's output
(tables, result paths, progress lines, the demo's console) is printed to stdout. The entry points decide where
records go and from which level:

- the ``odvla`` command (``--quiet``: WARNING, ``--verbose``: DEBUG, default INFO) and the ``jobs/`` pages;
- the code Ray runs in other processes: ``train_func`` on each Ray Train worker, the evaluation's model replicas
  (Ray Data actors), the Serve deployments and the Tune trial function. Ray keeps a worker's stderr in that worker's
  log (and shows it on the driver), so a record written to stderr there is where a user looks for it. Those
  processes take their level from ``ODVLA_LOG_LEVEL`` (default INFO; pass it to a job with ``--runtime-env-json``).

``configure`` is idempotent. It sets the level of the ``odvla`` logger (called without a level, as the workers do,
it keeps a level this process already chose, so a command's ``--quiet`` holds for what runs in its own process) and
adds one stderr handler (format ``[<logger name>] <LEVEL>: <message>``) only when neither the ``odvla`` logger nor
the root logger has a handler: Ray Train already gives its workers' root logger a console handler, and a second one
would print every line twice; an application that configured logging itself keeps its own format. Records still
propagate to the root logger, which is where pytest's ``caplog`` reads them.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Union

LOGGER = "odvla"
"""The parent of every library logger (module loggers are ``odvla.<folder>.<module>``)."""
LEVEL_ENV = "ODVLA_LOG_LEVEL"
"""Level of the ``odvla`` loggers in processes that no command line configures (Ray workers and actors)."""
FORMAT = "[%(name)s] %(levelname)s: %(message)s"


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (like ``logging.lastResort``): a stream swapped later (a
    test's capture, a Serve replica's redirect) still gets the record, and a closed one is never written to."""

    def __init__(self, level: int = logging.NOTSET):
        logging.Handler.__init__(self, level)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.setStream assigns it; the stream is always sys.stderr
        pass


def resolve_level(level: Union[int, str, None] = None) -> int:
    """``level`` (a number or a name such as ``"warning"``), else ``$ODVLA_LOG_LEVEL``, else INFO. An unknown name
    is a ``ValueError`` naming it and where it came from."""
    source = "level"
    if level is None:
        level, source = os.environ.get(LEVEL_ENV) or logging.INFO, LEVEL_ENV
    if isinstance(level, int):
        return level
    number = logging.getLevelName(str(level).strip().upper())
    if not isinstance(number, int):
        raise ValueError(f"{source}={level!r}: not a log level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return number


def configure(level: Union[int, str, None] = None) -> logging.Logger:
    """Set the ``odvla`` logger's level and give it a stderr handler when nothing else would show its records (see
    the module docstring). ``level`` None: ``$ODVLA_LOG_LEVEL`` when set, else the level already set in this
    process, else INFO. Safe to call any number of times; returns the ``odvla`` logger."""
    logger = logging.getLogger(LOGGER)
    if level is not None or os.environ.get(LEVEL_ENV) or logger.level == logging.NOTSET:
        logger.setLevel(resolve_level(level))
    if not logger.handlers and not logging.getLogger().handlers:
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    return logger


def level_from_flags(quiet: bool, verbose: bool) -> int:
    """The level of the command line's ``--quiet`` (WARNING) / ``--verbose`` (DEBUG); without either,
    ``$ODVLA_LOG_LEVEL`` or INFO."""
    if quiet and verbose:
        raise ValueError("--quiet and --verbose: choose one")
    return logging.WARNING if quiet else logging.DEBUG if verbose else resolve_level()
