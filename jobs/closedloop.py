"""Closed-loop evaluation of a model export as a Ray job: the model and the baselines drive re-rendered synthetic
worlds, scored with NAVSIM's PDMS and NeuroNCAP's score, logged to MLflow.

    ray job submit --working-dir . -- python jobs/closedloop.py --export models:/odvla-planner/1 \
        --set sim.scenarios=8 --set sim.safety=true --set sim.workers=8 [--url http://serve:8000] [--out sim_out]
"""
import argparse
import sys

import ray

from odvla.platform.config import load_config
from odvla.platform.log_setup import configure as configure_logging
from odvla.platform.sim.sim_job import run_sim


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--export", help="export folder, runs:/<id>/export or models:/<name>/<v>")
    parser.add_argument("--url", help="drive the served model at this URL instead")
    parser.add_argument("--out", default="sim_out", help="folder for results.md, metrics.json, GIFs, cameras")
    parser.add_argument("--config", action="append", default=[], metavar="YAML")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides")
    args = parser.parse_args(argv)
    cfg = load_config(files=args.config, overrides=args.overrides)
    configure_logging()
    ray.init()
    result = run_sim(cfg.sim, cfg.tracking, args.export, args.out, url=args.url)
    print(result.table_md)
    print(f"results: {result.out_dir / 'results.md'}  MLflow run {result.run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
