"""``odvla eval --model EXPORT``: open-loop evaluation of a model export on the val split.

The config starts from the export's own ``config.yaml`` (its model, data and eval settings), then ``--config``
files and ``--set`` overrides; ``--shards`` and ``--out`` are shortcuts for ``data.shards`` and ``eval.out``.
Prints the results table (measured beside published numbers) and where predictions, plots and metrics went.
``--temporal on|off`` sets ``eval.temporal`` (scene-ordered planning carrying the tracking state, or stateless);
the nuScenes devkit's perception figures (mAP, NDS, AMOTA, AMOTP, IDS) are printed either way.
``--official-out DIR [--force]`` also writes the released OpenDriveVLA evaluation's files (``official_export.py``).
``--protocol pdms`` adds NAVSIM's PDM score on the logs (``platform/sim/log_pdms.py``) for the model, the baselines
and the logged expert.
"""
from __future__ import annotations

from odvla.platform.config import load_config, to_dict


def register(sub) -> None:
    p = sub.add_parser("eval", help="open-loop evaluation of a model export: L2, collision, QA, baselines, plots")
    p.add_argument("--model", required=True, metavar="EXPORT",
                   help="export folder, runs:/<run_id>[/export] or models:/odvla-planner/<version|alias>")
    p.add_argument("--shards", help="prepared shards folder (sets data.shards)")
    p.add_argument("--split", help="split to evaluate (sets eval.split; default val)")
    p.add_argument("--out", help="output folder (sets eval.out; default runs/eval/<time>)")
    p.add_argument("--run-id", help="MLflow run to log metrics and artifacts into")
    p.add_argument("--temporal", choices=("on", "off"),
                   help="on: plan each val scene in keyframe order carrying the tracking state (SceneState); "
                        "off: every keyframe from an empty state (sets eval.temporal; default the config's)")
    p.add_argument("--official-out", metavar="DIR",
                   help="also write the released OpenDriveVLA evaluation's input files here (outputs.jsonl, "
                        "pred_trajs_dict.json, gt/*.pkl) to score with its official script")
    p.add_argument("--force", action="store_true", help="overwrite files in a non-empty --official-out folder")
    p.add_argument("--protocol", action="append", default=[], choices=("pdms",), dest="protocols",
                   help="extra protocol beside the open-loop ones (repeatable): pdms = NAVSIM's PDM score, each "
                        "keyframe's 3-s plan driven against the logged agents and the map's drivable area")
    p.add_argument("--config", action="append", default=[], metavar="YAML", help="config file (repeatable)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override a config value, e.g. --set eval.concurrency=2 (repeatable)")
    p.set_defaults(func=run)


def eval_config(args):
    from odvla.platform.export import load_export_config

    overrides = list(args.overrides)
    for flag, key in ((args.shards, "data.shards"), (args.split, "eval.split"), (args.out, "eval.out")):
        if flag:
            overrides.append(f"{key}={flag}")
    if args.temporal:
        overrides.append(f"eval.temporal={'true' if args.temporal == 'on' else 'false'}")
    # the user's tracking settings decide where a runs:/ or models:/ export is downloaded from
    user = load_config(files=args.config, overrides=overrides)
    _, export_cfg = load_export_config(args.model, user.tracking.tracking_uri)
    return load_config(base=to_dict(export_cfg), files=args.config, overrides=overrides)


def run(args) -> int:
    from odvla.platform.eval.evaluate import run_eval

    cfg = eval_config(args)
    from odvla.platform.sim.log_pdms import extra_protocols

    result = run_eval(cfg, args.model, out_dir=cfg.eval.out, run_id=args.run_id,
                      official_out=args.official_out, force=args.force, protocols=extra_protocols(args.protocols))
    print(result.table_md)
    m = result.metrics
    print(f"samples {int(m['predict/samples'])}, malformed answers {int(m['predict/malformed'])} "
          f"({100 * m['predict/malformed_rate']:.1f} %)")
    if "perception/mAP" in m:
        nan = float("nan")
        print(f"temporal state {'on' if m['predict/temporal'] else 'off'} (nuScenes devkit): mAP "
              f"{m['perception/mAP']:.3f}, NDS {m['perception/NDS']:.3f}, AMOTA {m.get('perception/AMOTA', nan):.3f}, "
              f"AMOTP {m.get('perception/AMOTP', nan):.2f} m, IDS {m.get('perception/IDS', nan):.0f} "
              f"({int(m['perception/tracks'])} track boxes); planning L2 avg {m.get('uniad/L2_avg', nan):.2f} m"
              " (uniad)")
    if "pdms/n" in m:
        print(f"PDM score (NAVSIM, on the logs): {m['pdms/score']:.3f} over {int(m['pdms/n'])} keyframes (NC "
              f"{m['pdms/nc']:.3f}, DAC {m['pdms/dac']:.3f}, TTC {m['pdms/ttc']:.3f}, EP {m['pdms/ep']:.3f}, C "
              f"{m['pdms/comfort']:.3f}); logged expert {m.get('expert/pdms/score', float('nan')):.3f}")
    print(f"predictions: {result.predictions_path}")
    print(f"results:     {result.out_dir / 'results.md'}  plots: {result.out_dir / 'plots'}")
    if args.official_out:
        print(f"official evaluation files: {args.official_out} ({int(m['official/samples'])} samples, "
              f"{int(m['official/fallback_constant_velocity'])} unparsed answers given the constant-velocity "
              "fallback; see summary.json)")
    return 0
