"""Helpers of the training tests: run a stage in a background thread, wait for files, read Ray Train state."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from odvla.platform.bench.fault_injection import PauseAfterFirstCheckpoint  # the tests' worker hook (and the base of the one below)


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


class PauseEachRunAfterFirstCheckpoint(PauseAfterFirstCheckpoint):
    """Worker hook for several runs at once (a sweep's trials): rank 0 of each Ray Train run writes
    ``<run name>.ckpt`` ("<step> <node id>") after its first checkpoint and, on attempt 0, waits (at most ``wait_s``)
    for a ``go`` file in ``folder``."""

    def marker(self, step: int, attempt: int, node: str) -> tuple[str, str]:
        import ray.train

        return f"{ray.train.get_context().get_experiment_name()}.ckpt", f"{step} {node}\n"


def _ship_by_value() -> None:
    """Train workers do not have ``tests/`` on their path: send this module's classes by value."""
    import sys

    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


_ship_by_value()


def wait_for_job_api(head, log_path: Path, address: str, timeout: float = 240) -> None:
    """Wait until a ``ray start --head --block`` process (``head``) answers on its job API at ``address``; if the
    head exits first, fail with the end of its log."""
    import urllib.request

    def up():
        if head.poll() is not None:
            raise AssertionError(Path(log_path).read_text()[-3000:])
        try:
            with urllib.request.urlopen(f"{address}/api/version", timeout=5) as r:
                return r.status == 200
        except OSError:
            return False

    wait_for(up, timeout, "the Ray head's job API")
