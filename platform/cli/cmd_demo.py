"""``odvla demo``: synthetic data -> prepare -> instructions -> four stages on ``tiny`` -> evaluation, locally."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="end-to-end demo on synthetic nuScenes: all four stages + evaluation")
    p.add_argument("--out", default="demo_out", help="working folder (default: %(default)s)")
    p.add_argument("--scenes", type=int, default=None, help="synthetic scenes (default: data.synth_scenes)")
    p.add_argument("--stages", default=None, help="comma-separated stages (default: all four)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value for every stage, e.g. --set train.max_steps=5 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from odvla.platform.demo import run_demo

    run_demo(out=args.out, overrides=args.overrides, scenes=args.scenes,
             stages=args.stages.split(",") if args.stages else None)
    return 0
