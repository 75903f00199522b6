"""stage2_5: agent-environment interaction (projectors + LLM, agent heads by config), as a Ray job.

    ray job submit --address http://<head>:8265 --working-dir . -- \
        python jobs/stage2_5.py --model tiny --set data.shards=/data/shards --set stage.init_from=runs:/<id>/export

Config: presets (--model, stage stage2_5) + --config YAML + --set overrides. Rerun with the same
--set train.run_name=... (and train.storage_path) to resume from the last checkpoint.
"""
import argparse
import sys

import ray

from odvla.platform.cli.config_args import add_config_args, config_from_args
from odvla.platform.train import run_stage


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser, stage="stage2_5")
    cfg = config_from_args(parser.parse_args(argv))
    ray.init()  # a submitted job connects to its cluster (RAY_ADDRESS); run by hand it starts a local one
    result = run_stage(cfg)
    print(f"{result.stage}: run {result.run_name} MLflow run {result.run_id} step {result.metrics.get('global_step')} "
          f"loss {result.metrics.get('loss', float('nan')):.4f}")
    print(f"export: {result.export_dir}")
    if result.registered_version:
        print(f"registered: models:/{cfg.tracking.registered_model}/{result.registered_version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
