"""Helpers of the training tests: run a stage in a background thread, wait for files, read Ray Train state."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path


class Background:
    """Runs ``fn()`` in a thread; ``result()`` re-raises its exception."""

    def __init__(self, fn):
        self.value = None
        self.error = None

        def target():
            try:
                self.value = fn()
            except BaseException as e:  # noqa: BLE001 - handed to the test
                self.error = e

        self.thread = threading.Thread(target=target, daemon=True)
        self.thread.start()

    def result(self, timeout: float):
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"background run still going after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.value


def wait_for(predicate, timeout: float, what: str, bg: Background | None = None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if bg is not None and not bg.thread.is_alive():
            bg.result(0)  # raises the run's error
            raise AssertionError(f"the run ended before {what}")
        time.sleep(0.2)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def committed_checkpoints(run_dir: Path) -> list[dict]:
    """Checkpoints Ray Train has registered for a run (its checkpoint manager snapshot)."""
    snap = Path(run_dir) / "checkpoint_manager_snapshot.json"
    if not snap.exists():
        return []
    try:
        return json.loads(snap.read_text()).get("checkpoint_results", [])
    except json.JSONDecodeError:  # being rewritten
        return []
