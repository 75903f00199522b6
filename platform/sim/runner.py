"""Closed-loop rollouts in parallel on Ray, aggregated per planner into one table.

    jobs = rollout_jobs(sim_cfg, planners)               # every (scenario, planner) pair
    rows = run_rollouts(jobs, sim_cfg)                   # Ray actors, a progress line per finished rollout
    per_planner = aggregate(rows); markdown_table(per_planner)

``sim.workers`` Ray actors (``RolloutWorker``, 1 CPU each) take the jobs from an ``ActorPool`` as they finish;
each actor builds a planner the first time a job names it and keeps it (an export is loaded once per actor, the
ego MLP fitted once), so the actors form the planner's pool: on a cluster they spread over the nodes unchanged.
The served model (``PlannerSpec`` kind ``http``) is reached over HTTP from every actor instead: its replicas are
the Serve deployment's. ``sim.workers = 0`` runs everything in this process.

A rollout returns its figures (``score_rollout``), its planner errors (tick, message), the per-tick time split and,
with ``sim.animate``, its BEV GIF and the camera strip of its worst moment as bytes, so nothing depends on a shared
file system. A rollout that raises fails the run: no table is made of a partial set.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import numpy as np

from odvla.platform.sim.planners import PlannerSpec, make_planner
from odvla.platform.sim.scenario import SAFETY_KINDS, SCENARIO_KINDS
from odvla.platform.sim.table import aggregate, markdown_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RolloutJob:
    """One rollout: scenario ``kind`` of world ``seed`` with ``agents`` mode, driven by ``planner``."""

    kind: str
    seed: int
    agents: str
    duration_s: float
    planner: PlannerSpec


def check_agents(agents: str) -> None:
    from odvla.platform.sim.agents import AGENT_MODES

    if agents not in AGENT_MODES:
        raise ValueError(f"sim.agents: unknown agent mode {agents!r}; choices: {', '.join(AGENT_MODES)}")


def scenario_list(scenarios: int, safety: bool, seed: int = 0, kinds=None) -> list[tuple[str, int]]:
    """(kind, seed) of the run: ``scenarios`` normal worlds from ``seed`` on, and with ``safety`` the four safety
    kinds of each of them; ``kinds`` picks kinds explicitly (ValueError naming an unknown one)."""
    if int(scenarios) < 1:
        raise ValueError(f"sim.scenarios: {scenarios} must be >= 1")
    kinds = list(kinds) if kinds else ["normal", *(SAFETY_KINDS if safety else ())]
    for k in kinds:
        if k not in SCENARIO_KINDS:
            raise ValueError(f"unknown scenario kind {k!r}; choices: {', '.join(SCENARIO_KINDS)}")
    return [(k, int(seed) + i) for i in range(int(scenarios)) for k in kinds]


def rollout_jobs(sim_cfg, planners: list[PlannerSpec], kinds=None) -> list[RolloutJob]:
    """Every (scenario, planner) pair of ``sim_cfg`` (a ``SimConfig``), scenario-major."""
    check_agents(sim_cfg.agents)
    return [RolloutJob(k, s, sim_cfg.agents, float(sim_cfg.duration_s), p)
            for k, s in scenario_list(sim_cfg.scenarios, sim_cfg.safety, sim_cfg.seed, kinds) for p in planners]


def check_planner(spec: PlannerSpec, tracking_uri=None) -> None:
    """Named errors before any rollout starts: an export that is missing, or whose camera size the renderer cannot
    produce (``sensors.check_cameras``); an endpoint that does not answer ``/readyz``."""
    if spec.kind == "http":
        import httpx

        url = spec.args["url"].rstrip("/")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=10.0).status_code == 200
        except httpx.HTTPError as e:
            raise ValueError(f"planner endpoint {url}: not reachable ({type(e).__name__}: {e})") from None
        if not ready:
            raise ValueError(f"planner endpoint {url}: not ready (GET /readyz is not 200)")
        return
    if spec.kind != "export":
        return
    from odvla.model.config import VisionConfig
    from odvla.platform.config.loader import read_yaml
    from odvla.platform.export import CONFIG, resolve_export
    from odvla.platform.sim.sensors import check_cameras

    ref = spec.args["ref"]
    folder = resolve_export(ref, tracking_uri or spec.args.get("tracking_uri"))
    vision = ((read_yaml(folder / CONFIG) or {}).get("model") or {}).get("vision") or {}
    default = VisionConfig()
    try:
        check_cameras((vision.get("image_height", default.image_height),
                       vision.get("image_width", default.image_width)))
    except ValueError as e:
        raise ValueError(f"model export {ref}: the simulator's renderer cannot produce this model's cameras "
                         f"(model.vision.image_height/image_width): {e}") from None


class RolloutWorker:
    """Runs rollouts; keeps each planner it built (module docstring). ``image_hw`` rendered camera size (H, W)."""

    def __init__(self, image_hw=(225, 400), animate: bool = True, torch_threads: int = 1):
        from odvla.platform.log_setup import configure

        configure()  # a Ray actor: the library's records go to its log at $ODVLA_LOG_LEVEL
        if torch_threads > 0:
            import torch

            torch.set_num_threads(int(torch_threads))
        self.image_hw = tuple(int(v) for v in image_hw)
        self.animate = bool(animate)
        self.planners: dict = {}
        self.ego_mlp = None

    def planner(self, spec: PlannerSpec):
        if spec not in self.planners:
            if spec.kind == "ego_mlp" and self.ego_mlp is None:
                from odvla.platform.sim.baselines import train_world_ego_mlp

                self.ego_mlp = train_world_ego_mlp()
            self.planners[spec] = make_planner(spec, self.ego_mlp)
        return self.planners[spec]

    def run(self, job: RolloutJob) -> dict:
        """One rollout -> a row: ``scenario``, ``kind``, ``seed``, ``planner``, ``score_rollout``'s figures,
        ``plan_errors`` [(tick, message)], ``timing`` (seconds per part, summed over ticks), ``wall_s``, and with
        animation ``gif``/``strip`` (bytes) and ``worst`` (frame, why)."""
        from odvla.platform.sim.closed_loop_metrics import score_rollout
        from odvla.platform.sim.rollout import run_rollout
        from odvla.platform.sim.scenario import make_scenario

        t0 = time.perf_counter()
        scenario = make_scenario(job.kind, job.seed, job.agents, job.duration_s)
        planner = self.planner(job.planner)
        rollout = run_rollout(scenario, planner, self.image_hw)
        t_m = time.perf_counter()
        row = {"scenario": scenario.name, "kind": job.kind, "seed": job.seed, "agents": job.agents,
               "planner": job.planner.name, **score_rollout(rollout),
               "plan_errors": [(int(t), str(m)) for t, m in rollout.plan_errors],
               "planner_warnings": list(getattr(planner, "warnings", None) or [])}
        timing = {k: float(np.sum(v)) for k, v in rollout.timing.items()}
        timing["score"] = time.perf_counter() - t_m  # PDMS and the figures after the run
        row["timing"] = timing
        if self.animate:
            from odvla.platform.sim.animation import bev_gif, camera_strip, worst_frame

            k, why = worst_frame(rollout)
            row["gif"] = bev_gif(rollout)
            row["strip"] = camera_strip(scenario, rollout, k, self.image_hw, why)
            row["worst"] = (k, why)
        row["wall_s"] = time.perf_counter() - t0
        return row

    def run_at(self, i: int, job: RolloutJob) -> tuple[int, dict]:
        """(i, ``run(job)``): the pool hands rows back as they finish."""
        return i, self.run(job)


def _progress(i: int, n: int, row: dict) -> None:
    errs = f", {row['planner_errors']} planner errors" if row["planner_errors"] else ""
    ncap = f", NCAP {row['ncap_score']:.2f}" if "ncap_score" in row else ""
    log.info("rollout %d/%d %s %s: PDMS %.3f, route %.0f%%, %d collisions%s%s (%.1f s)", i, n, row["scenario"],
             row["planner"], row["pdms"], 100 * row["route_completion"], row["collisions"], ncap, errs,
             row["wall_s"])


class RolloutPool:
    """``workers`` Ray actors (``RolloutWorker``, 1 CPU each; 0: one worker in this process) kept across
    :meth:`run` calls, so their planners stay loaded. ``close()`` (or ``with``) ends the actors."""

    def __init__(self, workers: int = 2, image_hw=(225, 400), animate: bool = True, torch_threads: int = 1):
        self.workers = int(workers)
        if self.workers <= 0:
            self.local, self.actors = RolloutWorker(image_hw, animate, torch_threads), []
            return
        import ray

        if not ray.is_initialized():
            ray.init()
        level = os.environ.get("ODVLA_LOG_LEVEL") or logging.getLevelName(logging.getLogger("odvla")
                                                                          .getEffectiveLevel())
        remote = ray.remote(num_cpus=1, runtime_env={"env_vars": {"ODVLA_LOG_LEVEL": level}})(RolloutWorker)
        self.local = None
        self.actors = [remote.remote(tuple(image_hw), animate, torch_threads) for _ in range(self.workers)]

    def run(self, jobs: list[RolloutJob]) -> list[dict]:
        """Every job's row (``RolloutWorker.run``) in the order of ``jobs``; a progress line per finished rollout
        (log record of this module)."""
        n = len(jobs)
        rows: list = [None] * n
        if self.local is not None:
            for i, job in enumerate(jobs):
                rows[i] = self.local.run(job)
                _progress(i + 1, n, rows[i])
            return rows
        from ray.util import ActorPool

        pool = ActorPool(self.actors)
        for i, job in enumerate(jobs):
            pool.submit(lambda a, v: a.run_at.remote(*v), (i, job))
        done = 0
        while pool.has_next():
            i, row = pool.get_next_unordered()
            done += 1
            rows[i] = row
            _progress(done, n, row)
        return rows

    def close(self) -> None:
        import ray

        for a in self.actors:
            ray.kill(a)
        self.actors = []

    def __enter__(self) -> "RolloutPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_rollouts(jobs: list[RolloutJob], workers: int = 2, image_hw=(225, 400), animate: bool = True,
                 torch_threads: int = 1) -> list[dict]:
    """Every job's row, in the order of ``jobs``, on a :class:`RolloutPool` of ``min(workers, len(jobs))`` actors
    (0: in this process)."""
    with RolloutPool(min(int(workers), len(jobs)), image_hw, animate, torch_threads) as pool:
        return pool.run(jobs)


def closed_loop_table(export_dir, sim_cfg, scenarios: int, safety: bool) -> tuple[str, dict]:
    """The demo's table: ``scenarios`` normal worlds (and with ``safety`` their four safety scenarios) driven by the
    model of ``export_dir`` (in process) and the three baselines, over ``sim_cfg.workers`` Ray actors (``sim_cfg``:
    a ``SimConfig``; its ``scenarios``/``safety`` are replaced by the arguments, no animation). Returns (Markdown
    table, per-planner figures)."""
    import dataclasses

    cfg = dataclasses.replace(sim_cfg, scenarios=int(scenarios), safety=bool(safety), animate=False)
    per_planner = _drive(export_dir, cfg, [PlannerSpec(b) for b in cfg.baselines])
    return markdown_table(per_planner), per_planner


CLOSED_LOOP_PREFIX = "closed_loop/"
"""Prefix of the model's closed-loop figures in a sweep's reports (``sweep.metric: closed_loop/pdms``)."""


def model_closed_loop_figures(export_dir, sim_cfg) -> dict:
    """The model's closed-loop aggregate (``table.aggregate``: ``pdms``, ``ncap_score``, ``route_completion``,
    ``collisions_per_km``, ...) over ``sim_cfg``'s scenarios, keyed ``closed_loop/<figure>``; no baselines, no
    animation. A Tune trial reports these when its ``sweep.metric`` is one of them."""
    import dataclasses

    per_planner = _drive(export_dir, dataclasses.replace(sim_cfg, animate=False), [])
    return {f"{CLOSED_LOOP_PREFIX}{k}": float(v) for k, v in per_planner["model"].items()}


def _drive(export_dir, cfg, baselines: list) -> dict:
    """Per-planner figures of the model of ``export_dir`` (in process) and ``baselines`` over ``cfg``'s
    scenarios."""
    planners = [PlannerSpec("model", "export", {"ref": str(export_dir), "torch_threads": int(cfg.torch_threads)}),
                *baselines]
    check_planner(planners[0])
    rows = run_rollouts(rollout_jobs(cfg, planners), cfg.workers, (cfg.image_height, cfg.image_width), False,
                        cfg.torch_threads)
    return aggregate(rows)
