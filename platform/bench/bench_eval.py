"""Throughput of the open-loop planning metrics (samples/s): occupancy rasterisation + L2 + collision checks.

Synthetic input shaped like nuScenes val (``--samples`` keyframes, ``--boxes`` annotated boxes per future step,
spread over 50 m around the ego, 80 % vehicles), scored in all three protocols; prints samples/s overall and per
stage. Nothing is asserted.

With ``--model EXPORT --shards DIR``: the model's open-loop evaluation (``run_eval``) of the same export with and
without temporal state (``--temporal both``, or one of ``on`` / ``off``), printed side by side: the nuScenes
devkit's perception figures (mAP, NDS, AMOTA, AMOTP, IDS, mAVE, track boxes), planning L2 and collision (UniAD and ST-P3
columns), malformed answers and prediction seconds. Each run's full outputs go to ``--out``/temporal-<on|off>.
"""
from __future__ import annotations

import time

import numpy as np

from odvla.model.constants import DETECTION_CLASSES, FUTURE_STEPS


def add_args(p) -> None:
    p.add_argument("--samples", type=int, default=2048, help="keyframes to score (default %(default)s)")
    p.add_argument("--boxes", type=int, default=40, help="boxes per future step (default %(default)s)")
    p.add_argument("--chunk", type=int, default=256, help="samples per accumulator update (default %(default)s)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", metavar="EXPORT", help="evaluate this model export instead (see the module docstring)")
    p.add_argument("--shards", help="with --model: prepared shards folder (sets data.shards)")
    p.add_argument("--temporal", choices=("off", "on", "both"), default="both",
                   help="with --model: evaluate without / with temporal state, or both (default %(default)s)")
    p.add_argument("--out", default="runs/bench-eval", help="with --model: output folder (default %(default)s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="with --model: config override (repeatable), e.g. --set eval.concurrency=2")


def synthetic_inputs(n: int, boxes: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    t = np.arange(1, FUTURE_STEPS + 1)
    speed = rng.uniform(0, 8, n)
    gt = np.stack([speed[:, None] * t * 0.5, rng.normal(0, 0.3, (n, 1)) * t], -1)
    pred = gt + rng.normal(0, 0.5, gt.shape)
    mask = np.ones((n, FUTURE_STEPS))
    vehicle = [DETECTION_CLASSES.index(c) for c in ("car", "truck", "bus")]
    ped = DETECTION_CLASSES.index("pedestrian")
    fb = []
    m = boxes * FUTURE_STEPS
    for _ in range(n):
        cls = np.where(rng.random(m) < 0.8, rng.choice(vehicle, m), ped)
        size = np.where(cls == ped, 0.7, 1.0)[:, None] * np.array([1.9, 4.6])
        fb.append({"boxes": np.concatenate([rng.uniform(-50, 50, (m, 2)), size, rng.uniform(-np.pi, np.pi, (m, 1))], 1),
                   "step": np.repeat(np.arange(FUTURE_STEPS), boxes), "cls": cls, "vis": rng.integers(1, 5, m)})
    return pred, gt, mask, fb


TEMPORAL_ROWS = (("mAP (devkit)", "perception/mAP", "{:.3f}"), ("NDS (devkit)", "perception/NDS", "{:.3f}"),
                 ("AMOTA (devkit)", "perception/AMOTA", "{:.3f}"), ("AMOTP (devkit, m)", "perception/AMOTP", "{:.2f}"),
                 ("ID switches (devkit IDS)", "perception/IDS", "{:.0f}"),
                 ("velocity error (devkit mAVE, m/s)", "perception/mAVE", "{:.3f}"),
                 ("track boxes", "perception/tracks", "{:.0f}"),
                 ("perception scoring seconds", "perception/seconds", "{:.1f}"),
                 ("L2 avg, UniAD (m)", "uniad/L2_avg", "{:.3f}"), ("L2 avg, ST-P3 (m)", "stp3/L2_avg", "{:.3f}"),
                 ("collision avg, UniAD (%)", "uniad/col_avg", "{:.3f}"),
                 ("constant velocity L2 avg, UniAD (m)", "cv/uniad/L2_avg", "{:.3f}"),
                 ("malformed answers", "predict/malformed", "{:.0f}"), ("samples", "predict/samples", "{:.0f}"),
                 ("prediction seconds", "predict/seconds", "{:.1f}"))


def temporal_table(results: dict) -> str:
    """Markdown: one column per temporal setting (``results`` maps 'off' / 'on' to a metrics dict)."""
    modes = list(results)
    lines = ["| figure | " + " | ".join(f"temporal {m}" for m in modes) + " |", "|---|" + "---:|" * len(modes)]
    for name, key, fmt in TEMPORAL_ROWS:
        vals = [results[m].get(key) for m in modes]
        lines.append(f"| {name} | " + " | ".join(
            "—" if v is None or v != v else fmt.format(v) for v in vals) + " |")
    return "\n".join(lines)


def run_model(args) -> int:
    """The same export evaluated with and/or without temporal state; prints the figures side by side."""
    from pathlib import Path

    from odvla.platform.config import load_config, to_dict
    from odvla.platform.eval.evaluate import run_eval
    from odvla.platform.export import load_export_config

    overrides = list(args.overrides) + ([f"data.shards={args.shards}"] if args.shards else [])
    user = load_config(overrides=overrides)
    _, export_cfg = load_export_config(args.model, user.tracking.tracking_uri)
    cfg = load_config(base=to_dict(export_cfg), overrides=["eval.plots=0"] + overrides)
    modes = ["off", "on"] if args.temporal == "both" else [args.temporal]
    results = {}
    for mode in modes:
        c = load_config(base=to_dict(cfg), overrides=[f"eval.temporal={'true' if mode == 'on' else 'false'}"])
        t0 = time.perf_counter()
        res = run_eval(c, args.model, out_dir=Path(args.out) / f"temporal-{mode}")
        results[mode] = res.metrics
        print(f"temporal {mode}: evaluated in {time.perf_counter() - t0:.1f} s -> {res.out_dir}")
    print(f"bench eval: {args.model} on {cfg.data.shards} ({cfg.eval.split}); tracker birth / keep score "
          f"{cfg.model.vision.track_birth_score} / {cfg.model.vision.track_keep_score}")
    print(temporal_table(results))
    return 0


def run(args) -> int:
    if args.model:
        return run_model(args)
    from odvla.platform.eval import occupancy
    from odvla.platform.eval.planning_metrics import VEHICLE_CLASSES, build_occupancy, compute_planning_metrics

    pred, gt, mask, fb = synthetic_inputs(args.samples, args.boxes, args.seed)
    print(f"bench eval: {args.samples} samples, {args.boxes} boxes/step, 3 protocols, chunk {args.chunk}")
    best = float("inf")
    for r in range(args.repeats):
        t0 = time.perf_counter()
        m = compute_planning_metrics(pred, gt, mask, fb, chunk=args.chunk)
        dt = time.perf_counter() - t0
        best = min(best, dt)
        print(f"  run {r + 1}: {dt:.2f} s  {args.samples / dt:,.0f} samples/s  (uniad/L2_avg {m['uniad/L2_avg']:.3f}, "
              f"uniad/col_avg {m['uniad/col_avg']:.2f} %)")
    k = min(args.chunk, args.samples)
    t0 = time.perf_counter()
    grid = build_occupancy(fb[:k], VEHICLE_CLASSES, True)
    t_occ = time.perf_counter() - t0
    t0 = time.perf_counter()
    occupancy.ego_collisions(pred[:k], grid)
    occupancy.ego_collisions(gt[:k], grid)
    t_col = time.perf_counter() - t0
    t0 = time.perf_counter()
    occupancy.ego_collisions(pred[:k], grid, yaw_aligned=True)
    t_yaw = time.perf_counter() - t0
    print(f"metrics throughput (best of {args.repeats}): {args.samples / best:,.0f} samples/s")
    print(f"  occupancy rasterisation: {k / t_occ:,.0f} samples/s ({args.boxes * FUTURE_STEPS} boxes each)")
    print(f"  axis-aligned collision check (pred + gt): {k / t_col:,.0f} samples/s")
    print(f"  yaw-aligned collision check: {k / t_yaw:,.0f} samples/s")
    return 0
