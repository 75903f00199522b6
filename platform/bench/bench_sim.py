"""Closed-loop simulation throughput: rollouts per second in one process against N Ray workers, and the per-tick split.

The same ``--rollouts`` jobs (normal scenarios of seeds 0.., ``--duration`` s, ``--planner``: a baseline, or the
model of ``--model EXPORT`` in process) run once in this process (``sim.workers = 0``) and once over ``--workers``
Ray actors on a local Ray instance of ``--workers`` CPUs (``platform/sim/runner.py``), without animation. Both
are timed warm: each worker first runs one rollout (imports, planner construction; the actors' start time is
printed apart), as a long run amortises them. Prints rollouts/s of both and the speed-up, and the
mean time per planner tick (0.5 s of simulated time) split into render (six cameras), planner, physics (10-Hz
controller, bicycle model and agents over the tick) and metrics (the per-frame collision and drivable-area checks),
plus the scoring after the run (PDMS) per rollout. Nothing is asserted.
"""
from __future__ import annotations

import time

import numpy as np


def add_args(p) -> None:
    p.add_argument("--rollouts", type=int, default=8, help="rollouts per measurement (default %(default)s)")
    p.add_argument("--workers", type=int, default=2, help="Ray actors (and CPUs of the Ray instance)")
    p.add_argument("--duration", type=float, default=15.0, help="simulated seconds per rollout")
    p.add_argument("--planner", default="expert", help="baseline planner (expert, constant_velocity, ego_mlp)")
    p.add_argument("--model", metavar="EXPORT", help="drive with this model export (in process) instead")
    p.add_argument("--image-size", default="400x225", help="rendered camera size WxH (default %(default)s)")


def run(args) -> int:
    import ray

    from odvla.platform.config.schema import SimConfig
    from odvla.platform.sim.planners import PlannerSpec
    from odvla.platform.sim.runner import RolloutPool, rollout_jobs

    w, h = (int(v) for v in args.image_size.lower().split("x"))
    spec = (PlannerSpec("model", "export", {"ref": args.model, "torch_threads": 1}) if args.model
            else PlannerSpec(args.planner))
    cfg = SimConfig(scenarios=args.rollouts, duration_s=args.duration)
    jobs = rollout_jobs(cfg, [spec])
    warm = jobs[:max(1, args.workers)]  # the first rollout of a worker pays its imports and planner construction
    with RolloutPool(0, (h, w), animate=False) as pool:
        pool.run(warm[:1])
        t0 = time.perf_counter()
        rows = pool.run(jobs)
        single = time.perf_counter() - t0
    if not ray.is_initialized():
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    t0 = time.perf_counter()
    with RolloutPool(args.workers, (h, w), animate=False) as pool:
        pool.run(warm)
        started = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray_rows = pool.run(jobs)
        parallel = time.perf_counter() - t0
    same = all(a["pdms"] == b["pdms"] and a["route_completion"] == b["route_completion"]
               for a, b in zip(rows, ray_rows))
    n = len(jobs)
    print(f"closed loop, {n} rollouts of {args.duration:g} s ({spec.name}), cameras {w}x{h}:")
    print(f"  one process:        {n / single:6.3f} rollouts/s ({single:.1f} s)")
    print(f"  {args.workers} Ray workers:      {n / parallel:6.3f} rollouts/s ({parallel:.1f} s)  "
          f"speed-up {single / parallel:.2f}x  (same figures: {same}; actor start and a warm-up rollout each "
          f"{started:.1f} s, not counted)")
    ticks = sum(r["ticks"] for r in rows)
    print("  per tick (one process, mean ms):")
    for part in ("render", "planner", "physics", "metrics"):
        print(f"    {part:8s} {1e3 * sum(r['timing'][part] for r in rows) / ticks:8.2f}")
    print(f"  scoring after the run (PDMS, figures): {np.mean([r['timing']['score'] for r in rows]):.2f} s per rollout")
    return 0
