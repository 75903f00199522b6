"""Route a process's raw output (file descriptors 1 and 2) to a log file while a command prints its own lines.

Ray, Ray Data, DeepSpeed, MLflow, the Java caption scorer and C++ cores write INFO lines, progress dumps and
warnings straight to the process's stdout / stderr, from Python loggers, subprocesses and native code alike. Only a
descriptor-level redirect catches all of them. ``captured_output(path)`` points fds 1 and 2 at ``path`` for its
duration and yields a text stream on the *original* stdout, where the command writes what the user should see.
Under a test's ``capsys`` (``sys.stdout`` is not descriptor 1) the yielded stream is ``sys.stdout`` itself, so the
lines stay visible to the test while the noise still goes to the log.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
import warnings
from pathlib import Path
from typing import Iterator, TextIO


def _stdout_is_fd1() -> bool:
    try:
        return sys.stdout.fileno() == 1
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return False


@contextlib.contextmanager
def captured_output(log_path: str | Path) -> Iterator[TextIO]:
    """Send fds 1 and 2 (and Python warnings) to ``log_path`` (appended); yield the stream for the user's lines.
    Everything is restored on exit, also on an exception, whose traceback then reaches the terminal as usual."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    saved = [os.dup(1), os.dup(2)]
    user = os.fdopen(os.dup(saved[0]), "w", buffering=1) if _stdout_is_fd1() else sys.stdout
    log = open(log_path, "a", buffering=1)
    showwarning = warnings.showwarning
    try:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        warnings.showwarning = lambda msg, cat, fn, ln, file=None, line=None: log.write(
            warnings.formatwarning(msg, cat, fn, ln, line))
        yield user
    finally:
        warnings.showwarning = showwarning
        for s in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                s.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        if user is not sys.stdout:
            user.close()
        log.close()
