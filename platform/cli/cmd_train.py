"""``odvla train``: one stage (``--stage S``) or several in order (``--stages stage1,stage3``) on Ray Train.

    odvla train --stage stage3 --set data.shards=demo_out/shards --set train.max_steps=50
    odvla train --stages stage1,stage2,stage2_5,stage3 --set data.shards=...      # a pipeline run
    odvla train --stage stage3 --set train.run_name=my-run ...                    # rerun the same name: resume
"""
from __future__ import annotations

from odvla.platform.config.args import add_config_args, config_from_args


def register(sub) -> None:
    p = sub.add_parser("train", help="train a stage (or several in order) on Ray Train + DeepSpeed")
    add_config_args(p, stage=None)
    p.add_argument("--stages", default=None, help="comma-separated stages to run in order as one pipeline")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    p.set_defaults(func=run)


def run(args) -> int:
    import ray

    from odvla.platform.train import run_pipeline, run_stage
    from odvla.platform.cli.job_main import pipeline_summary, stage_summary

    if bool(args.stage) == bool(args.stages):
        raise ValueError("give exactly one of --stage S or --stages S1,S2,...")
    if args.stages:
        args.stage = None
    cfg = config_from_args(args)
    ray.init(address=args.address)
    if args.stage:
        print(stage_summary(run_stage(cfg), cfg.tracking.registered_model))
        return 0
    print(pipeline_summary(run_pipeline(cfg, stages=args.stages.split(","), files=args.config,
                                        overrides=args.overrides)))
    return 0
