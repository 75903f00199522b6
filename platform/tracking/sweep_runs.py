"""MLflow runs of a sweep: one parent run per sweep, one nested run per trial, stage runs nested under it.

    sweep run (tags odvla.kind=sweep, odvla.sweep=<name>; artifacts: results.md, results.png, sweep config)
      └─ trial run (tags odvla.kind=trial, odvla.trial_id, odvla.sweep, odvla.trial_nodes; params stages/model_size/lr;
         metrics loss/<stage>, trial_attempt, eval/...; artifacts: config.yaml, eval/)
           └─ stage runs (created by ``run_stage``; tagged here with odvla.trial_id)

Everything goes through ``MlflowClient`` with explicit run ids (no active fluent run), so the stage runs that the
training code opens in the same process nest freely. A tracking server that goes away is logged as a warning and
the sweep goes on (the runs are bookkeeping; the Tune experiment on disk is the source of truth for resuming).
"""
from __future__ import annotations

from pathlib import Path

from odvla.platform.config import Config, dump_yaml
from odvla.platform.tracking.resilient import ResilientTracker
from odvla.platform.tracking.store import ensure_experiment

PARENT_TAG = "mlflow.parentRunId"
NODES_TAG = "odvla.trial_nodes"
"""Tag of a trial run: the Ray node ids its attempts ran on, comma-separated, in order."""


class TrackingClient(ResilientTracker):
    """The platform's resilient tracker without a run of its own, for a sweep's bookkeeping: ``call`` takes an
    ``MlflowClient`` method name (or any callable) and returns None instead of raising when the store fails, so
    tracking never kills a sweep."""

    def __init__(self, tracking_uri: str):
        super().__init__(tracking_uri, None)
        self.uri = tracking_uri

    def call(self, what: str, fn, *args, **kwargs):
        return super().call(what, getattr(self.client, fn) if isinstance(fn, str) else fn, *args, **kwargs)

    def experiment_id(self, name: str) -> str | None:
        return self.call(f"experiment {name!r}", ensure_experiment, self.client, name, self.uri)


def open_sweep_run(cfg: Config, name: str, tracking_uri: str, mode: str) -> str | None:
    """Create the sweep's parent run; returns its id (None when the tracking store is unreachable)."""
    c = TrackingClient(tracking_uri)
    exp = c.experiment_id(cfg.tracking.experiment)
    if exp is None:
        return None
    run = c.call("create sweep run", "create_run", exp, run_name=f"sweep-{name}",
                 tags={"odvla.kind": "sweep", "odvla.sweep": name, "odvla.sweep_mode": mode})
    if run is None:
        return None
    rid = run.info.run_id
    sw = cfg.sweep
    params = {"sweep.mode": sw.mode, "sweep.stage_sets": str(sw.stage_sets), "sweep.model_sizes": str(sw.model_sizes),
              "sweep.lrs": str(sw.lrs), "sweep.searcher": sw.searcher, "sweep.scheduler": sw.scheduler,
              "sweep.num_samples": sw.num_samples, "sweep.metric": sw.metric,
              "sweep.max_concurrent_trials": sw.max_concurrent_trials, "sweep.max_failures": sw.max_failures}
    for k, v in params.items():
        c.call("log param", "log_param", rid, k, v)
    c.call("log sweep config", "log_text", rid, dump_yaml(cfg), "sweep_config.yaml")
    return rid


def reopen_run(tracking_uri: str, run_id: str | None) -> None:
    if run_id:
        TrackingClient(tracking_uri).call("reopen sweep run", "update_run", run_id, status="RUNNING")


def close_sweep_run(tracking_uri: str, run_id: str | None, table_path: Path, plot_path: Path | None,
                    summary: dict, status: str = "FINISHED") -> None:
    if not run_id:
        return
    c = TrackingClient(tracking_uri)
    c.call("log results table", "log_artifact", run_id, str(table_path))
    if plot_path is not None:
        c.call("log results plot", "log_artifact", run_id, str(plot_path))
    for k, v in summary.items():
        c.call("log sweep metric", "log_metric", run_id, k, float(v))
    c.call("close sweep run", "set_terminated", run_id, status)


def trial_runs(tracking_uri: str, experiment: str, parent_run_id: str) -> list:
    """The trial runs of a sweep (each with ``data.tags['odvla.trial_id']``)."""
    c = TrackingClient(tracking_uri)
    exp = c.experiment_id(experiment)
    if exp is None or not parent_run_id:
        return []
    return c.call("search trial runs", "search_runs", [exp],
                  filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`odvla.kind` = 'trial'") or []


def mark_trial(tracking_uri: str, run_id: str, status: str, note: str | None = None) -> None:
    """Close a trial run the trial itself could not close (stopped by the scheduler, failed for good)."""
    c = TrackingClient(tracking_uri)
    if note:
        c.call("tag trial", "set_tag", run_id, "odvla.trial_status", note)
    c.call("close trial run", "set_terminated", run_id, status)


def tag_stage_runs(client: "TrackingClient", trial_run_id: str, trial_id: str) -> None:
    """Tag every run nested under the trial run (its stage runs, finished or not) with the trial id."""
    run = client.call("read trial run", "get_run", trial_run_id)
    if run is None:
        return
    children = client.call("search stage runs", "search_runs", [run.info.experiment_id],
                           filter_string=f"tags.`{PARENT_TAG}` = '{trial_run_id}'") or []
    for child in children:
        if child.data.tags.get("odvla.trial_id") != trial_id:
            client.call("tag stage run", "set_tag", child.info.run_id, "odvla.trial_id", trial_id)


class TrialRun:
    """The nested MLflow run of one trial; reused when the trial is retried or the sweep resumed."""

    def __init__(self, client: TrackingClient | None, run_id: str | None, trial_id: str):
        self.c = client
        self.run_id = run_id
        self.trial_id = trial_id

    @classmethod
    def open(cls, ctx, trial_id: str, params: dict, cfg: Config, node_id: str | None = None) -> "TrialRun":
        """Create the trial's run, or reopen it on a retry or resume (one run per trial, whatever happens).
        ``node_id``: the Ray node this attempt runs on, appended to the tag ``odvla.trial_nodes`` (comma-separated,
        one per attempt), so a trial retried after its node was lost shows where each attempt ran."""
        c = TrackingClient(ctx.tracking_uri)
        exp = c.experiment_id(ctx.experiment)
        if exp is None:
            return cls(None, None, trial_id)
        existing = c.call("search trial run", "search_runs", [exp],
                          filter_string=f"tags.`odvla.trial_id` = '{trial_id}' and tags.`odvla.sweep` = "
                                        f"'{ctx.sweep_name}' and tags.`odvla.kind` = 'trial'") or []
        nodes = ""
        if existing:
            rid = existing[0].info.run_id
            nodes = existing[0].data.tags.get(NODES_TAG, "")
            c.call("reopen trial run", "update_run", rid, status="RUNNING")
            attempts = len(c.call("read attempts", "get_metric_history", rid, "trial_attempt") or [])
        else:
            tags = {"odvla.kind": "trial", "odvla.trial_id": trial_id, "odvla.sweep": ctx.sweep_name}
            if ctx.parent_run_id:
                tags[PARENT_TAG] = ctx.parent_run_id
            run = c.call("create trial run", "create_run", exp, run_name=f"{ctx.sweep_name}-{trial_id}", tags=tags)
            if run is None:
                return cls(None, None, trial_id)
            rid = run.info.run_id
            for k in ("stages", "model_size", "lr"):
                if params.get(k) is not None:
                    c.call("log param", "log_param", rid, k, params[k])
            c.call("log trial config", "log_text", rid, dump_yaml(cfg), "config.yaml")
            attempts = 0
        self = cls(c, rid, trial_id)
        # One 'attempt' metric point per start of the trial: retries and resumes are visible in MLflow.
        c.call("log attempt", "log_metric", rid, "trial_attempt", attempts + 1, step=attempts)
        if node_id:
            c.call("tag trial node", "set_tag", rid, NODES_TAG, ",".join(filter(None, [nodes, node_id])))
        return self

    def logged_loss(self, stage_run_id: str | None) -> float:
        """The last training loss the stage run logged (a resumed stage's replayed report may not carry it)."""
        if not self.c or not stage_run_id:
            return float("nan")
        hist = self.c.call("read stage loss", "get_metric_history", stage_run_id, "loss") or []
        return float(max(hist, key=lambda m: (m.step, m.timestamp)).value) if hist else float("nan")

    def stage_finished(self, index: int, stage: str, stage_run_id: str | None, loss: float) -> None:
        if not self.c:
            return
        if stage_run_id:
            self.c.call("tag stage run", "set_tag", stage_run_id, "odvla.trial_id", self.trial_id)
        if loss == loss:  # not NaN
            self.c.call("log stage loss", "log_metric", self.run_id, f"loss/{stage}", loss, step=index)
            self.c.call("log train loss", "log_metric", self.run_id, "train_loss", loss, step=index)

    def finish(self, status: str) -> None:
        if self.c:
            tag_stage_runs(self.c, self.run_id, self.trial_id)
            self.c.call("close trial run", "set_terminated", self.run_id, status)
