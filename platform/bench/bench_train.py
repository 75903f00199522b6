"""Training throughput: samples/s and tokens/s per worker of a real stage run (Ray Train + DeepSpeed).

    odvla bench train [--model tiny] [--workers 1,2] [--steps 12] [--profile [STEPS]] [--set ...]

Runs ``run_stage`` on a small synthetic dataset (written and prepared in a temp folder unless ``--shards``) for
each worker count and prints the median over the steps after ``--warmup`` of rank 0's per-step figures (read back
from the run's MLflow metrics). On a GPU machine pass ``--model 0.5b --set train.use_gpu=true`` for the bf16 figures;
MFU is printed when the peak FLOP/s is given (``--peak-tflops``), from 6 x trainable parameters x tokens. A stage that
trains the vision encoder runs on the demo's clips (``--clip-len``). ``--profile`` adds the table of where a step's
time goes (``odvla.platform.train.step_profile``). "data wait"
is ``data_wait_frac``: the share of each step a worker spent blocked on the next batch (mean over ranks); near 0 the
data pipeline keeps up.
"""
from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path


def add_args(p) -> None:
    p.add_argument("--model", default="tiny", help="model preset (default: %(default)s)")
    p.add_argument("--stage", default="stage3", help="stage preset (default: %(default)s)")
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default: %(default)s)")
    p.add_argument("--steps", type=int, default=12, help="optimiser steps per run (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="steps left out of the median (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=2, help="rows per worker per step (default: %(default)s)")
    p.add_argument("--shards", default=None, help="prepared shards (default: a small synthetic set)")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="peak TFLOP/s per worker, for MFU")
    p.add_argument("--profile", type=int, nargs="?", const=5, default=0, metavar="STEPS",
                   help="record STEPS optimiser steps (default 5, after --warmup) of rank 0 with torch.profiler and "
                        "print where their time goes: backbone, BEV, heads, LLM forward/backward, DeepSpeed step, "
                        "data (odvla.platform.train.step_profile)")
    p.add_argument("--clip-len", type=int, default=0,
                   help="keyframes per training row (data.clip_len; default: the demo's for a stage that trains the "
                        "vision encoder, else 1)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")


def _shards(args, out: Path) -> str:
    if args.shards:
        return args.shards
    from odvla.platform.data.prepare import prepare
    from odvla.platform.data.synth import write_synthetic

    root = write_synthetic(out / "nuscenes", scenes=3, keyframes=16, seed=0, image_wh=(320, 180))
    prepare(root, "v1.0-mini", out / "shards", rows_per_shard=64, num_workers=1, progress=False)
    return str(out / "shards")


def run(args) -> int:
    import ray
    from mlflow.tracking import MlflowClient

    from odvla.platform.config import load_config
    from odvla.platform.train import run_stage

    if args.profile and args.steps < args.warmup + args.profile:
        raise SystemExit(f"--profile {args.profile} after --warmup {args.warmup} needs --steps >= "
                         f"{args.warmup + args.profile} (got {args.steps})")
    tmp = Path(tempfile.mkdtemp(prefix="odvla-bench-train-"))
    if not ray.is_initialized():
        ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, configure_logging=False)
    shards = _shards(args, tmp)
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    rows = []
    for workers in [int(w) for w in args.workers.split(",")]:
        cfg = load_config(model=args.model, stage=args.stage, overrides=[
            f"data.shards={shards}", f"train.num_workers={workers}", f"train.max_steps={args.steps}",
            f"data.batch_size={args.batch_size}", "train.checkpoint_every=0", f"train.storage_path={tmp / 'runs'}",
            f"train.run_name=bench-{workers}w", f"tracking.tracking_uri={uri}", "tracking.log_checkpoint=false",
            "tracking.log_system_metrics=false", *_clip_overrides(args),
            *([f"train.profile_steps={args.profile}", f"train.profile_warmup={args.warmup}"] if args.profile else []),
            *args.overrides])
        t0 = time.perf_counter()
        res = run_stage(cfg, register=False)
        wall = time.perf_counter() - t0
        client = MlflowClient(uri)

        def median(key: str) -> float:
            hist = sorted(client.get_metric_history(res.run_id, key), key=lambda m: m.step)
            vals = [m.value for m in hist if m.step > args.warmup] or [m.value for m in hist]
            return statistics.median(vals) if vals else float("nan")

        sps, tps = median("samples_per_s_per_worker"), median("tokens_per_s_per_worker")
        trainable = int(client.get_run(res.run_id).data.params.get("num_trainable_params", 0))
        row = {"model": args.model, "workers": workers, "zero": cfg.train.zero_stage, "bf16": cfg.train.bf16,
               "device": "gpu" if cfg.train.use_gpu else "cpu", "samples_per_s_per_worker": sps,
               "tokens_per_s_per_worker": tps, "samples_per_s": median("samples_per_s"), "wall_s": wall,
               "trainable_params": trainable, "data_wait_frac": median("data_wait_frac")}
        if args.peak_tflops > 0:
            row["mfu"] = 6 * trainable * tps / (args.peak_tflops * 1e12)
        rows.append(row)
        if args.profile:
            row["profile"] = _profile_text(client, res.run_id)
    print(f"odvla bench train: {args.model} {args.stage}, {args.steps} steps (median after {args.warmup}), "
          f"batch {args.batch_size}/worker")
    print("| workers | device | ZeRO | bf16 | samples/s/worker | answer tokens/s/worker | samples/s total | "
          "data wait | run wall s |" + (" MFU |" if args.peak_tflops > 0 else ""))
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" if args.peak_tflops > 0 else ""))
    for r in rows:
        print(f"| {r['workers']} | {r['device']} | {r['zero']} | {r['bf16']} | {r['samples_per_s_per_worker']:.2f} | "
              f"{r['tokens_per_s_per_worker']:.1f} | {r['samples_per_s']:.2f} | {100 * r['data_wait_frac']:.1f}% | "
              f"{r['wall_s']:.0f} |"
              + (f" {100 * r['mfu']:.1f}% |" if "mfu" in r else ""))
    for r in rows:
        if r.get("profile"):
            print(f"\nwhere a step's time goes, {r['workers']} worker(s), rank 0 (torch.profiler; ranges add "
                  f"their overhead, so compare parts, not the wall time with the unprofiled pace):\n{r['profile']}")
    return 0


def _clip_overrides(args) -> list[str]:
    """The demo's clip settings for a stage that trains the vision encoder (what ``make demo`` trains), unless
    ``--clip-len`` says otherwise."""
    from odvla.platform.config import load_config
    from odvla.platform.demo import DEMO_CLIP_LEN, DEMO_CLIP_LOSS

    trains_vision = "vision" in load_config(model=args.model, stage=args.stage).stage.trainable
    n = args.clip_len or (DEMO_CLIP_LEN if trains_vision else 1)
    return [f"data.clip_len={n}"] + ([f"data.clip_loss={DEMO_CLIP_LOSS}"] if n > 1 else [])


def _profile_text(client, run_id: str) -> str:
    """The run's ``step_profile.md`` (logged by rank 0), or a line saying it is missing."""
    import tempfile

    try:
        with tempfile.TemporaryDirectory() as d:
            return Path(client.download_artifacts(run_id, "step_profile.md", d)).read_text()
    except Exception as e:  # the run failed before its profiled steps
        return f"(no step profile in run {run_id}: {e})"
