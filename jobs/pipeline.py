"""All four stages in order (each starts from the previous export), then registers the planner, as a Ray job.

    ray job submit --working-dir . -- python jobs/pipeline.py --model tiny --set data.shards=/data/shards \
        [--stages stage1,stage3] [--set train.max_steps=200]

--set overrides apply to every stage on top of its preset. Rerun with the same --set train.run_name=... to resume.
"""
import argparse
import sys

import ray

from odvla.platform.cli.config_args import add_config_args, config_from_args
from odvla.platform.config.schema import STAGES
from odvla.platform.train import run_pipeline


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated stages (default: all four)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    ray.init()
    out = run_pipeline(cfg, stages=args.stages.split(","), files=args.config, overrides=args.overrides)
    for r in out.results:
        print(f"{r.stage}: MLflow run {r.run_id} step {r.metrics.get('global_step')} loss {r.metrics.get('loss')}")
    print(f"pipeline run {out.parent_run_id}; export {out.export_dir}; registered version {out.registered_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
