"""``odvla bench <name>``: run one benchmark and print its figures.

Benchmarks are ``odvla.platform.bench.bench_<name>`` modules, plus modules named in the ``odvla.bench``
entry-point group (benchmarks of ``serve``/``tune``, which ``platform`` must not import); each has
``add_args(parser)`` and ``run(args) -> int``.
"""
from __future__ import annotations

import importlib
import pkgutil
from importlib.metadata import entry_points


def register(sub) -> None:
    import odvla.platform.bench as pkg

    p = sub.add_parser("bench", help="benchmarks: print throughput / latency figures")
    bsub = p.add_subparsers(dest="bench", metavar="NAME")
    mods = {m.name[len("bench_"):]: f"odvla.platform.bench.{m.name}"
            for m in pkgutil.iter_modules(pkg.__path__) if m.name.startswith("bench_")}
    mods.update({ep.name: ep.value for ep in entry_points(group="odvla.bench")})
    for name, modname in sorted(mods.items()):
        mod = importlib.import_module(modname)
        bp = bsub.add_parser(name, help=((mod.__doc__ or name).strip().splitlines() or [name])[0])
        mod.add_args(bp)
        bp.set_defaults(func=mod.run)
    p.set_defaults(func=lambda args: p.print_help() or 2)
