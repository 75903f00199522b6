"""``odvla bench <name>``: run one benchmark from ``odvla.platform.bench.bench_<name>`` and print its figures."""
from __future__ import annotations

import importlib
import pkgutil


def register(sub) -> None:
    import odvla.platform.bench as pkg

    p = sub.add_parser("bench", help="benchmarks: print throughput / latency figures")
    bsub = p.add_subparsers(dest="bench", metavar="NAME")
    for m in sorted(m.name for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_")):
        mod = importlib.import_module(f"odvla.platform.bench.{m}")
        bp = bsub.add_parser(m[len("bench_"):], help=(mod.__doc__ or "").strip().splitlines()[0])
        mod.add_args(bp)
        bp.set_defaults(func=mod.run)
    p.set_defaults(func=lambda args: p.print_help() or 2)
