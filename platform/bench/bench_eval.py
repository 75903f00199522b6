"""Throughput of the open-loop planning metrics (samples/s): occupancy rasterisation + L2 + collision checks.

Synthetic input shaped like nuScenes val (``--samples`` keyframes, ``--boxes`` annotated boxes per future step,
spread over 50 m around the ego, 80 % vehicles), scored in all three protocols; prints samples/s overall and per
stage. Nothing is asserted.
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


def run(args) -> int:
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
