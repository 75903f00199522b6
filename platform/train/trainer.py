"""One stage as a Ray Train V2 run: ``run_stage(cfg) -> StageResult``.

    TorchTrainer(train_func,
                 scaling_config=ScalingConfig(num_workers, use_gpu),           # gloo on CPU, NCCL on GPU
                 run_config=RunConfig(storage_path=<absolute>, name=<run name>,
                                      failure_config=FailureConfig(max_failures)),
                 datasets={'train': <Ray Dataset of the stage mixture>})

Resuming is rerunning with the same ``train.storage_path`` and ``train.run_name``: Ray Train finds the run's latest
checkpoint and ``train_func`` continues from it; the MLflow run is found by the same key, so it continues too.
The driver opens the stage's MLflow run (params, config, lineage tags); rank 0 logs the per-step metrics into it;
the driver adds the export (and, by config, the final checkpoint) as artifacts at the end.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from odvla.platform.config import Config, dump_yaml, flatten, to_dict
from odvla.platform.train.progress import ProgressCallback, StageProgress
from odvla.platform.train.stages import InitSource, check_stage, default_run_name, resolve_init


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


def _storage_path(cfg: Config) -> str:
    p = cfg.train.storage_path
    return p if "://" in p else str(Path(p).expanduser().resolve())


def _open_run(cfg: Config, uri: str, run_key: str, run_name: str, init: InitSource,
              parent_run_id: Optional[str]):
    """(tracker, resumed) for the stage's MLflow run; a store that cannot be reached gives a disabled tracker."""
    from odvla.platform.tracking import ResilientTracker, ensure_experiment, get_or_create_run
    from odvla.platform.tracking.lineage import TAG_INIT_FROM, TAG_INIT_FROM_RUN, TAG_STAGE

    tracker = ResilientTracker(uri, None)
    tags = {TAG_STAGE: cfg.stage.name, TAG_INIT_FROM: init.ref or "", TAG_INIT_FROM_RUN: init.run_id,
            "odvla.model_preset": cfg.model.preset}
    opened = tracker.call("open run", lambda: get_or_create_run(
        tracker.client, ensure_experiment(tracker.client, cfg.tracking.experiment, uri), run_key, run_name, tags,
        parent_run_id))
    if opened is None:
        return tracker, False
    tracker.run_id, resumed = opened
    return tracker, resumed


def run_stage(cfg: Config, parent_run_id: Optional[str] = None, previous: Optional[InitSource] = None,
              register: Optional[bool] = None, on_progress: Optional[ProgressCallback] = None) -> StageResult:
    """Train one stage on the current Ray cluster (``ray.init`` first, or it starts a local one).

    ``previous``: the export of the pipeline's previous stage (for ``stage.init_from: auto``). ``register``:
    register the export as ``tracking.registered_model`` (default: ``stage.registers_model``). ``on_progress``: called from a
    driver thread as ``(stage, step, total_steps, metrics)`` while the stage trains (``StageProgress``).
    """
    import ray.train
    from ray.data import ExecutionOptions
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from odvla.platform.tracking import TAG_CHECKPOINT, TAG_EXPORT, register_export, resolve_tracking_uri
    from odvla.platform.train.loop import HOOK_ENV, planned_steps, train_func
    from odvla.platform.train.stage_data import build_stage_dataset

    check_stage(cfg.stage)
    run_name = default_run_name(cfg.train, cfg.stage.name)
    storage = _storage_path(cfg)
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    init = resolve_init(cfg.stage, previous)
    t = cfg.train

    tracker, resumed = _open_run(cfg, uri, f"{storage}/{run_name}", run_name, init, parent_run_id)
    print(f"[odvla.train] {cfg.stage.name}: run {run_name!r} under {storage} "
          f"({'resuming' if resumed else 'new'}; MLflow {uri} run {tracker.run_id})", flush=True)
    _warn_if_no_cpu_left_for_data(t)
    dataset, num_rows, mixture = build_stage_dataset(cfg)
    total_steps = planned_steps(cfg, num_rows, t.num_workers)
    if not resumed:
        tracker.log_params({**flatten(to_dict(cfg)), "data.train_rows": num_rows, "train.total_steps": total_steps})
        tracker.log_text(dump_yaml(cfg), "config.yaml")
        if mixture is not None:
            import json

            tracker.log_text(json.dumps(mixture, indent=1), "mixture.json")

    system_metrics = (cfg.tracking.log_system_metrics
                      and os.environ.get("MLFLOW_ENABLE_SYSTEM_METRICS_LOGGING", "true").lower() != "false")
    loop_config = {"cfg": to_dict(cfg), "run_id": tracker.run_id, "tracking_uri": uri, "init_from": init.ref,
                   "total_steps": total_steps, "system_metrics": system_metrics,
                   "hook_dir": os.environ.get(HOOK_ENV)}
    trainer = TorchTrainer(
        train_func,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker={"CPU": t.cpus_per_worker, **({"GPU": 1} if t.use_gpu else {})}),
        run_config=RunConfig(storage_path=storage, name=run_name,
                             failure_config=FailureConfig(max_failures=t.max_failures),
                             checkpoint_config=CheckpointConfig(num_to_keep=2)),
        datasets={"train": dataset},
        # Deterministic block order, so the batches a resumed run skips are the ones it already trained on.
        dataset_config=DataConfig(execution_options=ExecutionOptions(preserve_order=True)),
    )
    try:
        with StageProgress(uri, tracker.run_id, cfg.stage.name, total_steps, on_progress):
            result = trainer.fit()
    except BaseException:
        tracker.terminate("FAILED")
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


def _warn_if_no_cpu_left_for_data(t) -> None:
    """Train workers that take every CPU of the cluster leave none for the Ray Data tasks that feed them: the run
    then waits forever without an error. Say so up front (an autoscaling cluster may still grow, so no error)."""
    import ray

    if not ray.is_initialized():
        return
    total = float(ray.cluster_resources().get("CPU", 0.0))
    need = float(t.num_workers) * float(t.cpus_per_worker)
    if total and need >= total:
        print(f"[odvla.train] WARNING: train.num_workers x train.cpus_per_worker = {need:g} CPUs, the cluster has "
              f"{total:g}: no CPU is left for the Ray Data tasks that read and decode the samples, so training will "
              "wait for the cluster to grow. Lower train.cpus_per_worker, or start Ray with more CPUs "
              "(ray start --num-cpus / ray.init(num_cpus=...)).", flush=True)
