"""Open-loop evaluation of a model export as a Ray job: planning metrics (UniAD / ST-P3 / OpenDriveVLA
conventions) beside the constant-velocity and ego-MLP baselines.

    ray job submit --working-dir . -- python jobs/evaluate.py --export models:/odvla-planner/1 \
        --set data.shards=/data/shards [--run-id <mlflow run to log into>] [--out eval_out] [--protocol pdms]

``--protocol pdms`` adds NAVSIM's PDM score on the logs (``platform/sim/log_pdms.py``), as ``odvla eval`` does.
"""
import argparse
import sys

import ray

from odvla.platform.config.args import add_config_args, config_from_args
from odvla.platform.eval.evaluate import run_eval
from odvla.platform.log_setup import configure as configure_logging
from odvla.platform.sim.log_pdms import EXTRA_PROTOCOLS, extra_protocols


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_config_args(parser)
    parser.add_argument("--export", required=True, help="export folder, runs:/<id>/export or models:/<name>/<v>")
    parser.add_argument("--run-id", default=None, help="MLflow run to log the metrics and tables into")
    parser.add_argument("--out", default=None, help="folder for predictions, tables and plots")
    parser.add_argument("--protocol", action="append", default=[], choices=sorted(EXTRA_PROTOCOLS), dest="protocols",
                        help="extra protocol beside the open-loop ones (repeatable)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    configure_logging()
    ray.init()
    result = run_eval(cfg, args.export, out_dir=args.out, run_id=args.run_id,
                      protocols=extra_protocols(args.protocols))
    print(result.table_md)
    print(f"predictions: {result.predictions_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
