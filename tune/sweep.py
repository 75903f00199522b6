"""Ray Tune sweeps of the training pipeline: the stage-subset x model-size ablation, and learning-rate HPO.

    run_sweep(cfg, SweepRecipe(files=[...], overrides=[...]))              # new sweep (sweep.name or a timestamp)
    run_sweep(cfg, SweepRecipe(...), restore=True)                          # resume the sweep named sweep.name

Train V2 style: ``Tuner(run_trial, param_space=...)``; each trial is a driver (1 CPU) that runs one TorchTrainer
per stage and then the evaluation (``odvla.tune.trial``). The trainers' workers request the GPUs, so Tune is
capped at ``sweep.max_concurrent_trials`` (0: as many of the largest trial as the cluster's GPUs hold) to keep
trials from starving each other.

The experiment lives at ``<sweep.storage_path>/<sweep.name>/``, a shared folder or a URI such as ``s3://bucket/sweeps``
(``sweep_storage.py``; pyarrow file systems, as Tune uses) so that it outlives any one node (Tune's state, one folder per trial, the progress
checkpoints, ``eval/<trial_id>/``, ``results.md``, ``results.png``, ``odvla_sweep.json`` with what a resume
needs). A failed trial is retried ``sweep.max_failures`` times, resuming after its last finished stage, then
reported as failed in the table. An interrupted sweep (Ctrl-C, a lost driver) resumes with ``restore=True``:
finished trials are kept, unfinished and failed ones continue from their last finished stage.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from odvla.platform.config import Config, ConfigError, from_dict, to_dict
from odvla.tune.hpo import build_search, metric_mode
from odvla.tune.recipe import SweepRecipe
from odvla.tune.results import results_markdown, results_plot
from odvla.tune.space import build_hpo_space, build_param_space, max_concurrent_trials, stage_key
from odvla.tune.sweep_storage import SweepLocation
from odvla.platform.tracking import resolve_tracking_uri
from odvla.platform.tracking.sweep_runs import (TrackingClient, close_sweep_run, mark_trial, open_sweep_run,
                                                reopen_run, tag_stage_runs, trial_runs)
from odvla.tune.trial import TrialContext, run_trial

__all__ = ["SweepRecipe", "run_sweep", "sweep_rows"]

log = logging.getLogger(__name__)
META_FILE = "odvla_sweep.json"
STRICT_ENV = "TUNE_DISABLE_STRICT_METRIC_CHECKING"
TRIAL_CPUS = 1
"""CPUs held by a trial driver; its TorchTrainer workers and Ray Data tasks request their own resources."""


@dataclass
class _Plan:
    cfg: Config
    name: str
    loc: SweepLocation
    """The experiment on (shared) storage: a folder or a URI."""
    recipe: SweepRecipe
    tracking_uri: str
    parent_run_id: str | None


    @property
    def exp_dir(self) -> Path:
        """A local folder for the files written here (the experiment folder, or a mirror of a URI's)."""
        return self.loc.local_dir()


def _new_plan(cfg: Config, recipe: SweepRecipe) -> _Plan:
    sw = cfg.sweep
    if sw.mode not in ("ablation", "hpo"):
        raise ConfigError(f"sweep.mode: unknown mode {sw.mode!r} (known: ablation, hpo)")
    for s in sw.stage_sets:
        stage_key(s)  # validates names and order before any trial starts
    if sw.mode == "hpo" and not (0 < sw.lr_min < sw.lr_max):
        raise ConfigError(f"sweep.lr_min/lr_max: need 0 < lr_min < lr_max, got {sw.lr_min}, {sw.lr_max}")
    if any(float(x) <= 0 for x in sw.lrs):
        raise ConfigError(f"sweep.lrs: learning rates must be > 0, got {sw.lrs}")
    name = sw.name or time.strftime("sweep-%Y%m%d-%H%M%S")
    loc = SweepLocation.of(sw.storage_path, name)
    from ray import tune

    if loc.exists() and tune.Tuner.can_restore(loc.uri):
        raise ConfigError(f"sweep {name!r} already exists at {loc.uri}: resume it with --restore "
                          f"(or pick another sweep.name)")
    recipe = recipe.resolve(cfg)
    tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri)  # absolute: trials run elsewhere
    parent = open_sweep_run(cfg, name, tracking_uri, sw.mode)
    plan = _Plan(cfg, name, loc, recipe, tracking_uri, parent)
    meta = {"name": name, "tracking_uri": tracking_uri, "parent_run_id": parent, "recipe": asdict(recipe),
            "config": to_dict(cfg)}
    loc.write_text(META_FILE, json.dumps(meta, indent=1))
    return plan


def _restored_plan(cfg: Config) -> _Plan:
    from ray import tune

    if not cfg.sweep.name:
        raise ConfigError("--restore needs the sweep's name: --set sweep.name=<name> (a folder under "
                          f"sweep.storage_path={cfg.sweep.storage_path})")
    loc = SweepLocation.of(cfg.sweep.storage_path, cfg.sweep.name)
    if not loc.exists(META_FILE) or not tune.Tuner.can_restore(loc.uri):
        raise ConfigError(f"no sweep to resume at {loc.uri} (missing {META_FILE} or Tune experiment state)")
    meta = json.loads(loc.read_text(META_FILE))
    # The original sweep's config and recipe: resumed trials train exactly what the first run would have.
    plan = _Plan(from_dict(meta["config"]), meta["name"], loc, SweepRecipe(**meta["recipe"]),
                 meta["tracking_uri"], meta["parent_run_id"])
    reopen_run(plan.tracking_uri, plan.parent_run_id)
    return plan


def _trial_name(trial) -> str:
    c = trial.config
    lr = f"-lr{c['lr']:.1e}" if isinstance(c.get("lr"), float) else ""
    return f"{c.get('stages')}-{c.get('model_size')}{lr}"


def _trial_dirname(trial) -> str:
    return f"{trial.trial_id}-{_trial_name(trial)}"


def trial_driver_resources(sw) -> dict:
    """What one trial driver holds: ``TRIAL_CPUS`` CPUs plus ``sweep.trial_resources`` (``sw`` = the ``sweep``
    section); ConfigError naming the key for a value that is not a positive number."""
    extra = {}
    for k, v in dict(sw.trial_resources or {}).items():
        try:
            extra[str(k)] = float(v)
        except (TypeError, ValueError):
            extra[str(k)] = math.nan
        if not extra[str(k)] > 0:
            raise ConfigError(f"sweep.trial_resources.{k}: {v!r} is not a positive amount of a Ray resource")
    return {"cpu": TRIAL_CPUS, **extra}


def run_sweep(cfg: Config, recipe: SweepRecipe, restore: bool = False, worker_hooks: tuple = ()) -> dict:
    """Run (or resume) the sweep described by ``cfg.sweep``; every trial's config is built from ``recipe``.

    ``worker_hooks``: passed to every stage's ``run_stage`` (fault injection in tests).

    Returns ``{'table_md', 'table_path', 'plot_path', 'parent_run_id', 'failed' (trial ids), 'interrupted',
    'rows' (one dict per trial), 'best' (row or None), 'experiment_path'}``.
    """
    import ray
    from ray import tune

    plan = _restored_plan(cfg) if restore else _new_plan(cfg, recipe)
    cfg, sw = plan.cfg, plan.cfg.sweep
    stage_count = max(len(s) for s in sw.stage_sets) if sw.mode == "ablation" else len(sw.stage_sets[0])
    search, scheduler, relaxed = build_search(cfg.sweep, stage_count, seed=cfg.train.seed)

    ctx = TrialContext(recipe=plan.recipe, sweep_name=plan.name, sweep_dir=plan.loc.uri,
                       tracking_uri=plan.tracking_uri, experiment=cfg.tracking.experiment,
                       parent_run_id=plan.parent_run_id, worker_hooks=tuple(worker_hooks))
    trainable = tune.with_resources(tune.with_parameters(run_trial, ctx=ctx), trial_driver_resources(sw))

    if restore:
        tuner = tune.Tuner.restore(plan.loc.uri, trainable=trainable, resume_unfinished=True,
                                   resume_errored=True)
    else:
        sizes = sw.model_sizes if sw.mode == "ablation" else sw.model_sizes[:1]
        last_stage = sw.stage_sets[0][-1]
        use_gpu = {s: plan.recipe.trial_config(s, last_stage).train.use_gpu for s in sizes}
        if not ray.is_initialized():
            ray.init()
        gpus = ray.cluster_resources().get("GPU", 0.0)
        concurrent = max_concurrent_trials(cfg.sweep, gpus, use_gpu)
        space = build_param_space(cfg.sweep) if sw.mode == "ablation" else build_hpo_space(cfg.sweep)
        tuner = tune.Tuner(
            trainable,
            param_space=space,
            tune_config=tune.TuneConfig(
                num_samples=1 if sw.mode == "ablation" else sw.num_samples,
                max_concurrent_trials=concurrent, search_alg=search, scheduler=scheduler,
                trial_name_creator=_trial_name, trial_dirname_creator=_trial_dirname),
            run_config=tune.RunConfig(
                name=plan.name, storage_path=plan.loc.parent,
                failure_config=tune.FailureConfig(max_failures=sw.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1), verbose=1),
        )
    strict = os.environ.get(STRICT_ENV)
    if relaxed:  # stage reports carry no eval metric yet; the searcher waits for the final one (tune/hpo.py)
        os.environ[STRICT_ENV] = "1"
    try:
        grid = tuner.fit()
    finally:
        if relaxed and strict is None:
            os.environ.pop(STRICT_ENV, None)
        elif relaxed:
            os.environ[STRICT_ENV] = strict
    return _finish(plan, grid)


def sweep_rows(grid, mode: str) -> tuple[list[dict], bool]:
    """One row per trial from a ``ResultGrid``: parameters, last metrics, ``status`` and ``error``.

    Status: 'done' (the final report came), 'failed' (retries exhausted), 'stopped (ASHA)' (the scheduler ended
    it: Tune marks that last result ``done``), 'unfinished' (never started, or cut short by an interruption: Tune
    reports such trials as terminated in memory but keeps them resumable on disk). Returns (rows, interrupted).
    """
    rows = []
    for res in grid:
        m = dict(res.metrics or {})
        c = res.config or {}
        row = {"stages": c.get("stages"), "model_size": c.get("model_size"), "lr": c.get("lr"), **m}
        row["trial_id"] = m.get("trial_id") or Path(res.path).name.split("-")[0]
        if res.error is not None:
            row["status"] = "failed"
            row["error"] = root_cause(res.error)
        elif m.get("phase") == "done":
            row["status"] = "done"
        elif m.get("done"):
            row["status"] = "stopped (ASHA)" if mode == "hpo" else "stopped"
        else:
            row["status"] = "unfinished"
        rows.append(row)
    return rows, any(r["status"] == "unfinished" for r in rows)


_EXC_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit)\b(\(.*\))?: \S")


def root_cause(error: BaseException) -> str:
    """The first ``SomeError: message`` line of a (chained, remote) traceback, not Ray's own wrappers: the
    cause a user can act on (a missing file, a bad value), not 'UDF failed to process a data block'."""
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    hits = [ln for ln in lines if _EXC_LINE.match(ln) and not ln.startswith("ray.")]
    return (hits[0] if hits else lines[-1] if lines else type(error).__name__)[:400]


def _finish(plan: _Plan, grid) -> dict:
    sw = plan.cfg.sweep
    rows, interrupted = sweep_rows(grid, sw.mode)
    title = f"Sweep {plan.name} ({sw.mode})"
    notes = [f"- trial {r['trial_id']} ({r['stages']}, {r['model_size']}) failed after {sw.max_failures + 1} "
             f"attempt(s): {r['error']}" for r in rows if r["status"] == "failed"]
    if interrupted:
        notes.append(f"- sweep interrupted: resume with `odvla sweep --restore --set sweep.name={plan.name} "
                     f"--set sweep.storage_path={plan.loc.parent}`")
    table_md = results_markdown(rows, title=title, notes=notes)
    table_path = plan.exp_dir / "results.md"
    table_path.write_text(table_md)
    plot_path = None
    if any(isinstance(r.get(sw.metric), (int, float)) for r in rows):
        plot_path = results_plot(rows, plan.exp_dir / "results.png", metric=sw.metric,
                                 by_lr=sw.mode == "hpo")
    (plan.exp_dir / "results.json").write_text(json.dumps(rows, indent=1, default=str))
    if plan.loc.remote:  # beside Tune's state on the shared storage, too
        for f in (table_path, plot_path, plan.exp_dir / "results.json"):
            if f is not None:
                plan.loc.upload(f, f.name)

    done = [r for r in rows if r["status"] == "done" and isinstance(r.get(sw.metric), (int, float))
            and not math.isnan(r[sw.metric])]
    best = None
    if done:
        sign = 1 if metric_mode(sw.metric) == "min" else -1
        best = min(done, key=lambda r: sign * r[sw.metric])

    _close_trial_runs(plan, rows)
    summary = {"trials": len(rows), "trials_done": len(done), "trials_failed": sum(r["status"] == "failed"
                                                                                      for r in rows)}
    if best is not None:
        summary[f"best/{sw.metric}"] = best[sw.metric]
    close_sweep_run(plan.tracking_uri, plan.parent_run_id, table_path, plot_path, summary,
                    status="KILLED" if interrupted else "FINISHED")
    return {"table_md": table_md, "table_path": str(table_path), "plot_path": str(plot_path) if plot_path else None,
            "parent_run_id": plan.parent_run_id, "failed": [r["trial_id"] for r in rows if r["status"] == "failed"],
            "interrupted": interrupted, "rows": rows, "best": best, "experiment_path": plan.loc.uri}


def _close_trial_runs(plan: _Plan, rows: list[dict]) -> None:
    """Trials killed from outside (scheduler stop, lost worker, interruption) could not close their own run."""
    if not plan.parent_run_id:
        return
    by_trial = {r["trial_id"]: r for r in rows}
    client = TrackingClient(plan.tracking_uri)
    for run in trial_runs(plan.tracking_uri, plan.cfg.tracking.experiment, plan.parent_run_id):
        row = by_trial.get(run.data.tags.get("odvla.trial_id"))
        if row is None or run.info.status != "RUNNING":
            continue
        tag_stage_runs(client, run.info.run_id, row["trial_id"])
        status = {"done": "FINISHED", "failed": "FAILED"}.get(row["status"], "KILLED")
        mark_trial(plan.tracking_uri, run.info.run_id, status, note=row["status"])
