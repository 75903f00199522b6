"""``odvla --quiet`` / ``--verbose``: the level of the library's log records (``odvla.platform.log_setup``).

The command under test is ``odvla instructions`` on a few synthetic shard rows (no Ray): by default its builder logs
one INFO record per split (``odvla.platform.data.conversations.build``), with ``--verbose`` also a DEBUG record per
imported file; with ``--quiet`` none of them, while the command's printed report stays the same.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys

import pytest

from odvla.platform.cli.main import main
from odvla.platform.log_setup import FORMAT, LEVEL_ENV, LOGGER, configure, resolve_level
from test_conversations_support import write_shards

BUILDER = "odvla.platform.data.conversations.build"


@pytest.fixture
def odvla_logger(monkeypatch):
    """The ``odvla`` logger as the CLI leaves it, restored afterwards (level and handlers), no level from the
    environment."""
    monkeypatch.delenv(LEVEL_ENV, raising=False)
    logger = logging.getLogger(LOGGER)
    level, handlers = logger.level, list(logger.handlers)
    yield logger
    logger.setLevel(level)
    logger.handlers[:] = handlers


@pytest.fixture
def instructions_args(tmp_path):
    shards = write_shards(tmp_path / "shards")
    (tmp_path / "qa.json").write_text(json.dumps({"questions": [
        {"sample_token": "s1", "question": "Is there a car?", "answer": "yes"}]}))
    return ["instructions", "--shards", str(shards), "--nuscenes-qa", str(tmp_path / "qa.json")]


def _run(argv: list, caplog, capsys) -> tuple[list, str]:
    """Run ``odvla argv``; -> (the builder's log records, the printed report)."""
    caplog.clear()
    with caplog.at_level(logging.NOTSET):  # the capture handler takes every record the odvla logger lets through
        assert main(argv) == 0
    return [r for r in caplog.records if r.name == BUILDER], capsys.readouterr().out


def test_default_logs_info_quiet_none_verbose_debug(odvla_logger, instructions_args, caplog, capsys):
    default, printed = _run(instructions_args, caplog, capsys)
    assert {r.levelno for r in default} == {logging.INFO}, default  # one INFO per split, no DEBUG
    assert "generated conversation records" in default[0].getMessage()
    assert "train  generated" in printed  # the command's own output is printed whatever the level

    quiet, printed_quiet = _run(["--quiet"] + instructions_args, caplog, capsys)
    assert [r for r in quiet if r.levelno < logging.WARNING] == []
    assert odvla_logger.level == logging.WARNING and printed_quiet == printed

    verbose, _ = _run(instructions_args + ["--verbose"], caplog, capsys)  # after the subcommand works too
    assert any(r.levelno == logging.DEBUG and "records read from" in r.getMessage() for r in verbose), verbose
    assert any(r.levelno == logging.INFO for r in verbose)


def test_a_worker_entry_point_keeps_the_level_the_command_chose(odvla_logger, instructions_args, caplog, capsys):
    """``configure()`` without a level (what ``train_func`` and the actors call) in the command's own process keeps
    ``--quiet``; a command without flags sets INFO again."""
    _run(["--quiet"] + instructions_args, caplog, capsys)
    assert configure().level == logging.WARNING
    _run(instructions_args, caplog, capsys)
    assert odvla_logger.level == logging.INFO


def test_quiet_and_verbose_together_is_an_error(odvla_logger, instructions_args, capsys):
    assert main(["--quiet", "--verbose"] + instructions_args) == 2
    assert "--quiet and --verbose" in capsys.readouterr().err


def test_configure_is_idempotent_and_reads_the_environment():
    """In a bare process (a CLI, a Ray actor) ``configure`` adds one stderr handler however often it is called; the
    level comes from the argument, else ``$ODVLA_LOG_LEVEL``."""
    code = ("import logging\n"
            "from odvla.platform.log_setup import configure\n"
            "configure('debug'); logger = configure()\n"
            "assert len(logger.handlers) == 1 and logger.level == logging.WARNING, (logger.handlers, logger.level)\n"
            "logging.getLogger('odvla.platform.x').info('not shown')\n"
            "logging.getLogger('odvla.platform.x').warning('shown')\n")
    env = {**os.environ, LEVEL_ENV: "warning"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [FORMAT % {"name": "odvla.platform.x", "levelname": "WARNING",
                                                  "message": "shown"}]


def test_no_second_handler_where_the_root_logger_already_shows_records(odvla_logger):
    """Ray Train gives a worker's root logger a console handler; a handler of ours would print each line twice.
    (Under pytest the root logger holds the capture handlers.)"""
    odvla_logger.handlers[:] = []
    assert logging.getLogger().handlers
    configure()
    assert odvla_logger.handlers == []


def test_a_bad_level_names_its_source(monkeypatch):
    monkeypatch.setenv(LEVEL_ENV, "loud")
    with pytest.raises(ValueError, match=f"{LEVEL_ENV}='loud'"):
        resolve_level()
    assert resolve_level("error") == logging.ERROR and resolve_level(logging.DEBUG) == logging.DEBUG
