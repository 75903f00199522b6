"""The training loop of every stage: ``train_func`` runs on each Ray Train worker with one DeepSpeed engine.

    model = OpenDriveVLA(cfg.model) <- init export (if any); set_trainable(stage)
    engine = deepspeed.initialize(model, trainable params, build_ds_config(cfg))
    resume: ray.train.get_checkpoint() -> engine.load_checkpoint, TrainState (step, epoch, batches consumed)
    for each micro-batch of get_dataset_shard('train').iter_torch_batches(collate_fn=collate):
        loss = sum_k w_k * losses[k];  engine.backward(loss); engine.step()
        rank 0 logs loss / lr / samples_per_s / tokens_per_s to MLflow (ResilientTracker)
        every train.checkpoint_every steps and at the end: every rank saves its shard -> ray.train.report
    end: consolidated export (rank 0) inside the final checkpoint

The model never sees Ray, DeepSpeed or MLflow; this file is the only place they meet.
"""
from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Optional

import torch

from odvla.platform.config import from_dict
from odvla.platform.train.checkpoint import EXPORT_DIR, TrainState, load_into, new_checkpoint_dir, save_shard
from odvla.platform.train.deepspeed_config import build_ds_config, build_scheduler

HOOK_ENV = "ODVLA_TRAIN_HOOK_DIR"
"""Test hook: a folder where rank 0 writes ``rank0-<attempt>.pid`` after the first checkpoint of an attempt and,
on the first attempt, waits for a ``go`` file there, so a test can kill a worker or the tracking server at a
known point of the run. Unset in normal runs."""


def _to_device(batch: dict, device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}


def _total_loss(losses: dict, weights: dict) -> torch.Tensor:
    total = None
    for k, w in weights.items():
        if float(w) == 0.0 or k not in losses:
            continue
        term = float(w) * losses[k]
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"stage.loss_weights {weights}: no positive weight on a loss the model returned "
                         f"({sorted(k for k in losses if k != 'answer_tokens')})")
    return total


def _count_tokens(batch: dict, out: dict) -> int:
    for key in ("tokens", "input_tokens", "answer_tokens"):
        v = out.get(key)
        if v is not None:
            return int(v.item() if torch.is_tensor(v) else v)
    return 0


def _hook(hook_dir: Optional[str], attempt: int, step: int) -> None:
    if not hook_dir:
        return
    d = Path(hook_dir)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"rank0-{attempt}.pid").write_text(f"{os.getpid()} {step}\n")
    if attempt == 0:
        deadline = time.monotonic() + 180
        while not (d / "go").exists() and time.monotonic() < deadline:
            time.sleep(0.1)


def _start_tracking(config: dict, cfg, state: TrainState, resumed: bool):
    from odvla.platform.tracking import ResilientTracker

    tracker = ResilientTracker(config["tracking_uri"], config.get("run_id"))
    monitor = None
    if tracker.enabled and config.get("system_metrics"):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            monitor = SystemMetricsMonitor(tracker.run_id, sampling_interval=5, samples_before_logging=1,
                                           resume_logging=resumed, tracking_uri=config["tracking_uri"])
            monitor.start()
        except Exception as e:  # psutil missing, server down: tracking is never a reason to stop training
            print(f"[odvla.train] system metrics disabled: {e}")
            monitor = None
    return tracker, monitor


def train_func(config: dict) -> None:
    """Ray Train worker entry. ``config``: {'cfg': resolved config dict, 'run_id', 'tracking_uri',
    'init_from' (export ref or None), 'total_steps', 'system_metrics', 'hook_dir'}."""
    import deepspeed
    import ray.train

    from odvla.model.vla import OpenDriveVLA
    from odvla.platform.data.collate import collate
    from odvla.platform.export import load_weights, resolve_export, save_export

    cfg = from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(cfg.train.seed)

    model = OpenDriveVLA(cfg.model)
    if config.get("init_from"):
        load_weights(model, resolve_export(config["init_from"], config["tracking_uri"]))
    trainable = model.set_trainable(cfg.stage.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {cfg.stage.name}: set_trainable({cfg.stage.trainable!r}) left nothing to train")
    total_steps = int(config["total_steps"])
    ds_config = build_ds_config(cfg, world, total_steps)
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, cfg, total_steps))
    device = engine.device

    state = TrainState(run_id=config.get("run_id"))
    ckpt = ray.train.get_checkpoint()
    resumed = ckpt is not None
    if ckpt is not None:
        with ckpt.as_directory() as d:
            state = load_into(engine, d)
        state.restarts += 1
        if config.get("run_id") and state.run_id and state.run_id != config["run_id"]:
            print(f"[odvla.train] checkpoint was logged to MLflow run {state.run_id}, now {config['run_id']}")
        state.run_id = config.get("run_id") or state.run_id
        if engine.global_steps != state.global_step:
            raise RuntimeError(f"checkpoint step mismatch: engine {engine.global_steps} vs state {state.global_step}")

    tracker = monitor = None
    if rank == 0:
        tracker, monitor = _start_tracking(config, cfg, state, resumed)
        if resumed:
            tracker.set_tags({"odvla.resumed_from_step": state.global_step, "odvla.restarts": state.restarts})
        else:
            tracker.log_params({"num_trainable_params": sum(p.numel() for p in params),
                                "num_trainable_tensors": len(trainable), "world_size": world})
    attempt = state.restarts

    shard = ray.train.get_dataset_shard("train")
    weights = dict(cfg.stage.loss_weights)
    accum = cfg.train.grad_accum
    max_steps = total_steps
    epochs = cfg.train.epochs if cfg.train.max_steps <= 0 else 10**9
    checkpoint_every = cfg.train.checkpoint_every
    hooked = False
    last: dict = {}
    t_window, samples_window, tokens_window = time.perf_counter(), 0, 0
    done = state.global_step >= max_steps

    def report(final: bool = False) -> None:
        nonlocal hooked
        d = new_checkpoint_dir()
        save_shard(engine, d, state, rank)
        if final:
            export_state = None
            if cfg.train.zero_stage == 3:  # gather the partitioned weights (collective)
                export_state = engine._zero3_consolidated_16bit_state_dict()
            if rank == 0:
                save_export(engine.module, cfg, d / EXPORT_DIR, state_dict=export_state)
        metrics = {**last, "global_step": state.global_step, "epoch": state.epoch,
                   "samples_seen": state.samples_seen, "tokens_seen": state.tokens_seen,
                   "restarts": state.restarts, "final": final,
                   "tracking_dropped": tracker.dropped if tracker else 0,
                   "tracking_lost": bool(tracker and tracker.lost)}
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(d)),
                         checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
        if rank == 0 and not hooked:
            hooked = True
            _hook(config.get("hook_dir"), attempt, state.global_step)

    engine.train()
    while not done and state.epoch < epochs:
        skip = state.batches_in_epoch
        buf = int(cfg.data.shuffle_buffer)
        # a seed per epoch: a new order each epoch, the same one again after a restart (the skip below relies on it)
        it = shard.iter_torch_batches(batch_size=cfg.data.batch_size, collate_fn=collate,
                                      local_shuffle_buffer_size=buf if buf > 0 else None,
                                      local_shuffle_seed=int(cfg.train.seed) + state.epoch if buf > 0 else None)
        seen = 0
        for i, batch in enumerate(it):
            seen += 1
            if i < skip:  # consumed before the restart: never trained on twice
                continue
            batch = _to_device(batch, device)
            out = engine(batch)
            loss = _total_loss(out, weights)
            engine.backward(loss)
            engine.step()
            n = len(batch["sample_token"])
            state.batches_in_epoch += 1
            samples_window += n
            tokens_window += _count_tokens(batch, out)
            if state.batches_in_epoch % accum:
                continue
            # one optimiser step done (DeepSpeed counts it in engine.global_steps)
            state.global_step = int(engine.global_steps)
            stats = torch.tensor([loss.detach().float().item(), samples_window, tokens_window,
                                  *[float(out[k].detach()) if k in out else 0.0 for k in ("lm", "det", "map", "motion")]])
            if world > 1:
                torch.distributed.all_reduce(stats)
            dt = max(time.perf_counter() - t_window, 1e-9)
            state.samples_seen += int(stats[1])
            state.tokens_seen += int(stats[2])
            last = {"loss": float(stats[0]) / world, "lr": float(scheduler.get_last_lr()[0]),
                    "samples_per_s": float(stats[1]) / dt, "tokens_per_s": float(stats[2]) / dt,
                    "samples_per_s_per_worker": float(stats[1]) / dt / world,
                    "tokens_per_s_per_worker": float(stats[2]) / dt / world,
                    **{f"loss_{k}": float(stats[3 + j]) / world for j, k in enumerate(("lm", "det", "map", "motion"))}}
            t_window, samples_window, tokens_window = time.perf_counter(), 0, 0
            if rank == 0 and state.global_step % max(cfg.train.log_every, 1) == 0:
                tracker.log_metrics({**last, "epoch": state.epoch}, step=state.global_step)
            if state.global_step >= max_steps:
                done = True
                break
            if checkpoint_every > 0 and state.global_step % checkpoint_every == 0:
                report()
        if seen == 0:
            raise RuntimeError(f"rank {rank}: the training data shard yielded no batch in epoch {state.epoch} "
                               f"({cfg.data.shards}, mixture {cfg.stage.mixture})")
        if not done:
            state.epoch += 1
            state.batches_in_epoch = 0
            if cfg.train.max_steps <= 0 and state.epoch >= epochs:
                done = True
    report(final=True)
    if rank == 0:
        if monitor is not None:
            try:
                monitor.finish()
            except Exception:
                pass
        if tracker.lost or tracker.dropped:
            print(f"[odvla.train] MLflow tracking: {tracker.dropped} records could not be written")


def planned_steps(cfg, num_rows: int, world_size: int) -> int:
    """Optimiser steps of the stage: ``train.max_steps`` or ``epochs`` over ``num_rows`` split across workers."""
    if cfg.train.max_steps > 0:
        return cfg.train.max_steps
    per_worker = num_rows // max(world_size, 1)
    batches = math.ceil(per_worker / cfg.data.batch_size)
    steps = (batches // cfg.train.grad_accum) * cfg.train.epochs
    if steps <= 0:
        raise ValueError(f"{num_rows} training rows over {world_size} workers at batch {cfg.data.batch_size} x "
                         f"accumulation {cfg.train.grad_accum} give no optimiser step; lower them or add data")
    return steps
