"""One sweep trial: train a stage subset on one model size, then evaluate, reporting to Tune after each step.

The trial function is a Ray Tune *driver* (Train V2 style): it holds 1 CPU and launches one ``TorchTrainer`` per
stage through ``odvla.platform.train.run_stage``; the trainer's workers request their own GPUs. Each stage runs
under a fixed Ray Train run name (``<sweep>-<trial id>-<stage>``), so a retried trial's interrupted stage continues
from its Ray Train checkpoint and its MLflow run. Reports to Tune:

- after each stage: ``train_loss`` (that stage's final training loss), ``stage``, ``stages_done`` and a small
  Tune checkpoint listing the finished stages (their exports and MLflow runs). A retried or resumed trial starts
  after its last finished stage instead of retraining it.
- at the end: the evaluation metrics (``uniad/L2_avg``, ``stp3/L2_avg``, ``uniad/col_avg``, the nuScenes devkit's
  perception figures ``perception/AMOTA``, ``perception/IDS``, ...) with ``phase='done'``; when ``sweep.metric`` is
  a closed-loop figure (``closed_loop/pdms``, ``closed_loop/ncap_score``, ...), also the model's closed-loop
  aggregate over the ``sim`` section's scenarios (``platform/sim/runner.py``, ``model_closed_loop_figures``).

A trial with a ``temporal`` parameter ('on' / 'off', ``sweep.temporal``) trains on clips of
``sweep.temporal_clip_len`` keyframes and evaluates with ``eval.temporal`` (or single keyframes, stateless).

MLflow: the trial is a run nested under the sweep's parent run (tags ``odvla.trial_id``, ``odvla.sweep``); each
stage run is nested under the trial run and tagged with the trial id; ``run_eval`` logs the eval metrics
(``eval/...``) and its tables and plots into the trial run.
"""
from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ray import tune

from odvla.tune.recipe import SweepRecipe
from odvla.tune.space import temporal_overrides, traj_encoding_overrides, trial_resources
from odvla.tune.sweep_storage import SweepLocation
from odvla.platform.tracking.sweep_runs import TrialRun

PROGRESS_FILE = "progress.json"
TRAIN_LOSS_KEYS = ("loss", "train_loss")
"""Where a stage's final report (``StageResult.metrics``) keeps the training loss."""


@dataclass
class TrialContext:
    """Everything a trial needs besides its parameters; pickled to the trial's worker."""

    recipe: SweepRecipe
    sweep_name: str
    sweep_dir: str
    """The sweep's experiment (absolute folder or URI); per-trial eval outputs go to ``eval/<trial id>`` below it."""
    tracking_uri: str
    experiment: str
    parent_run_id: str | None
    worker_hooks: tuple = ()
    """Objects with ``after_checkpoint(step, attempt, rank)`` run on the train workers (fault injection in tests)."""


def stage_configs(ctx: TrialContext, params: dict, trial_id: str) -> list:
    """The configs of the trial's stages, in order (init_from chaining is done at run time)."""
    stages = params["stages"].split("+")
    size = params["model_size"]
    user = ctx.recipe.user_keys()
    out = []
    for stage in stages:
        extra = [f"tracking.tracking_uri={ctx.tracking_uri}", f"tracking.experiment={ctx.experiment}",
                 f"train.run_name={ctx.sweep_name}-{trial_id}-{stage}"]
        probe = ctx.recipe.trial_config(size, stage)
        if "train.num_workers" not in user:
            workers, _ = trial_resources(size, probe.train.use_gpu)
            extra.append(f"train.num_workers={workers}")
        if params.get("lr") is not None:
            extra.append(f"train.lr={float(params['lr'])}")
        if params.get("temporal") is not None:  # clips in training, scene-ordered evaluation with state
            extra += temporal_overrides(str(params["temporal"]), probe.sweep)
        if params.get("traj_encoding") is not None:  # the answer's trajectory encoding (and action codebook)
            extra += traj_encoding_overrides(str(params["traj_encoding"]), probe.data.shards)
        out.append(ctx.recipe.trial_config(size, stage, extra))
    return out


def train_loss_of(metrics: dict) -> float:
    for key in TRAIN_LOSS_KEYS:
        value = metrics.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return math.nan


def _load_progress() -> list[dict]:
    ckpt = tune.get_checkpoint()
    if ckpt is None:
        return []
    with ckpt.as_directory() as d:
        return json.loads((Path(d) / PROGRESS_FILE).read_text())["stages"]


def _progress_checkpoint(done: list[dict], tmp: str) -> tune.Checkpoint:
    Path(tmp, PROGRESS_FILE).write_text(json.dumps({"stages": done}, indent=1))
    return tune.Checkpoint.from_directory(tmp)


def run_trial(params: dict, ctx: TrialContext) -> None:
    """Tune trainable: train ``params['stages']`` ('+'-joined) on ``params['model_size']``, then evaluate. The
    library's log records go to the trial's log (``$ODVLA_LOG_LEVEL``, default INFO)."""
    from odvla.platform.eval.evaluate import run_eval
    from odvla.platform.log_setup import configure as configure_logging
    from odvla.platform.sim.runner import CLOSED_LOOP_PREFIX, model_closed_loop_figures
    from odvla.platform.train import InitSource, run_stage

    configure_logging()

    trial_id = tune.get_context().get_trial_id()
    configs = stage_configs(ctx, params, trial_id)
    import ray

    run = TrialRun.open(ctx, trial_id, params, configs[-1], node_id=ray.get_runtime_context().get_node_id())
    done = _load_progress()
    try:
        for i, cfg in enumerate(configs):
            if i < len(done):
                continue  # finished before a retry / an interrupted sweep; its export is reused
            previous = None
            if i > 0:
                cfg.stage.init_from = "auto"  # start from the previous stage of this trial's subset
                previous = InitSource(done[-1]["export_dir"], done[-1]["run_id"] or "")
            # The first stage keeps its preset/user init_from ('auto' with no previous stage = base weights).
            # register=False: a sweep explores; the user registers the trial they pick.
            result = run_stage(cfg, parent_run_id=run.run_id, previous=previous, register=False,
                               worker_hooks=ctx.worker_hooks)
            loss = train_loss_of(result.metrics)
            if math.isnan(loss):
                loss = run.logged_loss(result.run_id)
            done.append({"stage": result.stage, "run_id": result.run_id, "export_dir": str(result.export_dir),
                         "train_loss": loss})
            run.stage_finished(i, result.stage, result.run_id, loss)
            with tempfile.TemporaryDirectory() as tmp:
                tune.report({**_params_metrics(params, configs), "phase": "train", "stage": result.stage,
                             "stages_done": i + 1, "train_loss": loss, **_stage_losses(done)},
                            checkpoint=_progress_checkpoint(done, tmp))
        remote = "://" in ctx.sweep_dir
        eval_dir = Path(tempfile.mkdtemp(prefix="odvla-eval-")) if remote else Path(ctx.sweep_dir) / "eval" / trial_id
        ev = run_eval(configs[-1], done[-1]["export_dir"], out_dir=eval_dir, run_id=run.run_id)
        if remote:  # beside the sweep on its shared storage
            eval_dir = SweepLocation(ctx.sweep_dir).upload(Path(ev.out_dir or eval_dir), f"eval/{trial_id}")
        metrics = {k: float(v) for k, v in ev.metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        if configs[-1].sweep.metric.startswith(CLOSED_LOOP_PREFIX):  # the sweep judges a closed-loop figure
            metrics.update(model_closed_loop_figures(done[-1]["export_dir"], configs[-1].sim))
        tune.report({**_params_metrics(params, configs), "phase": "done", "stages_done": len(configs),
                     "train_loss": done[-1]["train_loss"], **_stage_losses(done), **metrics,
                     "export_dir": done[-1]["export_dir"], "mlflow_run_id": run.run_id,
                     "eval_dir": str(eval_dir if remote else (ev.out_dir or eval_dir))})
        run.finish("FINISHED")
    except BaseException:
        run.finish("FAILED")
        raise


def _params_metrics(params: dict, configs: list) -> dict:
    """The trial's parameters repeated in every report, so a results table needs only the metrics.

    ``lr`` is the swept value, or (no LR grid) the last stage's preset learning rate.
    """
    lr = params.get("lr")
    text = configs[-1].model.text
    compact = text.compact_tokens and text.traj_encoding != "action"  # action tokens have no number tokens
    return {"stages": params["stages"], "model_size": params["model_size"],
            "lr": float(lr if lr is not None else configs[-1].train.lr),
            "temporal": "on" if configs[-1].eval.temporal else "off",
            "traj_encoding": text.traj_encoding + ("+compact" if compact else "")}


def _stage_losses(done: list[dict]) -> dict:
    return {f"loss/{d['stage']}": d["train_loss"] for d in done}
