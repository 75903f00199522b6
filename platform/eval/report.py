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
    parts += perception_table(metrics)
    extra = [(k, v) for k, v in metrics.items() if k.startswith(("predict/", "qa/"))]
    if extra:
        parts += ["## Other metrics", "", "| metric | value |", "|---|---:|"]
        parts += [f"| {k} | {v:.4g} |" for k, v in sorted(extra)]
        parts.append("")
    return "\n".join(parts)


PERCEPTION_COLUMNS = (("mAP", "mAP", "{:.3f}"), ("NDS", "NDS", "{:.3f}"), ("mATE m", "mATE", "{:.2f}"),
                      ("mAVE m/s", "mAVE", "{:.2f}"), ("AMOTA", "AMOTA", "{:.3f}"), ("AMOTP m", "AMOTP", "{:.2f}"),
                      ("IDS", "IDS", "{:.0f}"), ("recall", "recall", "{:.3f}"))
"""The devkit figures of the perception table: (column, key after the prefix, format)."""


def _cell(metrics: Mapping[str, float], key: str, fmt: str) -> str:
    v = metrics.get(key)
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def perception_table(metrics: Mapping[str, float], prefix: str = "perception/") -> list[str]:
    """Markdown lines of the "Perception" table (none without ``{prefix}mAP``): the nuScenes devkit's detection
    (``DetectionEval``, detection_cvpr_2019) and tracking (``TrackingEval``, tracking_nips_2019) figures of the agent
    queries, labelled with whether the run carried temporal state (``predict/temporal``), and how many classes keep
    annotated boxes (the devkit averages over all ten / seven: absent classes count AP 0 in mAP and are NaN, left
    out, in AMOTA)."""
    if f"{prefix}mAP" not in metrics:
        return []
    state = {1.0: "on (scene order, SceneState carried)", 0.0: "off (every keyframe from an empty state)"}.get(
        metrics.get("predict/temporal"), "—")
    head = " | ".join(c for c, _, _ in PERCEPTION_COLUMNS)
    cells = " | ".join(_cell(metrics, prefix + k, f) for _, k, f in PERCEPTION_COLUMNS)
    aps = sorted((k[len(prefix) + 3:], v) for k, v in metrics.items() if k.startswith(f"{prefix}AP/"))
    lines = ["## Perception (nuScenes devkit: DetectionEval, TrackingEval)", "",
             f"| temporal state | {head} |", "|---|" + "---:|" * len(PERCEPTION_COLUMNS), f"| {state} | {cells} |", "",
             "Annotated classes after the devkit's range and point filters: "
             f"{_cell(metrics, prefix + 'det_classes_with_gt', '{:.0f}')} of 10 detection classes, "
             f"{_cell(metrics, prefix + 'trk_classes_with_gt', '{:.0f}')} of 7 tracking "
             "classes; mAP and NDS average over all ten (a class without annotations has AP 0), AMOTA and AMOTP over "
             "the tracking classes with annotations."]
    if aps:
        lines += ["", "| class | " + " | ".join(c for c, _ in aps) + " |", "|---|" + "---:|" * len(aps),
                  "| AP | " + " | ".join(_cell({"v": v}, "v", "{:.3f}") for _, v in aps) + " |"]
    return lines + [""]
