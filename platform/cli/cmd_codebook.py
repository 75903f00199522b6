"""``odvla codebook fit``: the action-token codebook of ``model.text.traj_encoding: action``, beside the shards.

    odvla codebook fit --shards SHARDS_DIR [--size 2048] [--method auto|kdisk|kmeans] [--seed 0]

Fits on the train split's ego futures and histories (``odvla.platform.data.codebook``), writes
``SHARDS_DIR/action_codebook.json`` and ``action_codebook.report.json``, and prints the round trip on the val split
(L2 mean and max, trajectories out of the codebook's range).
"""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("codebook", help="action-token codebook (model.text.traj_encoding: action)")
    csub = p.add_subparsers(dest="codebook_command", metavar="ACTION")
    f = csub.add_parser("fit", help="fit the codebook on the train split of prepared shards")
    f.add_argument("--shards", required=True, metavar="DIR", help="prepared shards folder")
    f.add_argument("--size", type=int, default=2048, help="entries = action tokens (model.text.action_codebook_size;"
                   " default: %(default)s)")
    f.add_argument("--method", default="auto", choices=("auto", "kdisk", "kmeans"),
                   help="K-disk (0.05 m), k-means, or both keeping the smaller round-trip error (default: auto)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default=None, metavar="FILE", help="default: SHARDS_DIR/action_codebook.json")
    f.set_defaults(func=run_fit)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_fit(args) -> int:
    import time

    from odvla.platform.data.codebook import fit_from_shards

    t0 = time.perf_counter()
    cb, val, path = fit_from_shards(args.shards, size=args.size, method=args.method, seed=args.seed, out=args.out)
    print(f"wrote {path}: {cb.size} entries, method {cb.method} (of {args.method}), {cb.fit['segments']} train "
          f"segments, {time.perf_counter() - t0:.1f} s")
    for m in ("kdisk", "kmeans"):
        rt = cb.fit.get(f"{m}_train_round_trip")
        if rt:
            print(f"  {m:<7} train round trip: L2 mean {rt['mean_l2']:.4f} m, max {rt['max_l2']:.4f} m")
        elif cb.fit.get(f"{m}_error"):
            print(f"  {m:<7} not usable: {cb.fit[f'{m}_error']}")
    print(f"val round trip: {val.line()}" if val else "val round trip: no val split in the shards")
    return 0
