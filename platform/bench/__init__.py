"""Benchmarks (``odvla bench <name>``): each ``bench_<name>.py`` has ``add_args(parser)`` and ``run(args) -> int``.

Benchmarks print figures; they never assert. Tests never time anything.
"""
