"""``odvla instructions``: write the conversation store beside prepared shards -- generated captions / QA /
interaction / planning records for every split, plus any public instruction sets given -- and print the counts
per split, source and task, and how many imported records name samples the shards do not hold.

``odvla prepare --instructions`` does the same right after writing the shards::

    # register():  p.add_argument("--instructions", action="store_true", help="also write instruction data")
    #              add_instruction_args(p, standalone=False)
    # run():       if args.instructions: print_report(run_instructions(args, Path(args.out)))
"""
from __future__ import annotations

import argparse
from pathlib import Path

SOURCE_OPTIONS = {
    "nuscenes_qa": ("--nuscenes-qa", "nuScenes-QA questions JSON ({'questions': [...]})"),
    "tod3cap": ("--tod3cap", "TOD3Cap captions JSON keyed by annotation token (needs --dataroot)"),
    "nux": ("--nux", "nuX JSON keyed by sample token ({narration, reasoning})"),
    "nucaption": ("--nucaption", "nuCaption (LiDAR-LLM Nu-Caption) JSON list"),
    "gpt_driver": ("--gpt-driver", "GPT-Driver cached_nuscenes_info.pkl"),
    "drivelm": ("--drivelm", "DriveLM JSON keyed by scene token"),
    "llava": ("--llava", "LLaVA-style conversations JSON or JSONL"),
}


def add_instruction_args(p: argparse.ArgumentParser, standalone: bool = True) -> None:
    """Source files, seed and the TOD3Cap / GPT-Driver extras. ``standalone=False`` (inside ``odvla prepare``):
    no ``--dataroot`` / ``--version`` (prepare has its own; the shard manifest records them) and the seed flag is
    ``--instructions-seed``."""
    g = p.add_argument_group("instruction data")
    for name, (flag, help_) in SOURCE_OPTIONS.items():
        g.add_argument(flag, dest=f"src_{name}", metavar="FILE", help=help_)
    g.add_argument("--gpt-driver-split", metavar="JSON", help="GPT-Driver split.json (recorded per record, "
                                                              "mismatches with the shard split counted)")
    if standalone:
        g.add_argument("--dataroot", dest="instr_dataroot", metavar="DIR",
                       help="nuScenes dataroot the shards came from (TOD3Cap annotation tokens; default: the shard "
                            "manifest's)")
        g.add_argument("--version", dest="instr_version", metavar="VERSION",
                       help="nuScenes version (default: the shard manifest's)")
    g.add_argument("--seed" if standalone else "--instructions-seed", dest="instr_seed", type=int, default=0,
                   metavar="N",
                   help="template seed of the generated records (default: 0)")
    g.add_argument("--no-generated", action="store_true", help="only import the given public sets")


def register(sub) -> None:
    p = sub.add_parser("instructions", help="write instruction / interaction conversations beside the shards")
    p.add_argument("--shards", required=True, help="folder written by `odvla prepare`")
    p.add_argument("--out", help="conversation folder (default: SHARDS/conversations)")
    add_instruction_args(p)
    p.set_defaults(func=run)


def run_instructions(args, shards_dir: Path, out: Path | None = None) -> dict:
    """Build the store from parsed ``add_instruction_args`` options; returns ``build_instructions``'s report."""
    from odvla.platform.data.conversations.build import build_instructions

    sources = {name: getattr(args, f"src_{name}") for name in SOURCE_OPTIONS if getattr(args, f"src_{name}")}
    return build_instructions(shards_dir, sources, seed=args.instr_seed, generated=not args.no_generated,
                              dataroot=getattr(args, "instr_dataroot", None),
                              version=getattr(args, "instr_version", None),
                              gpt_driver_split=args.gpt_driver_split, out_dir=out)


def print_report(report: dict) -> None:
    print(f"conversations: {Path(report['path']).parent}")
    for split, by_source in sorted(report["counts"].items()):
        for source, tasks in sorted(by_source.items()):
            print(f"  {split:6s} {source:12s} " + "  ".join(f"{t}={n}" for t, n in tasks.items()))
    for source, s in sorted(report["sources"].items()):
        line = f"  import {source}: {s['records']} records, {s['matched']} matched to shard samples"
        if s["unmatched"]:
            line += f", {s['unmatched']} name samples not in the shards (e.g. {', '.join(s['unmatched_examples'])})"
        if s.get("split_mismatch"):
            line += f", {s['split_mismatch']} in another split than GPT-Driver's split file says"
        print(line)


def run(args) -> int:
    print_report(run_instructions(args, Path(args.shards), Path(args.out) if args.out else None))
    return 0
