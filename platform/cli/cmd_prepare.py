"""``odvla prepare``: a nuScenes dataroot -> Parquet shards (one row per keyframe) with a manifest."""
from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    from odvla.platform.cli.cmd_instructions import add_instruction_args

    p = sub.add_parser("prepare", help="nuScenes dataroot -> Parquet shards (Ray tasks), manifest.json")
    p.add_argument("--dataroot", required=True, metavar="DIR", help="nuScenes dataroot (real or `odvla synth`)")
    p.add_argument("--version", default="v1.0-mini", help="v1.0-mini | v1.0-trainval (default: %(default)s)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (train/, val/, manifest.json)")
    p.add_argument("--rows-per-shard", type=int, default=256)
    p.add_argument("--workers", type=int, default=2, help="parallel Ray tasks; 0 = in this process")
    p.add_argument("--map-range", type=float, nargs=2, default=(30.0, 15.0), metavar=("X", "Y"),
                   help="half extents of the map patch around the ego, metres (default: 30 15)")
    p.add_argument("--instructions", action="store_true", help="also write instruction data (odvla instructions)")
    add_instruction_args(p, standalone=False)
    p.set_defaults(func=run)


def run(args) -> int:
    from odvla.platform.data.prepare import prepare

    rep = prepare(args.dataroot, args.version, args.out, rows_per_shard=args.rows_per_shard,
                  num_workers=args.workers, map_range=tuple(args.map_range))
    for split, s in rep["splits"].items():
        print(f"{split}: {s['samples']} samples, {s['scenes']} scenes, {len(s['files'])} shard(s)")
    print(f"split source: {rep['split_source']}; schema version {rep['schema_version']}; "
          f"{rep['seconds']} s -> {Path(args.out) / 'manifest.json'}")
    sources = rep.get("ego_state_source", {})
    fell_back = sorted(name for name, src in sources.items() if src != "can_bus")
    print(f"ego state: {len(sources) - len(fell_back)} scene(s) from the CAN bus, {len(fell_back)} fell back to ego "
          f"poses (no can_bus/ in the dataroot, or the devkit has no CAN data for the scene)"
          + (f": {', '.join(fell_back[:10])}{' ...' if len(fell_back) > 10 else ''}" if fell_back else ""))
    if args.instructions:
        from odvla.platform.cli.cmd_instructions import print_report, run_instructions

        print_report(run_instructions(args, Path(args.out)))
    return 0
