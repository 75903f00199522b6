"""``odvla sim --model EXPORT``: closed-loop evaluation on the synthetic worlds (``platform/sim/``).

The model (an export loaded in process, or the ``odvla serve`` endpoint at ``--url``) and the baselines drive
re-rendered scenarios; prints the per-planner table (PDMS and sub-scores, route completion, collisions per km with
impact speed, off-road time, NeuroNCAP score, planner errors) and where ``results.md``, ``metrics.json``, the GIFs
and camera strips went; logs them to a new MLflow run in ``tracking.experiment``. ``--scenarios``, ``--safety``,
``--agents`` and ``--out`` set ``sim.scenarios``, ``sim.safety``, ``sim.agents`` and the output folder.
"""
from __future__ import annotations

import time

from odvla.platform.config import load_config


def register(sub) -> None:
    p = sub.add_parser("sim", help="closed-loop evaluation: the model drives re-rendered synthetic worlds")
    p.add_argument("--model", metavar="EXPORT",
                   help="export folder, runs:/<run_id>[/export] or models:/odvla-planner/<version|alias>")
    p.add_argument("--url", help="drive the model served at this URL (odvla serve) instead of loading --model")
    p.add_argument("--scenarios", type=int, metavar="N", help="normal worlds (sets sim.scenarios)")
    p.add_argument("--safety", action="store_true", help="add the four safety scenarios of each world (sim.safety)")
    p.add_argument("--agents", help="agent mode: log (replay) or idm (reactive) (sets sim.agents)")
    p.add_argument("--out", help="output folder (default runs/sim/<time>)")
    p.add_argument("--no-mlflow", action="store_true", help="do not log to MLflow")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="config file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set sim.workers=4 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from odvla.platform.sim.sim_job import run_sim

    overrides = list(args.overrides)
    if args.scenarios is not None:
        overrides.append(f"sim.scenarios={args.scenarios}")
    if args.safety:
        overrides.append("sim.safety=true")
    if args.agents:
        overrides.append(f"sim.agents={args.agents}")
    cfg = load_config(files=args.config, overrides=overrides)
    out = args.out or f"runs/sim/{time.strftime('%Y%m%d-%H%M%S')}"
    result = run_sim(cfg.sim, cfg.tracking, args.model, out, url=args.url, log_mlflow=not args.no_mlflow)
    print(result.table_md)
    errors = sum(len(r["plan_errors"]) for r in result.metrics["rollouts"])
    print(f"{len(result.metrics['rollouts'])} rollouts, {errors} planner errors (listed in results.md)")
    print(f"results: {result.out_dir / 'results.md'}  metrics: {result.out_dir / 'metrics.json'}")
    if result.run_id:
        print(f"MLflow run {result.run_id} (experiment {cfg.tracking.experiment})")
    return 0
