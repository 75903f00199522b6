"""The closed-loop evaluation run behind ``odvla sim`` and ``jobs/closedloop.py``.

    run_sim(sim_cfg, tracking_cfg, model_ref, out_dir, url=None) -> SimResult(table_md, metrics, out_dir, run_id)

The model (an export in process, or the endpoint at ``url``) and the baselines of ``sim.baselines`` drive every
scenario (``platform/sim/runner.py``). Written under ``out_dir``:

- ``results.md``: the per-planner table and the per-scenario table, with every planner error listed;
- ``metrics.json``: ``planners`` (per-planner figures) and ``rollouts`` (per-scenario figures, collision events,
  planner errors, time split);
- ``gifs/<scenario>__<planner>.gif`` (BEV animation) and ``cameras/<scenario>__<planner>.png`` (the six cameras at
  the worst moment) with ``sim.animate``.

All of it goes to a new MLflow run in ``tracking.experiment`` (metrics ``sim/<planner>/<figure>`` and
``sim/<planner>/<scenario>/<figure>``, the config as params, the folder as artifacts under ``sim/``), through the
resilient tracker: a tracking server that is down costs the records, never the run.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from odvla.platform.sim.planners import PlannerSpec
from odvla.platform.sim.runner import check_planner, rollout_jobs, run_rollouts
from odvla.platform.sim.table import aggregate, markdown_table, scenario_table

log = logging.getLogger(__name__)

PER_SCENARIO_KEYS = ("pdms", "pdms_nc", "pdms_dac", "pdms_ttc", "pdms_ep", "pdms_comfort", "route_completion",
                     "collisions", "collisions_per_km", "max_impact_speed", "offroad_time_s", "ncap_score",
                     "planner_errors")


@dataclass
class SimResult:
    table_md: str
    metrics: dict
    out_dir: Path
    run_id: Optional[str]


def model_spec(model_ref: Optional[str], url: Optional[str], torch_threads: int = 1,
               tracking_uri: Optional[str] = None) -> PlannerSpec:
    """The model's planner: over HTTP with ``url``, else the export ``model_ref`` in process."""
    if url:
        return PlannerSpec("model", "http", {"url": url})
    if not model_ref:
        raise ValueError("odvla sim: pass --model EXPORT (folder, runs:/<id>/export, models:/<name>/<v>) or --url")
    model_ref = str(model_ref)
    if model_ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        from odvla.platform.tracking import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_uri)  # absolute: the Ray actors run elsewhere
    elif Path(model_ref).exists():
        model_ref = str(Path(model_ref).resolve())
    return PlannerSpec("model", "export", {"ref": model_ref, "torch_threads": int(torch_threads),
                                           "tracking_uri": tracking_uri})


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def write_outputs(rows: list[dict], per_planner: dict, out: Path, header: str) -> str:
    """results.md, metrics.json, gifs/ and cameras/ under ``out``; returns the per-planner table."""
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_table(per_planner)
    lines = [header, "", table, "", "## Per scenario", "", scenario_table(rows)]
    errors = [(r["scenario"], r["planner"], t, m) for r in rows for t, m in r["plan_errors"]]
    if errors:
        lines += ["", f"## Planner errors ({len(errors)})", ""]
        lines += [f"- {s} {p} tick {t}: {m}" for s, p, t, m in errors]
    warnings = [(r["scenario"], r["planner"], t, m) for r in rows for t, m in r.get("planner_warnings", ())]
    if warnings:
        lines += ["", f"## Planner warnings ({len(warnings)})", ""]
        lines += [f"- {s} {p} tick {t}: {m}" for s, p, t, m in warnings]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    clean = [{k: v for k, v in r.items() if k not in ("gif", "strip")} for r in rows]
    (out / "metrics.json").write_text(json.dumps({"planners": per_planner, "rollouts": clean}, indent=1,
                                                 default=float))
    for r in rows:
        stem = f"{_safe(r['scenario'])}__{_safe(r['planner'])}"
        if r.get("gif"):
            (out / "gifs").mkdir(exist_ok=True)
            (out / "gifs" / f"{stem}.gif").write_bytes(r["gif"])
        if r.get("strip"):
            (out / "cameras").mkdir(exist_ok=True)
            (out / "cameras" / f"{stem}.png").write_bytes(r["strip"])
    return table


def _log_mlflow(tracking_cfg, sim_cfg, model: PlannerSpec, rows: list[dict], per_planner: dict, out: Path
                ) -> Optional[str]:
    from odvla.platform.tracking import ResilientTracker, ensure_experiment, resolve_tracking_uri

    uri = resolve_tracking_uri(tracking_cfg.tracking_uri)
    tracker = ResilientTracker(uri, None)
    run_id = tracker.call("open sim run", lambda: tracker.client.create_run(
        ensure_experiment(tracker.client, tracking_cfg.experiment, uri), run_name="closed-loop",
        tags={"odvla.kind": "sim", "odvla.model": model.args.get("ref") or model.args.get("url", "")}).info.run_id)
    if run_id is None:
        return None
    tracker.run_id = run_id
    tracker.log_params({f"sim.{k}": v for k, v in dataclasses.asdict(sim_cfg).items()}
                       | {"sim.model": model.args.get("ref") or model.args.get("url")})
    metrics = {f"sim/{p}/{k}": v for p, agg in per_planner.items() for k, v in agg.items()}
    for r in rows:
        metrics.update({f"sim/{r['planner']}/{r['scenario']}/{k}": r[k] for k in PER_SCENARIO_KEYS if k in r})
    tracker.log_metrics({k: float(v) for k, v in metrics.items() if math.isfinite(float(v))}, step=0)
    tracker.log_artifacts(out, artifact_path="sim")
    tracker.terminate("FINISHED")
    return run_id


def run_sim(sim_cfg, tracking_cfg, model_ref: Optional[str], out_dir, url: Optional[str] = None,
            log_mlflow: bool = True) -> SimResult:
    """The closed-loop run (module docstring); ``sim_cfg`` a ``SimConfig``, ``tracking_cfg`` a ``TrackingConfig``."""
    model = model_spec(model_ref, url, sim_cfg.torch_threads, tracking_cfg.tracking_uri)
    check_planner(model, tracking_cfg.tracking_uri)
    planners = [model, *(PlannerSpec(b) for b in sim_cfg.baselines)]
    jobs = rollout_jobs(sim_cfg, planners)
    t0 = time.perf_counter()
    rows = run_rollouts(jobs, sim_cfg.workers, (sim_cfg.image_height, sim_cfg.image_width), sim_cfg.animate,
                        sim_cfg.torch_threads)
    per_planner = aggregate(rows)
    out = Path(out_dir)
    header = (f"# Closed loop: {sim_cfg.scenarios} world(s){' + safety scenarios' if sim_cfg.safety else ''}, "
              f"agents {sim_cfg.agents}, {sim_cfg.duration_s:g} s, model {model.args.get('ref') or url} "
              f"({len(rows)} rollouts in {time.perf_counter() - t0:.0f} s)")
    table = write_outputs(rows, per_planner, out, header)
    run_id = _log_mlflow(tracking_cfg, sim_cfg, model, rows, per_planner, out) if log_mlflow else None
    return SimResult(table, {"planners": per_planner, "rollouts": rows}, out, run_id)
