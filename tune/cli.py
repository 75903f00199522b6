"""``odvla sweep``: run (or resume) a Tune ablation / HPO sweep on the current Ray cluster.

Registered through the ``odvla.commands`` entry point (``platform`` does not import ``tune``). Exit status 0
when every trial finished, 1 when some trial failed or the sweep was interrupted (the table says which).
"""
from __future__ import annotations


def register(sub) -> None:
    from odvla.platform.config.args import add_config_args

    p = sub.add_parser("sweep", help="Tune sweep: stage-subset x model-size ablation, or LR HPO")
    add_config_args(p)
    p.add_argument("--restore", action="store_true",
                   help="resume the interrupted sweep named by sweep.name under sweep.storage_path")
    p.set_defaults(func=run)


def run(args) -> int:
    from odvla.platform.config.args import config_from_args
    from odvla.tune.sweep import SweepRecipe, run_sweep

    cfg = config_from_args(args)
    recipe = SweepRecipe(files=list(args.config), overrides=list(args.overrides))
    out = run_sweep(cfg, recipe, restore=args.restore)
    print(out["table_md"])
    print(f"results: {out['table_path']}  plot: {out['plot_path']}  MLflow parent run: {out['parent_run_id']}")
    if out["best"] is not None:
        b = out["best"]
        print(f"best trial: {b['trial_id']} ({b['stages']}, {b['model_size']}, lr {b['lr']:.2e}) "
              f"{cfg.sweep.metric}={b[cfg.sweep.metric]:.3f}")
    return 0 if not out["failed"] and not out["interrupted"] else 1
