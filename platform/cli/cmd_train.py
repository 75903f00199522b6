"""``odvla train``: one stage (``--stage S``) or several in order (``--stages stage1,stage3``) on Ray Train.

    odvla train --stage stage3 --set data.shards=demo_out/shards --set train.max_steps=50
    odvla train --stages stage1,stage2,stage2_5,stage3 --set data.shards=...      # a pipeline run
    odvla train --stage stage3 --set train.run_name=my-run ...                    # rerun the same name: resume
"""
from __future__ import annotations

from odvla.platform.cli.config_args import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("train", help="train a stage (or several in order) on Ray Train + DeepSpeed")
    add_config_args(p, stage=None)
    p.add_argument("--stages", default=None, help="comma-separated stages to run in order as one pipeline")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args) -> int:
    import ray

    from odvla.platform.train import run_pipeline, run_stage

    if bool(args.stage) == bool(args.stages):
        raise ValueError("give exactly one of --stage S or --stages S1,S2,...")
    if args.stages:
        args.stage = None
    cfg = config_from_args(args)
    ray.init(address=args.address)
    if args.stage:
        r = run_stage(cfg)
        print(f"{r.stage}: run {r.run_name}  MLflow run {r.run_id}  step {r.metrics.get('global_step')}  "
              f"loss {r.metrics.get('loss', float('nan')):.4f}\nexport: {r.export_dir}")
        return 0
    out = run_pipeline(cfg, stages=args.stages.split(","), files=args.config, overrides=args.overrides)
    for r in out.results:
        print(f"{r.stage}: MLflow run {r.run_id}  step {r.metrics.get('global_step')}  "
              f"loss {r.metrics.get('loss', float('nan')):.4f}")
    print(f"pipeline MLflow run {out.parent_run_id}\nexport: {out.export_dir}"
          + (f"\nregistered version: {out.registered_version}" if out.registered_version else ""))
    return 0
