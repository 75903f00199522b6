"""One stage as a Ray Train V2 run: ``run_stage(cfg) -> StageResult``.

    TorchTrainer(train_func,
                 scaling_config=ScalingConfig(num_workers, use_gpu),           # gloo on CPU, NCCL on GPU
                 run_config=RunConfig(storage_path=<absolute>, name=<run name>,
                                      failure_config=FailureConfig(max_failures)),
                 datasets={'train': <Ray Dataset of the stage mixture>})

Resuming is rerunning with the same ``train.storage_path`` and ``train.run_name``: Ray Train finds the run's latest
checkpoint and ``train_func`` continues from it; the MLflow run is found by the same key, so it continues too.

Node loss: a lost worker or node restarts the worker group from the last checkpoint (``train.max_failures``); the
restart waits for the workers' resources (a replacement node) at most ``train.capacity_timeout_s``, then the stage
fails with ``CapacityError`` naming the missing resources, instead of Ray's default of retrying forever. Every
optimiser step's sample tokens go to ``<storage>/<run>/sample_log`` (``sample_log.py``), the proof that a resumed
run trains the same sample sequence as an uninterrupted one.
The driver opens the stage's MLflow run (params, config, lineage tags); rank 0 logs the per-step metrics into it;
the driver adds the export (and, by config, the final checkpoint) as artifacts at the end.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from odvla.platform.config import Config, dump_yaml, flatten, to_dict
from odvla.platform.durable_paths import resolve_storage_path
from odvla.platform.train.progress import ProgressCallback, StageProgress
from odvla.platform.train.stages import InitSource, check_stage, default_run_name, resolve_init

log = logging.getLogger(__name__)


@dataclass
class StageResult:
    stage: str
    run_id: Optional[str]
    """MLflow run of the stage (None when tracking was unreachable at the start)."""
    export_dir: Path
    """Consolidated export (model.safetensors, config.yaml, tokenizer/) of the final checkpoint."""
    metrics: dict = field(default_factory=dict)
    """Rank 0's final report: loss, lr, global_step, samples_seen, restarts, tracking_dropped, ..."""
    checkpoint_path: Optional[str] = None
    run_name: str = ""
    registered_version: Optional[str] = None
    tracking_messages: list = field(default_factory=list)


START_TIMEOUT_ENV = "RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S"
"""Ray Train's worker-group start timeout (seconds), read by the Train controller; ``fault_injection`` sets it."""
DEFAULT_START_TIMEOUT_S = 60.0


class CapacityError(RuntimeError):
    """The cluster did not offer the stage's workers their resources within ``train.capacity_timeout_s``."""


def _storage_path(train_cfg) -> str:
    """``train.storage_path`` as a URI or a durable absolute folder (never Ray's working-dir copy of a job)."""
    return resolve_storage_path(train_cfg.storage_path)


HEALTH_CHECK_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
"""Ray Train's controller poll interval (seconds), read from the driver's environment when a run starts."""


def poll_interval_s(train_cfg) -> float:
    """``train.health_check_interval_s``, checked: a ValueError naming the setting unless it is a number > 0."""
    try:
        interval = float(train_cfg.health_check_interval_s)
    except (TypeError, ValueError):
        interval = float("nan")
    if not interval > 0:
        raise ValueError(f"train.health_check_interval_s={train_cfg.health_check_interval_s!r}: must be a number of "
                         "seconds > 0")
    return interval


@contextlib.contextmanager
def controller_poll_interval(interval: float):
    """While the block runs, Ray Train controllers started from this process poll their workers every ``interval``
    seconds (``poll_interval_s``: ``train.health_check_interval_s``, checked; Ray passes the driver's ``RAY_TRAIN_*``
    variables to the controller it starts). A value the environment already holds wins. Yields the interval in force
    (seconds, as a string)."""
    if HEALTH_CHECK_ENV in os.environ:
        yield os.environ[HEALTH_CHECK_ENV]
        return
    os.environ[HEALTH_CHECK_ENV] = f"{interval:g}"
    try:
        yield os.environ[HEALTH_CHECK_ENV]
    finally:
        os.environ.pop(HEALTH_CHECK_ENV, None)


def worker_resources(train_cfg) -> dict:
    """Resources of one train worker: ``cpus_per_worker`` CPUs, a GPU with ``use_gpu``, ``worker_resources``."""
    return {"CPU": train_cfg.cpus_per_worker, **({"GPU": 1} if train_cfg.use_gpu else {}),
            **{k: float(v) for k, v in dict(train_cfg.worker_resources).items()}}


def controller_failure_limit(capacity_timeout_s: float, start_timeout_s: float) -> int:
    """Worker-group start attempts (each waits ``start_timeout_s``) that fit in ``capacity_timeout_s``; -1 (Ray's
    unlimited) only when the timeout is negative."""
    if capacity_timeout_s < 0:
        return -1
    return max(1, math.ceil(capacity_timeout_s / max(start_timeout_s, 1e-3)))


def capacity_message(stage: str, train_cfg, waited_s: float, available: dict, total: dict, nodes: int) -> str:
    """What is missing, in the words of the config: N workers x their resources against what the cluster has."""
    need = worker_resources(train_cfg)
    want = {k: v * train_cfg.num_workers for k, v in need.items()}
    short = {k: f"{v:g} wanted, {total.get(k, 0.0):g} in the cluster ({available.get(k, 0.0):g} free)"
             for k, v in want.items() if total.get(k, 0.0) < v or available.get(k, 0.0) < need[k]}
    return (f"stage {stage}: gave up after waiting about {waited_s:.0f} s (train.capacity_timeout_s="
            f"{train_cfg.capacity_timeout_s:g}) for {train_cfg.num_workers} train workers of {need} each; "
            f"missing: {short or 'none now, the cluster recovered too late'}; {nodes} node(s) alive. A node was "
            f"lost and not replaced: add capacity, lower train.num_workers, or raise train.capacity_timeout_s "
            f"(-1 waits forever), then rerun with the same train.run_name to resume from the last checkpoint.")


def _open_run(stage_name: str, model_preset: str, experiment: str, uri: str, run_key: str, run_name: str,
              init: InitSource, parent_run_id: Optional[str]):
    """(tracker, resumed) for the stage's MLflow run in ``experiment`` (``tracking.experiment``); a store that cannot
    be reached gives a disabled tracker."""
    from odvla.platform.tracking import ResilientTracker, ensure_experiment, get_or_create_run
    from odvla.platform.tracking.lineage import TAG_INIT_FROM, TAG_INIT_FROM_RUN, TAG_STAGE

    tracker = ResilientTracker(uri, None)
    tags = {TAG_STAGE: stage_name, TAG_INIT_FROM: init.ref or "", TAG_INIT_FROM_RUN: init.run_id,
            "odvla.model_preset": model_preset}
    opened = tracker.call("open run", lambda: get_or_create_run(
        tracker.client, ensure_experiment(tracker.client, experiment, uri), run_key, run_name, tags,
        parent_run_id))
    if opened is None:
        return tracker, False
    tracker.run_id, resumed = opened
    return tracker, resumed


def run_stage(cfg: Config, parent_run_id: Optional[str] = None, previous: Optional[InitSource] = None,
              register: Optional[bool] = None, on_progress: Optional[ProgressCallback] = None,
              worker_hooks: Sequence = ()) -> StageResult:
    """Train one stage on the current Ray cluster (``ray.init`` first, or it starts a local one).

    ``previous``: the export of the pipeline's previous stage (for ``stage.init_from: auto``). ``register``:
    register the export as ``tracking.registered_model`` (default: ``stage.registers_model``). ``on_progress``: called from a
    driver thread as ``(stage, step, total_steps, metrics)`` while the stage trains (``StageProgress``).
    ``worker_hooks``: picklable objects with ``after_checkpoint(step, attempt, rank)``, run on every train worker
    after each checkpoint (fault injection in tests).
    """
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from odvla.platform.tracking import TAG_CHECKPOINT, TAG_EXPORT, register_export, resolve_tracking_uri
    from odvla.platform.train.loop import planned_steps, train_func
    from odvla.platform.train.sample_log import LOG_DIR
    from odvla.platform.train.stage_data import build_stage_dataset

    check_stage(cfg.stage)
    poll_interval = poll_interval_s(cfg.train)  # checked before anything starts
    from odvla.platform.data.codebook import resolve_action_codebook

    resolve_action_codebook(cfg.model, cfg.data.shards)  # 'action': the codebook beside the shards, checked
    run_name = default_run_name(cfg.train, cfg.stage.name)
    storage = _storage_path(cfg.train)
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    init = resolve_init(cfg.stage, previous)
    t = cfg.train
    if t.bf16 and not t.use_gpu:
        from odvla.platform.machine import warn_cpu_bf16

        warn_cpu_bf16(f"{cfg.stage.name} (model {cfg.model.preset}, train.use_gpu=false)", "train.bf16=false")

    tracker, resumed = _open_run(cfg.stage.name, cfg.model.preset, cfg.tracking.experiment, uri,
                                 f"{storage}/{run_name}", run_name, init, parent_run_id)
    log.info("%s: run %r under %s (%s; MLflow %s run %s)", cfg.stage.name, run_name, storage,
             "resuming" if resumed else "new", uri, tracker.run_id)
    _warn_if_no_cpu_left_for_data(t)
    dataset, num_rows, mixture = build_stage_dataset(cfg.data, cfg.model.vision, cfg.stage, t.seed)
    total_steps = planned_steps(t, cfg.data.batch_size, num_rows, t.num_workers)
    try:  # decoding runs here when the rows are kept: a bad image fails the stage's run as it would in training
        dataset, cached = _cache_decoded(dataset, cfg.data, cfg.model.vision, t, cfg.stage.name, num_rows,
                                         total_steps)
    except BaseException:
        tracker.terminate("FAILED")
        raise
    if not resumed:
        tracker.log_params({**flatten(to_dict(cfg)), "data.train_rows": num_rows, "train.total_steps": total_steps,
                            "data.cached_decoded": cached})
        tracker.log_text(dump_yaml(cfg), "config.yaml")
        if mixture is not None:
            import json

            tracker.log_text(json.dumps(mixture, indent=1), "mixture.json")

    system_metrics = (cfg.tracking.log_system_metrics
                      and os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() != "false")
    loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": uri, "init_from": init.ref,
                   "total_steps": total_steps, "system_metrics": system_metrics,
                   "sample_log": f"{storage}/{run_name}/{LOG_DIR}", "hooks": list(worker_hooks)}
    start_timeout = float(os.environ.get(START_TIMEOUT_ENV, DEFAULT_START_TIMEOUT_S))
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=worker_resources(t)),
        run_config=RunConfig(storage_path=storage, name=run_name,
                             failure_config=FailureConfig(
                                 max_failures=t.max_failures,
                                 # Ray's default retries a worker group that cannot start forever, silently.
                                 controller_failure_limit=controller_failure_limit(t.capacity_timeout_s,
                                                                                   start_timeout),
                                 # survivors may finish a just-in-time checkpoint past a preemption deadline
                                 preemption_grace_s=max(float(t.preemption_grace_s), 0.0)),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
        # Deterministic block order, so the batches a resumed run skips are the ones it already trained on.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    try:
        with StageProgress(uri, tracker.run_id, cfg.stage.name, total_steps, on_progress), \
                controller_poll_interval(poll_interval):
            result = trainer.fit()
    except BaseException as e:
        tracker.terminate("FAILED")
        if _is_capacity_failure(e):
            raise CapacityError(_capacity_report(cfg.stage.name, t, start_timeout)) from e
        raise
    if result.checkpoint is None:
        tracker.terminate("FAILED")
        raise RuntimeError(f"stage {cfg.stage.name}: the run {run_name} ended without a checkpoint")
    ckpt_path = result.checkpoint.path
    if result.checkpoint.filesystem.type_name != "local":  # remote storage: bring the final checkpoint here
        local = Path(tempfile.mkdtemp(prefix=f"odvla-{run_name}-"))
        result.checkpoint.to_directory(str(local))
        ckpt_path = str(local)
    export_dir = Path(ckpt_path) / "export"
    if not (export_dir / "model.safetensors").exists():
        raise RuntimeError(f"stage {cfg.stage.name}: final checkpoint {ckpt_path} holds no export")

    metrics = dict(result.metrics or {})
    tracker.set_tags({TAG_CHECKPOINT: ckpt_path, TAG_EXPORT: str(export_dir), "odvla.run_name": run_name})
    tracker.log_metrics({f"final_{k}": v for k, v in metrics.items() if isinstance(v, (int, float))},
                        step=int(metrics.get("global_step", 0)))
    tracker.log_artifacts(export_dir, "export")
    if cfg.tracking.log_checkpoint:
        tracker.log_artifacts(Path(ckpt_path) / "deepspeed", "checkpoint/deepspeed")
        tracker.log_artifact(Path(ckpt_path) / "train_state.json", "checkpoint")
    version = None
    if (register if register is not None else cfg.stage.registers_model) and tracker.run_id:
        version = tracker.call("register model", register_export, tracker.client, tracker.run_id,
                                cfg.tracking.registered_model,
                                tags={"stage": cfg.stage.name, "run_name": run_name})
        if version:
            tracker.set_tags({"odvla.registered_version": f"{cfg.tracking.registered_model}/{version}"})
    tracker.terminate("FINISHED")
    return StageResult(stage=cfg.stage.name, run_id=tracker.run_id, export_dir=export_dir, metrics=metrics,
                       checkpoint_path=ckpt_path, run_name=run_name, registered_version=version,
                       tracking_messages=list(tracker.messages))


def _is_capacity_failure(error: BaseException) -> bool:
    from ray.train import ControllerError

    cause = getattr(error, "controller_failure", None)
    return isinstance(error, ControllerError) and type(cause).__name__ in (
        "WorkerGroupStartupTimeoutError", "WorkerGroupStartupFailedError")


def _alive_nodes() -> int:
    """Alive nodes of the connected Ray cluster."""
    import ray

    return sum(1 for n in ray.nodes() if n.get("Alive"))


def _capacity_report(stage: str, t, start_timeout: float) -> str:
    import ray

    waited = controller_failure_limit(t.capacity_timeout_s, start_timeout) * start_timeout
    try:
        return capacity_message(stage, t, waited, ray.available_resources(), ray.cluster_resources(),
                                _alive_nodes())
    except Exception:  # the cluster itself is gone: say what was wanted
        return capacity_message(stage, t, waited, {}, {}, 0)


def _cache_decoded(dataset, data, vision, t, stage: str, num_rows: int, total_steps: int):
    """(dataset, cached): the stage's dataset, materialized on the driver when ``data.cache_decoded`` says so
    (``stage_data.cache_plan``), so that its epochs after the first read the decoded rows from the object store.
    ``data``, ``vision``, ``t``: the ``data``, ``model.vision`` and ``train`` sections."""
    import time

    from odvla.platform.train.stage_data import cache_plan

    plan = cache_plan(data, vision, num_rows, data.batch_size * t.grad_accum * t.num_workers, total_steps,
                      _alive_nodes())
    if not plan.cache:
        log.info("%s: decoded rows not kept across epochs: %s", stage, plan.reason)
        return dataset, False
    t0 = time.perf_counter()
    dataset = dataset.materialize()
    log.info("%s: decoded rows kept across epochs (%s): %d rows decoded in %.1f s", stage, plan.reason,
             dataset.count(), time.perf_counter() - t0)
    return dataset, True


def _warn_if_no_cpu_left_for_data(t) -> None:
    """Train workers that take every CPU of the cluster leave none for the Ray Data tasks that feed them: the run
    then waits forever without an error. Say so up front (an autoscaling cluster may still grow, so no error)."""
    import ray

    if not ray.is_initialized():
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = float(t.num_workers) * float(t.cpus_per_worker)
    if total and need >= total:
        log.warning("train.num_workers x train.cpus_per_worker = %g CPUs, the cluster has %g: no CPU is left for the "
                    "Ray Data tasks that read and decode the samples, so training will wait for the cluster to grow. "
                    "Lower train.cpus_per_worker, or start Ray with more CPUs (ray start --num-cpus / "
                    "ray.init(num_cpus=...)).", need, total)
