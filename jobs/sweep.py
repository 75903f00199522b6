"""Ray job: a Tune sweep of the training pipeline (stage-subset x model-size ablation, or LR HPO).

    ray job submit --working-dir . -- python jobs/sweep.py --set 'sweep.model_sizes=[0.5b,3b]' \\
        --set data.shards=/mnt/shared/shards --set sweep.storage_path=/mnt/shared/odvla/sweeps --set sweep.name=abl1
    ray job submit --working-dir . -- python jobs/sweep.py --restore --set sweep.name=abl1 \\
        --set sweep.storage_path=/mnt/shared/odvla/sweeps                # resume it after an interruption
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    import ray

    from odvla.platform.config.args import add_config_args, config_from_args
    from odvla.platform.log_setup import configure as configure_logging
    from odvla.tune.sweep import SweepRecipe, run_sweep

    p = argparse.ArgumentParser(prog="jobs/sweep.py", description=__doc__.splitlines()[0])
    add_config_args(p)
    p.add_argument("--restore", action="store_true", help="resume the sweep named by sweep.name")
    args = p.parse_args(argv)
    cfg = config_from_args(args)
    configure_logging()
    if not ray.is_initialized():
        ray.init()  # the cluster of `ray job submit` (RAY_ADDRESS), else a local one
    out = run_sweep(cfg, SweepRecipe(files=list(args.config), overrides=list(args.overrides)), restore=args.restore)
    print(out["table_md"])
    print(f"results: {out['table_path']}  plot: {out['plot_path']}  MLflow parent run: {out['parent_run_id']}")
    return 0 if not out["failed"] and not out["interrupted"] else 1


if __name__ == "__main__":
    sys.exit(main())
