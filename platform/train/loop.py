"""The training loop of every stage: ``train_func`` runs on each Ray Train worker with one DeepSpeed engine.

Read top to bottom:

    train_func(config)
      worker = setup_worker(config)         model <- init export (if any); set_trainable(stage.trainable);
                                            engine = deepspeed.initialize(model, trainable params, ds config)
      resume_from_checkpoint(worker)        ray.train.get_checkpoint() -> engine.load_checkpoint, TrainState
      start_tracking(worker)                rank 0: MLflow (ResilientTracker) + system metrics
      train(worker)                         epochs of train_epoch:
        train_epoch                           each micro-batch of get_dataset_shard('train') -> forward_backward_step;
                                              every grad_accum micro-batches one optimiser step -> finish_step
                                              (all-reduced stats, sample log, MLflow), every checkpoint_every steps
                                              report_checkpoint
      report_checkpoint(final=True)         every rank saves its shard; rank 0 adds the consolidated export
      finish_tracking(worker)

The model never sees Ray, DeepSpeed or MLflow; this file is the only place they meet. ``config['hooks']``: objects
with ``after_checkpoint(step, attempt, rank)``, called on every rank after each checkpoint is reported (fault
injection in tests, custom notifications); none in a normal run.

The worker holds the config sections the loop reads (``Worker.train``, ``.data``, ``.stage``), built from the
resolved config dict ``config['cfg']``; the root ``Config`` is rebuilt only where the final checkpoint writes the
whole of it into the export (``report_checkpoint``). Messages go to the ``odvla.platform.train.loop`` logger;
``train_func`` gives the ``odvla`` loggers a stderr handler when Ray has not (``log_setup.configure``), so they land
in the worker's log.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import torch

from odvla.model.profiling import scope
from odvla.model.vla import COUNT_KEYS
from odvla.platform.config.loader import merge
from odvla.platform.train.checkpoint import EXPORT_DIR, TrainState, load_into, new_checkpoint_dir, save_shard
from odvla.platform.train.deepspeed_config import build_ds_config, build_scheduler
from odvla.platform.train.mixed_precision import match_norm_buffers
from odvla.platform.train.sample_log import SampleLog

if TYPE_CHECKING:
    from odvla.platform.config.schema import DataConfig, StageConfig, TrainConfig

log = logging.getLogger(__name__)

LOSS_TERMS = ("lm", "det", "map", "motion")
"""Loss terms whose per-step values are logged (``loss_<term>``)."""


@dataclass
class Worker:
    """One Ray Train worker's run: its job, the config sections it reads, engine, loop state and (rank 0)
    tracking."""

    job: dict
    """``train_func``'s input (see there): the resolved config as a dict, MLflow run id and tracking URI, init
    export, total steps, sample log folder, hooks."""
    train: TrainConfig
    data: DataConfig
    stage: StageConfig
    rank: int
    world: int
    engine: Any
    scheduler: Any
    total_steps: int
    num_params: int
    num_tensors: int
    state: TrainState = field(default_factory=TrainState)
    resumed: bool = False
    preemption: Any = None
    """``PreemptionCheck``: a just-in-time checkpoint on a preemption notice (set in ``train``)."""
    tracker: Any = None
    monitor: Any = None
    sample_log: Optional[SampleLog] = None
    last: dict = field(default_factory=dict)
    """Metrics of the last optimiser step (loss, lr, throughput), repeated in every checkpoint report."""
    hooks: list = field(default_factory=list)
    profiler: Any = None
    """``StepProfiler`` on rank 0 when ``train.profile_steps`` > 0."""
    partition: dict = field(default_factory=dict)
    """Parameter elements each rank held right after the model was built (``params_local_rank<r>``,
    ``params_total``)."""


@dataclass
class StepWindow:
    """What the micro-batches since the last optimiser step consumed (throughput and the sample log)."""

    started: float = field(default_factory=time.perf_counter)
    samples: int = 0
    tokens: int = 0
    sample_tokens: list = field(default_factory=list)
    llm_tokens: int = 0
    """LLM input tokens (prompt + answer) of the window's micro-batches."""
    data_wait: float = 0.0
    """Seconds spent waiting for the next batch from the data shard (``data_wait_frac`` = this / the window)."""


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
                         f"({sorted(k for k in losses if k not in COUNT_KEYS)})")
    return total


def _count_tokens(batch: dict, out: dict) -> int:
    for key in ("tokens", "input_tokens", "answer_tokens"):
        v = out.get(key)
        if v is not None:
            return int(v.item() if torch.is_tensor(v) else v)
    return 0


# ---------------------------------------------------------------------------------------------------- setup


def config_section(job: dict, name: str, section_type):
    """The section ``name`` of the resolved config dict ``job['cfg']`` as a ``section_type`` dataclass (keys and
    types checked as ``load_config`` checks them; errors name the dotted key)."""
    section = section_type()
    merge(section, job["cfg"].get(name, {}), f"{name}.")
    return section


def setup_worker(config: dict) -> Worker:
    """Build the model (from the init export when given), freeze what the stage does not train, wrap it in a
    DeepSpeed engine with the stage's optimiser and schedule."""
    import deepspeed
    import ray.train

    from odvla.model.config import ModelConfig
    from odvla.platform.config.schema import DataConfig, StageConfig, TrainConfig
    from odvla.platform.export import resolve_export
    from odvla.platform.train.partitioned_init import build_model, gather_parameter_counts

    train_cfg, data_cfg = config_section(config, "train", TrainConfig), config_section(config, "data", DataConfig)
    stage_cfg = config_section(config, "stage", StageConfig)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.manual_seed(train_cfg.seed)

    ds_config = build_ds_config(train_cfg, data_cfg.batch_size, world)
    init = resolve_export(config["init_from"], config["tracking_uri"]) if config.get("init_from") else None
    # ZeRO-3: the LLM is partitioned over the ranks as it is built
    model = build_model(config_section(config, "model", ModelConfig), ds_config, init)
    partition = gather_parameter_counts(model, rank, world)
    trainable = model.set_trainable(stage_cfg.trainable)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"stage {stage_cfg.name}: set_trainable({stage_cfg.trainable!r}) left nothing to train")
    total_steps = int(config["total_steps"])
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, model_parameters=params, config=ds_config,
        lr_scheduler=lambda opt: build_scheduler(opt, train_cfg, total_steps))
    match_norm_buffers(engine.module)  # bf16: DeepSpeed cast the weights, not the BatchNorm statistics
    return Worker(job=config, train=train_cfg, data=data_cfg, stage=stage_cfg, rank=rank, world=world,
                  engine=engine, scheduler=scheduler,
                  total_steps=total_steps, num_params=sum(getattr(p, "ds_numel", p.numel()) for p in params),
                  num_tensors=len(trainable), state=TrainState(run_id=config.get("run_id")),
                  hooks=list(config.get("hooks") or []), partition=partition)


def resume_from_checkpoint(w: Worker) -> None:
    """Load the run's latest Ray Train checkpoint (every rank its shard) and the loop state, if there is one."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as ckpt_dir:
            state = load_into(w.engine, ckpt_dir)
        state.restarts += 1
        run_id = w.job.get("run_id")
        if run_id and state.run_id and state.run_id != run_id:
            log.warning("checkpoint was logged to MLflow run %s, now %s", state.run_id, run_id)
        state.run_id = run_id or state.run_id
        if w.engine.global_steps != state.global_step:
            raise RuntimeError(f"checkpoint step mismatch: engine {w.engine.global_steps} vs state "
                               f"{state.global_step}")
        w.state, w.resumed = state, True
    if w.rank == 0:
        w.sample_log = SampleLog(w.job.get("sample_log"), attempt=w.state.restarts)


def start_tracking(w: Worker) -> None:
    """Rank 0: log into the stage's MLflow run (opened by the driver); tracking never stops training."""
    if w.rank != 0:
        return
    from odvla.platform.tracking import ResilientTracker

    uri = w.job["tracking_uri"]
    w.tracker = ResilientTracker(uri, w.job.get("run_id"))
    if w.tracker.enabled and w.job.get("system_metrics"):
        try:
            from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

            w.monitor = SystemMetricsMonitor(w.tracker.run_id, sampling_interval=5, samples_before_logging=1,
                                             resume_logging=w.resumed, tracking_uri=uri)
            w.monitor.start()
        except Exception as e:  # psutil missing, server down: tracking is never a reason to stop training
            log.warning("system metrics disabled: %s", e)
            w.monitor = None
    if w.resumed:
        w.tracker.set_tags({"odvla.resumed_from_step": w.state.global_step, "odvla.restarts": w.state.restarts})
    else:
        w.tracker.log_params({"num_trainable_params": w.num_params, "num_trainable_tensors": w.num_tensors,
                              "world_size": w.world, **w.partition})


# ----------------------------------------------------------------------------------------------------- steps


def forward_backward_step(engine, batch: dict, weights: dict) -> tuple[torch.Tensor, dict]:
    """One micro-batch: forward, weighted total loss, backward, ``engine.step`` (DeepSpeed applies the optimiser
    only at the accumulation boundary). Returns (total loss, the model's outputs)."""
    with scope("train.forward"):
        out = engine(_to_device(batch, engine.device))
        loss = _total_loss(out, weights)
    with scope("train.backward"):
        engine.backward(loss)
    with scope("train.optimizer"):
        engine.step()
    return loss, out


def finish_step(w: Worker, loss: torch.Tensor, out: dict, window: StepWindow) -> None:
    """After an optimiser step: the step counters, stats all-reduced over ranks, the sample log, MLflow."""
    state = w.state
    state.global_step = int(w.engine.global_steps)  # DeepSpeed counts optimiser steps
    wait_frac = window.data_wait / max(time.perf_counter() - window.started, 1e-9)
    stats = torch.tensor([loss.detach().float().item(), window.samples, window.tokens,
                          *[float(out[k].detach()) if k in out else 0.0 for k in LOSS_TERMS], wait_frac],
                         dtype=torch.float64, device=w.engine.device)  # NCCL reduces device tensors only
    ranks = [window.sample_tokens]
    if w.world > 1:
        torch.distributed.all_reduce(stats)
    stats = stats.cpu()
    if w.world > 1:
        ranks = [None] * w.world
        torch.distributed.all_gather_object(ranks, window.sample_tokens)
    if w.sample_log is not None:
        w.sample_log.add(state.global_step, state.epoch, ranks)
    dt = max(time.perf_counter() - window.started, 1e-9)
    state.samples_seen += int(stats[1])
    state.tokens_seen += int(stats[2])
    w.last = {"loss": float(stats[0]) / w.world, "lr": float(w.scheduler.get_last_lr()[0]),
              "samples_per_s": float(stats[1]) / dt, "tokens_per_s": float(stats[2]) / dt,
              "samples_per_s_per_worker": float(stats[1]) / dt / w.world,
              "tokens_per_s_per_worker": float(stats[2]) / dt / w.world,
              **{f"loss_{k}": float(stats[3 + j]) / w.world for j, k in enumerate(LOSS_TERMS)},
              "data_wait_frac": float(stats[3 + len(LOSS_TERMS)]) / w.world}  # mean over ranks
    if w.rank == 0 and state.global_step % max(w.train.log_every, 1) == 0:
        w.tracker.log_metrics({**w.last, "epoch": state.epoch}, step=state.global_step)


def peak_rss_gb(w: Worker) -> float:
    """Largest peak resident memory of any rank's process so far, in GB (10^9 bytes; Linux ``ru_maxrss`` is KiB).
    A collective: every rank calls it."""
    import resource

    mine = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9
    if w.world == 1:
        return mine
    peaks = [None] * w.world
    torch.distributed.all_gather_object(peaks, mine)
    return max(peaks)


def report_checkpoint(w: Worker, final: bool = False) -> None:
    """Every rank saves its DeepSpeed shard (collective) and reports it with the metrics; the final checkpoint
    also holds the consolidated export (rank 0). Rank 0 writes the sample log of the steps since the last one."""
    import ray.train

    from odvla.platform.export import save_export

    ckpt_dir = new_checkpoint_dir()
    save_shard(w.engine, ckpt_dir, w.state, w.rank)
    if final:
        export_state = None
        if w.train.zero_stage == 3:  # gather the partitioned weights (collective)
            export_state = w.engine._zero3_consolidated_16bit_state_dict()
        if w.rank == 0:
            from odvla.platform.config import from_dict

            # The export holds the whole resolved config (its config.yaml rebuilds the network and names the run's
            # settings), so the root is rebuilt here, once, from the job's config dict: the loop's one
            # entry-point-level use of the root (tests/test_layout.py allows exactly this function).
            save_export(w.engine.module, from_dict(w.job["cfg"]), ckpt_dir / EXPORT_DIR, state_dict=export_state)
    if w.sample_log is not None:
        w.sample_log.flush()
    state, tracker = w.state, w.tracker
    rss = peak_rss_gb(w)
    if w.rank == 0:
        w.tracker.log_metrics({"peak_rss_gb": rss}, step=state.global_step)
    metrics = {**w.last, "peak_rss_gb": rss, "global_step": state.global_step, "epoch": state.epoch,
               "samples_seen": state.samples_seen, "tokens_seen": state.tokens_seen, "restarts": state.restarts,
               "final": final, "tracking_dropped": tracker.dropped if tracker else 0,
               "tracking_failures": tracker.failures if tracker else 0, "tracking_lost": bool(tracker and tracker.lost)}
    ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(ckpt_dir)),
                     checkpoint_upload_mode=ray.train.CheckpointUploadMode.ASYNC)
    for hook in w.hooks:
        hook.after_checkpoint(state.global_step, state.restarts, w.rank)


# ------------------------------------------------------------------------------------------------------ loop


def _timed(batches, current_window):
    """``batches``, adding the time each ``next()`` blocks to ``current_window().data_wait``."""
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            with scope("train.data"):
                batch = next(it)
        except StopIteration:
            return
        current_window().data_wait += time.perf_counter() - t0
        yield batch


def _epoch_batches(w: Worker, shard):
    """The epoch's micro-batches; a seed per epoch gives a new order each epoch and the same one again after a
    restart (the skip in ``train_epoch`` relies on it)."""
    from odvla.platform.data.collate import collate

    shuffle_buffer = int(w.data.shuffle_buffer)
    shuffled = shuffle_buffer > 0
    return shard.iter_torch_batches(batch_size=w.data.batch_size, collate_fn=collate,
                                    local_shuffle_buffer_size=shuffle_buffer if shuffled else None,
                                    local_shuffle_seed=int(w.train.seed) + w.state.epoch if shuffled else None)


def train_epoch(w: Worker, shard) -> bool:
    """Train on the rest of the current epoch; True once ``total_steps`` optimiser steps are done."""
    state = w.state
    skip, seen = state.batches_in_epoch, 0
    weights, accum, every = dict(w.stage.loss_weights), w.train.grad_accum, w.train.checkpoint_every
    window = StepWindow()
    if w.profiler is not None:
        w.profiler.maybe_start(state.global_step)
    for i, batch in enumerate(_timed(_epoch_batches(w, shard), lambda: window)):
        seen += 1
        if i < skip:  # consumed before the restart: never trained on twice
            continue
        loss, out = forward_backward_step(w.engine, batch, weights)
        state.batches_in_epoch += 1
        window.samples += len(batch["sample_token"])
        window.tokens += _count_tokens(batch, out)
        if w.profiler is not None and "llm_tokens" in out:  # only the profile reads it: no extra sync otherwise
            window.llm_tokens += int(out["llm_tokens"])
        # a clip row (data.clip_len > 1) is logged by the keyframe it ends at
        window.sample_tokens.extend(str(t[-1]) if isinstance(t, list) else str(t) for t in batch["sample_token"])
        if state.batches_in_epoch % accum:
            continue
        with scope("train.finish_step"):
            finish_step(w, loss, out, window)
        if w.profiler is not None:
            profile_step(w, window)
        window = StepWindow()
        if state.global_step >= w.total_steps:
            return True
        if every > 0 and state.global_step % every == 0:
            timed_checkpoint(w)
        elif w.preemption is not None and w.preemption.checkpoint_now():
            timed_checkpoint(w)  # a node of this run is about to be reclaimed
    if seen == 0:
        raise RuntimeError(f"rank {w.rank}: the training data shard yielded no batch in epoch {state.epoch} "
                           f"({w.data.shards}, mixture {w.stage.mixture})")
    return False


def profile_step(w: Worker, window: StepWindow) -> None:
    """Rank 0 with ``train.profile_steps``: after the last profiled step, log the table (``step_profile.md``) and
    its per-part milliseconds (``profile/<part>_ms``) to the run; start recording when the warm-up is done."""
    table = w.profiler.after_step(w.state.global_step, window.samples, window.llm_tokens)
    if table is not None:
        log.info("step profile (rank 0):\n%s", table)
        steps = max(w.profiler.steps, 1)
        w.tracker.log_text(table, "step_profile.md")
        w.tracker.log_metrics({f"profile/{part}_ms": (times["forward"] + times["backward"]) / 1000 / steps
                               for part, times in w.profiler.parts.items()}, step=w.state.global_step)
    w.profiler.maybe_start(w.state.global_step)


def timed_checkpoint(w: Worker) -> None:
    """``report_checkpoint``, its save time kept for the preemption check (does the next one fit the notice?)."""
    started = time.perf_counter()
    report_checkpoint(w)
    if w.preemption is not None:
        w.preemption.saved(time.perf_counter() - started)


def train(w: Worker) -> None:
    """Epochs until ``total_steps`` optimiser steps (``train.max_steps``) or ``train.epochs`` are done."""
    import ray.train

    from odvla.platform.train.preemption import PreemptionCheck

    w.preemption = PreemptionCheck(w.train.preemption_grace_s, w.rank, w.world)
    shard = ray.train.get_dataset_shard("train")
    by_steps = w.train.max_steps > 0
    epochs = 10**9 if by_steps else w.train.epochs
    w.engine.train()
    done = w.state.global_step >= w.total_steps
    while not done and w.state.epoch < epochs:
        done = train_epoch(w, shard)
        if not done:
            w.state.epoch += 1
            w.state.batches_in_epoch = 0
            done = not by_steps and w.state.epoch >= epochs


def finish_tracking(w: Worker) -> None:
    if w.rank != 0:
        return
    if w.monitor is not None:
        try:
            w.monitor.finish()
        except Exception:
            pass
    if w.tracker.lost or w.tracker.dropped:
        log.warning("MLflow tracking: %d records could not be written", w.tracker.dropped)


def train_func(config: dict) -> None:
    """Ray Train worker entry. ``config``: {'cfg': resolved config dict, 'run_id', 'tracking_uri',
    'init_from' (export ref or None), 'total_steps', 'system_metrics', 'sample_log' (folder/URI or None),
    'hooks' (list, may be empty)}. The library's log records go to the worker's log at ``$ODVLA_LOG_LEVEL``
    (default INFO)."""
    from odvla.platform.log_setup import configure as configure_logging

    configure_logging()
    w = setup_worker(config)
    resume_from_checkpoint(w)
    start_tracking(w)
    if w.rank == 0 and w.train.profile_steps > 0:
        from odvla.platform.train.step_profile import StepProfiler

        w.profiler = StepProfiler(w.train.profile_steps, w.train.profile_warmup)
    train(w)
    report_checkpoint(w, final=True)
    finish_tracking(w)


def planned_steps(train_cfg, batch_size: int, num_rows: int, world_size: int) -> int:
    """Optimiser steps of the stage: ``train.max_steps``, or ``train.epochs`` over ``num_rows`` split across
    workers at ``batch_size`` rows per micro-batch (``data.batch_size``)."""
    if train_cfg.max_steps > 0:
        return train_cfg.max_steps
    per_worker = num_rows // max(world_size, 1)
    batches = math.ceil(per_worker / batch_size)
    steps = (batches // train_cfg.grad_accum) * train_cfg.epochs
    if steps <= 0:
        raise ValueError(f"{num_rows} training rows over {world_size} workers at batch {batch_size} x "
                         f"accumulation {train_cfg.grad_accum} give no optimiser step; lower them or add data")
    return steps
