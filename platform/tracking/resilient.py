"""An MLflow logger that keeps training alive when the tracking server goes away, and says so.

Every call goes through ``_call``: on the first failure it warns once (naming the server and the error), counts
what it could not record, and stops calling the server for ``retry_after_s`` seconds so a dead server costs no
training time; after that it tries again and, when the server is back, says how many records were lost.
HTTP stores get a short timeout and no client-side retries (MLflow's default backs off for minutes).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable, Optional

log = logging.getLogger(__name__)

MAX_PARAM_LEN = 6000  # MLflow's limit on a param value
REJECTED_CODES = {"INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                  "INVALID_STATE"}
"""Error codes of a store that is up but refuses one record (e.g. a param logged again with another value)."""


class ResilientTracker:
    """Logs into one existing MLflow run; never raises from a logging call.

    Attributes ``dropped`` (records not written) and ``lost`` (True while the server is unreachable) let the
    training loop report the state of tracking in its own metrics.
    """

    def __init__(self, tracking_uri: str, run_id: Optional[str], retry_after_s: float = 20.0,
                 http_timeout_s: int = 5):
        from mlflow.tracking import MlflowClient

        if tracking_uri.startswith("http"):
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(http_timeout_s))
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri)
        self.retry_after_s = retry_after_s
        self.dropped = 0
        self.failures = 0
        self._down_since: Optional[float] = None
        self.messages: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.run_id is not None

    @property
    def lost(self) -> bool:
        return self._down_since is not None

    def _say(self, msg: str) -> None:
        self.messages.append(msg)
        log.warning(msg)

    def call(self, what: str, fn: Callable, *args, **kwargs) -> Any:
        """``fn(*args, **kwargs)`` under the same rules as the logging calls (for calls that need no run yet,
        e.g. opening it): None when the server cannot be reached."""
        return self._call(what, fn, *args, _need_run=False, **kwargs)

    def _call(self, what: str, fn: Callable, *args, _need_run: bool = True, **kwargs) -> Any:
        if _need_run and not self.enabled:
            return None
        now = time.monotonic()
        if self._down_since is not None and now - self._down_since < self.retry_after_s:
            self.dropped += 1
            return None
        try:
            out = fn(*args, **kwargs)
        except Exception as e:  # any failure of the store: network, server 5xx, DB locked
            code = getattr(e, "error_code", "")
            if code in REJECTED_CODES:  # the server answered and refused this record: not an outage
                self.dropped += 1
                self._say(f"MLflow rejected {what} ({code}: {str(e).splitlines()[0][:200]}); training continues")
                return None
            self.failures += 1
            self.dropped += 1
            if self._down_since is None:
                self._say(f"MLflow tracking at {self.tracking_uri} failed ({what}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); training continues, records are "
                          f"dropped until it answers again (retry every {self.retry_after_s:.0f}s)")
            self._down_since = now
            return None
        if self._down_since is not None:
            self._say(f"MLflow tracking at {self.tracking_uri} answers again; {self.dropped} records were dropped")
            self._down_since = None
        return out

    # -- logging calls -------------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, int(step)) for k, v in metrics.items() if v is not None]
        self._call("log_metrics", self.client.log_batch, self.run_id, metrics=items)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LEN]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self._call("log_params", self.client.log_batch, self.run_id, params=items[i:i + 100])

    def set_tags(self, tags: dict) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(k, str(v)) for k, v in tags.items()]
        self._call("set_tags", self.client.log_batch, self.run_id, tags=items)

    def log_artifact(self, path: str | Path, artifact_path: Optional[str] = None) -> None:
        self._call("log_artifact", self.client.log_artifact, self.run_id, str(path), artifact_path)

    def log_artifacts(self, folder: str | Path, artifact_path: Optional[str] = None) -> None:
        self._call("log_artifacts", self.client.log_artifacts, self.run_id, str(folder), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call("log_text", self.client.log_text, self.run_id, text, artifact_file)

    def terminate(self, status: str = "FINISHED") -> None:
        self._call("set_terminated", self.client.set_terminated, self.run_id, status)
