"""Progress of a running stage, seen from the driver: a thread that reads the stage's MLflow run.

Rank 0 logs ``loss`` (and the other step metrics) to the stage's MLflow run every ``train.log_every`` steps; the
driver is blocked in ``TorchTrainer.fit()`` and the workers' stdout may not reach it, so :class:`StageProgress`
polls the run's metric history and calls ``callback(stage, step, total_steps, metrics)`` each time the logged step
advances. Reading the tracking store is the only thing it does: a store that is unreachable just means no progress
lines (training never waits on it).
"""
from __future__ import annotations

import threading
from typing import Callable, Optional

ProgressCallback = Callable[[str, int, int, dict], None]
"""``(stage, step, total_steps, {metric: latest value})``."""


class StageProgress:
    """Context manager: polls ``run_id``'s metrics every ``interval_s`` seconds while the block runs."""

    KEYS = ("loss", "lr", "samples_per_s", "tokens_per_s")

    def __init__(self, tracking_uri: str, run_id: Optional[str], stage: str, total_steps: int,
                 callback: Optional[ProgressCallback], interval_s: float = 5.0):
        self.uri, self.run_id, self.stage = tracking_uri, run_id, stage
        self.total, self.callback, self.interval = int(total_steps), callback, float(interval_s)
        self.last_step = 0
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def __enter__(self) -> "StageProgress":
        if self.callback is not None and self.run_id:
            self._thread = threading.Thread(target=self._run, name=f"odvla-progress-{self.stage}", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)

    def poll(self) -> bool:
        """Read the run once; call the callback when the logged step advanced. True when it did."""
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.uri)
        history = client.get_metric_history(self.run_id, "loss")
        if not history:
            return False
        step = max(m.step for m in history)
        if step <= self.last_step:
            return False
        self.last_step = step
        latest = client.get_run(self.run_id).data.metrics
        self.callback(self.stage, step, self.total, {k: latest[k] for k in self.KEYS if k in latest})
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.poll()
            except Exception:  # the store is away or busy: no progress line this time
                continue
