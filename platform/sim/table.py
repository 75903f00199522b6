"""The closed-loop table: per-rollout figures (``score_rollout``) aggregated per planner, as Markdown.

Aggregates over a planner's rollouts:

- ``pdms`` and its sub-scores (``nc``, ``dac``, ``ttc``, ``ep``, ``comfort``), ``route_completion``,
  ``offroad_time_s``: means over the rollouts (NAVSIM averages the PDMS over scenes the same way);
- ``collisions_per_km``: all collision events over all kilometres driven (NaN when nothing moved);
  ``impact_speed``: the mean impact speed (m/s) of those events (NaN without one);
- ``ncap_score``: the mean NeuroNCAP score over the safety rollouts (NaN without one), as NeuroNCAP averages per
  scenario type;
- ``planner_errors``: ticks without a valid plan, summed, and ``ticks``: all ticks.
"""
from __future__ import annotations

import math

import numpy as np

MEAN_KEYS = ("pdms", "pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_comfort", "route_completion",
             "offroad_time_s")
COLUMNS = (
    ("PDMS", "pdms", "{:.3f}"), ("NC", "pdms_nc", "{:.2f}"), ("DAC", "pdms_dac", "{:.2f}"),
    ("TTC", "pdms_ttc", "{:.2f}"), ("EP", "pdms_ep", "{:.2f}"), ("C", "pdms_comfort", "{:.2f}"), ("route %", "route_completion", "{:.0%}"),
    ("coll./km", "collisions_per_km", "{:.1f}"), ("impact m/s", "impact_speed", "{:.1f}"),
    ("off-road s", "offroad_time_s", "{:.1f}"), ("NCAP (0-5)", "ncap_score", "{:.2f}"),
    ("plan errors", "planner_errors", "{:.0f}"),
)


def aggregate(rows: list[dict]) -> dict:
    """Per-planner figures (module docstring) of rollout rows (``planner`` and ``score_rollout``'s keys)."""
    out = {}
    for name in dict.fromkeys(r["planner"] for r in rows):
        rs = [r for r in rows if r["planner"] == name]
        agg = {k: float(np.mean([r[k] for r in rs])) for k in MEAN_KEYS}
        km = sum(r["distance_m"] for r in rs) / 1000.0
        n_coll = sum(r["collisions"] for r in rs)
        agg["collisions"] = float(n_coll)
        agg["collisions_per_km"] = n_coll / km if km > 0 else float("nan")
        speeds = [e["impact_speed"] for r in rs for e in r.get("collision_events", ())]
        agg["impact_speed"] = float(np.mean(speeds)) if speeds else float("nan")
        ncap = [r["ncap_score"] for r in rs if "ncap_score" in r]
        agg["ncap_score"] = float(np.mean(ncap)) if ncap else float("nan")
        agg["safety_rollouts"] = float(len(ncap))
        agg["planner_errors"] = float(sum(r["planner_errors"] for r in rs))
        agg["ticks"] = float(sum(r["ticks"] for r in rs))
        agg["rollouts"] = float(len(rs))
        out[name] = agg
    return out


def _cell(fmt: str, v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def markdown_table(per_planner: dict) -> str:
    """One row per planner: rollouts and the ``COLUMNS``."""
    head = "| planner | rollouts | " + " | ".join(c[0] for c in COLUMNS) + " |"
    sep = "|---|---:|" + "---:|" * len(COLUMNS)
    lines = [head, sep]
    for name, a in per_planner.items():
        lines.append(f"| {name} | {int(a['rollouts'])} | " + " | ".join(_cell(f, a.get(k)) for _, k, f in COLUMNS)
                     + " |")
    return "\n".join(lines)


def scenario_table(rows: list[dict]) -> str:
    """One row per rollout: scenario, planner, PDMS, route completion, collisions (first impact speed), off-road
    time, NCAP score, planner errors."""
    lines = ["| scenario | planner | PDMS | route % | collisions | first impact m/s | off-road s | NCAP "
             "| plan errors |", "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['scenario']} | {r['planner']} | {r['pdms']:.3f} | {r['route_completion']:.0%} | "
                     f"{r['collisions']} | {_cell('{:.1f}', r['first_impact_speed'])} | {r['offroad_time_s']:.1f} | "
                     f"{_cell('{:.2f}', r.get('ncap_score'))} | {r['planner_errors']}/{r['ticks']} |")
    return "\n".join(lines)
