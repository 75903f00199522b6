"""The sweep's results table (markdown) and plot, from the per-trial metric dicts Tune returns.

Columns: stage set, model size, learning rate, temporal setting ('on': trained on clips, evaluated with scene
state; 'off': single keyframes), both L2 conventions (UniAD: value at the horizon; ST-P3: mean up to the horizon) at
1/2/3 s and average, collision rates, the tracking figures (ID switches, agent velocity error in m/s), training
loss, trial status.
"""
from __future__ import annotations

import math
from pathlib import Path

COLUMNS = [
    ("trial_id", "trial", "{}"),
    ("stages", "stages", "{}"),
    ("model_size", "size", "{}"),
    ("lr", "lr", "{:.2e}"),
    ("temporal", "temporal", "{}"),
    ("traj_encoding", "encoding", "{}"),
    ("uniad/L2_1s", "UniAD L2 1s", "{:.2f}"),
    ("uniad/L2_2s", "UniAD L2 2s", "{:.2f}"),
    ("uniad/L2_3s", "UniAD L2 3s", "{:.2f}"),
    ("uniad/L2_avg", "UniAD L2 avg", "{:.2f}"),
    ("uniad/col_avg", "UniAD col % avg", "{:.2f}"),
    ("stp3/L2_1s", "ST-P3 L2 1s", "{:.2f}"),
    ("stp3/L2_2s", "ST-P3 L2 2s", "{:.2f}"),
    ("stp3/L2_3s", "ST-P3 L2 3s", "{:.2f}"),
    ("stp3/L2_avg", "ST-P3 L2 avg", "{:.2f}"),
    ("stp3/col_avg", "ST-P3 col % avg", "{:.2f}"),
    ("odvla/L2_avg", "ODVLA L2 avg", "{:.2f}"),
    ("odvla/col_avg", "ODVLA col % avg", "{:.2f}"),
    ("perception/AMOTA", "AMOTA", "{:.3f}"),
    ("perception/IDS", "IDS", "{:.0f}"),
    ("train_loss", "train loss", "{:.3f}"),
    ("status", "status", "{}"),
]


def _fmt(value, fmt: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    try:
        return fmt.format(value)
    except (ValueError, TypeError):
        return str(value)


def results_markdown(rows: list[dict], title: str = "Sweep results", notes: list[str] = ()) -> str:
    """One row per trial; rows sorted by stage set, size, lr, then temporal setting ('off' before 'on').
    ``notes``: lines under the table."""
    rows = sorted(rows, key=lambda r: (str(r.get("stages")), str(r.get("model_size")), r.get("lr") or 0.0,
                                       str(r.get("temporal") or ""), str(r.get("traj_encoding") or "")))
    head = "| " + " | ".join(c[1] for c in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_fmt(r.get(k), f) for k, _, f in COLUMNS) + " |" for r in rows]
    legend = ("\nL2 in metres, collision in %. UniAD: value at the horizon; ST-P3: mean up to the horizon; "
              "ODVLA: ST-P3 averaging on vehicle-only occupancy (the OpenDriveVLA paper's table). temporal on: "
              "trained on scene clips, evaluated scene by scene with tracking state; ID switches and velocity error "
              "are scored on the tracks each val keyframe leaves.\n")
    extra = ("\n" + "\n".join(notes) + "\n") if notes else ""
    return f"## {title}\n\n" + "\n".join([head, sep, *body]) + "\n" + legend + extra


def results_plot(rows: list[dict], path: str | Path, metric: str = "uniad/L2_avg", by_lr: bool = False) -> Path:
    """Bar chart of ``metric`` per trial (ablation), or ``metric`` against the learning rate (``by_lr``, HPO),
    saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if isinstance(r.get(metric), (int, float)) and not math.isnan(r[metric])]
    labels = [f"{r['stages']}\n{r['model_size']}" + (f"\nlr {r['lr']:.0e}" if r.get("lr") else "")
              + (f"\ntemporal {r['temporal']}" if r.get("temporal") else "") for r in done]
    unit = " (%)" if "/col" in metric else " (m)" if "/L2" in metric else ""
    if by_lr:
        fig, ax = plt.subplots(figsize=(5, 3.5))
        for size in sorted({r["model_size"] for r in done}):
            pts = sorted((r["lr"], r[metric]) for r in done if r["model_size"] == size and r.get("lr"))
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=size)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.legend(fontsize=7)
        ax.set_title("Learning-rate search")
    else:
        fig, ax = plt.subplots(figsize=(max(4, 1.4 * len(done)), 3.5))
        ax.bar(range(len(done)), [r[metric] for r in done], color="#4C72B0")
        ax.set_xticks(range(len(done)), labels, fontsize=7)
        ax.set_title("Stage / size ablation")
    ax.set_ylabel(f"{metric}{unit}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
