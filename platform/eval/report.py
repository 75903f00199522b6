"""The results table: measured rows (model, baselines; every protocol) beside the published ones, as markdown.

Measured metrics are a flat dict ``{'<prefix><protocol>/L2_1s': ...}``: the model's keys have no prefix
(``uniad/L2_1s``), the baselines' are prefixed (``cv/uniad/L2_1s``, ``mlp/uniad/L2_1s``).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

from odvla.platform.eval.planning_metrics import FAMILIES, PROTOCOLS
from odvla.platform.eval.published import SOURCE, published

_HEAD = ("| method | source | protocol | L2 1s | L2 2s | L2 3s | L2 avg | Col 1s | Col 2s | Col 3s | Col avg |\n"
         "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")

FAMILY_PROTOCOLS = {f: tuple(p.name for p in PROTOCOLS.values() if p.family == f) for f in FAMILIES}
"""Which measured protocols sit in which published column family: from each ``Protocol.family``, so every protocol
in ``PROTOCOLS`` has a table."""
FAMILY_TITLES = {
    "stp3": "ST-P3-averaged columns (mean over steps up to the horizon)",
    "uniad": "UniAD columns (value at the horizon step)",
}


def _fmt(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def measured_row(metrics: Mapping[str, float], name: str, prefix: str, protocol: str) -> str | None:
    key = f"{prefix}{protocol}/"
    if f"{key}L2_1s" not in metrics:
        return None
    vals = [metrics.get(f"{key}L2_{h}") for h in ("1s", "2s", "3s", "avg")]
    vals += [metrics.get(f"{key}col_{h}") for h in ("1s", "2s", "3s", "avg")]
    n = int(metrics.get(f"{key}n", 0))
    return f"| {name} | measured (n={n}) | {protocol} | " + " | ".join(_fmt(v) for v in vals) + " |"


def results_table(metrics: Mapping[str, float],
                  methods: Sequence[tuple[str, str]] = (("this model", ""), ("constant velocity", "cv/"),
                                                        ("ego-status MLP", "mlp/"))) -> str:
    """Markdown: one table per column family, measured rows first, then published ones (marked)."""
    parts = ["## Open-loop planning (nuScenes-format val)", ""]
    for family, protos in FAMILY_PROTOCOLS.items():
        parts += [f"### {FAMILY_TITLES[family]}", "", _HEAD]
        for name, prefix in methods:
            for proto in protos:
                row = measured_row(metrics, name, prefix, proto)
                if row:
                    parts.append(row)
        for r in published(family):
            col = r.col or (None,) * 4
            parts.append(f"| {r.method} | published | {family} | " + " | ".join(_fmt(v) for v in (*r.l2, *col))
                         + " |")
        parts.append("")
    parts += ["| protocol | computes | planning frame | occupancy |", "|---|---|---|---|"]
    parts += [f"| `{p.name}` | {p.label} | {p.frame} | {p.occupancy_text} |" for p in PROTOCOLS.values()]
    parts += ["", f"Published rows: {SOURCE}; not measured here. L2 in metres, collision in percent.", ""]
    parts += tracking_table(metrics)
    extra = [(k, v) for k, v in metrics.items() if k.startswith(("predict/", "qa/"))]
    if extra:
        parts += ["## Other metrics", "", "| metric | value |", "|---|---:|"]
        parts += [f"| {k} | {v:.4g} |" for k, v in sorted(extra)]
        parts.append("")
    return "\n".join(parts)


def tracking_table(metrics: Mapping[str, float], prefix: str = "tracking/") -> list[str]:
    """Markdown lines of the "Tracking" table (none without ``{prefix}`` figures): ID switches, velocity error,
    recall of the agent tracks, labelled with whether the run carried temporal state (``predict/temporal``)."""
    if f"{prefix}id_switches" not in metrics:
        return []
    state = {1.0: "on (scene order, SceneState carried)", 0.0: "off (every keyframe from an empty state)"}.get(
        metrics.get("predict/temporal"), "—")
    n = int(metrics.get(f"{prefix}gt_agents", 0))
    return ["## Tracking (agent queries; centre-distance matching, 2 m)", "",
            "| temporal state | ID switches | velocity error (m/s) | recall | matched | live tracks | annotated agents |",
            "|---|---:|---:|---:|---:|---:|---:|",
            f"| {state} | {int(metrics[f'{prefix}id_switches'])} | {_fmt(metrics.get(f'{prefix}velocity_error'))} | "
            f"{_fmt(metrics.get(f'{prefix}recall'))} | {int(metrics.get(f'{prefix}matched', 0))} | "
            f"{int(metrics.get(f'{prefix}tracks', 0))} | {n} |", ""]
