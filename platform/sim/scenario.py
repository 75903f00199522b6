"""Closed-loop scenarios: a seeded synthetic world, the logged ego, a start pose, a duration and the agents.

A scenario is drawn like one scene of ``odvla synth``: the town grid (``platform/world/road_map.py``), the logged
ego's lane route and speed profile (``ego_track``) and 12..19 agents around it (``agents_around``,
``platform/world/motion.py``), all from ``np.random.default_rng([seed, KIND_INDEX[kind], attempt])``. The ego
starts ``LOG_START_S`` = 2 s into its log, so that the first planner tick has 2 s of (logged) history, as a
training sample has; simulated time ``t`` is log time ``LOG_START_S + t``. Times below are simulated time.

- The drivable area is the union of the map's ``drivable_area`` polygons (the map-expansion records
  ``NuScenesMap`` loads), as a shapely geometry. A world without one is an error.
- **Normal scenarios** (``normal``) keep the synthetic agents except those whose logged box comes within
  ``CONFLICT_MARGIN`` m of the logged ego's box during the scenario: the data generator does not plan the agents
  around the ego (a cone may stand in an intersection the ego turns through), and a benchmark whose expert log
  crashes measures nothing. How many were removed is ``Scenario.removed_conflicts``.
- **Safety scenarios**, in the style of NeuroNCAP (atonderski/neuro-ncap, ``scenarios/``: stationary, frontal,
  side): the normal scenario plus one injected actor placed so that the *logged* ego would hit it at ``T_HIT`` =
  5 s; agents that would overlap the injected actor are removed too. The injected actor is scripted (it does not
  react in either agent mode, as NeuroNCAP's actors replay their trajectories).

  ==============  ==========================================================================================
  ``stationary``  a car standing in the ego lane, its rear at the logged ego's front bumper at ``T_HIT``
  ``frontal``     a car driving against the ego along the ego lane at ``FRONTAL_SPEED``; fronts meet at ``T_HIT``
  ``cutin``       a car in the lane to the right (3.5 m), slower than the ego, that changes into the ego lane
                  over ``T_HIT - 3 .. T_HIT - 1`` s and then brakes to a stop at 3 m/s^2; its rear is at the
                  logged ego's front bumper at ``T_HIT``
  ``pedestrian``  a pedestrian walking from the right sidewalk (7 m right of the lane centre) across the ego
                  lane at 1.4 m/s, crossing the lane centre just ahead of the logged ego's front at ``T_HIT``
  ==============  ==========================================================================================

  A draw whose logged ego covers less than ``MIN_LOG_TRAVEL`` m by ``T_HIT``, or moves slower than ``MIN_HIT_SPEED``
  m/s at ``T_HIT``, could not hit anything: the next ``attempt`` is drawn (deterministic for the seed). Normal
  scenarios are drawn under the same rule, so that every scenario drives somewhere.
  ``Scenario.reference_impact_speed`` is NeuroNCAP's ``v_r``: the relative speed ``|v_ego - v_actor|`` (m/s) at
  which the logged ego hits the actor at ``T_HIT`` ("the impact speed that would have happened if no actions were
  taken", ``docs/evaluation-protocol-overview.md``; its ``engine.py`` reads the ego's and actor's velocities 4 s
  after the start; here the actor is placed for a hit at 5 s and the velocities are read there).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np
import shapely

from odvla.platform.sim.vehicle import EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH, WHEELBASE, VehicleState, box_polygon
from odvla.platform.world.motion import AGENT_TYPES, Track, agents_around, ego_track
from odvla.platform.world.road_map import LANE_WIDTH, RoadGrid

LOG_START_S = 2.0
DEFAULT_DURATION_S = 15.0
T_HIT = 5.0  # s of simulated time at which the logged ego hits a safety scenario's injected actor
CONFLICT_MARGIN = 0.5  # m added around the ego box when removing agents that conflict with the log
MIN_LOG_TRAVEL = 20.0  # m
MIN_HIT_SPEED = 3.0  # m/s
FRONTAL_SPEED = 5.0  # m/s
PEDESTRIAN_SPEED = 1.4  # m/s
MAX_ATTEMPTS = 50

KIND_INDEX = {"normal": 0, "stationary": 1, "frontal": 2, "cutin": 3, "pedestrian": 4}
SAFETY_KINDS = ("stationary", "frontal", "cutin", "pedestrian")
AGENT_KINDS = ("vehicle", "pedestrian", "static")


def agent_kind(category: str) -> str:
    """'vehicle' (``vehicle.*``, parked cars included), 'pedestrian' (``human.*``) or 'static' (cones, barriers)."""
    if category.startswith("vehicle."):
        return "vehicle"
    if category.startswith("human."):
        return "pedestrian"
    return "static"


@dataclass
class Actor:
    """One agent of a scenario: its nuScenes ``category``, ``kind`` (``AGENT_KINDS``), box ``length`` x ``width`` x
    ``height`` (m) and logged ``track`` (log time, global frame); ``injected`` for a safety scenario's actor."""

    category: str
    kind: str
    length: float
    width: float
    height: float
    track: Track
    injected: bool = False


@dataclass
class Scenario:
    """A closed-loop scenario (module docstring). Arrays are global frame (x east, y north, m)."""

    name: str
    kind: str
    seed: int
    agent_mode: str
    duration_s: float
    grid: RoadGrid
    ego_log: Track
    """the logged ego (log time ``t``: simulated time + ``LOG_START_S``)"""
    route: np.ndarray
    """[M, 2] the logged ego's lane route from its position at the start to its position at the end"""
    route_ahead: np.ndarray
    """[M', 2] the whole lane route from the start on (it continues past ``route``; the command reads it)"""
    actors: list[Actor]
    drivable_area: shapely.Geometry
    start: VehicleState
    target: int | None = None
    """index into ``actors`` of the injected actor (safety scenarios)"""
    reference_impact_speed: float | None = None
    """NeuroNCAP's ``v_r`` (m/s), safety scenarios only"""
    removed_conflicts: int = 0
    attempt: int = 0
    moves: list = field(default_factory=list)

    @property
    def t0_log(self) -> float:
        return LOG_START_S


def _check_choice(what: str, value: str, choices) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choices: {', '.join(choices)}")


def drivable_area_of(expansion: dict, where: str = "map") -> shapely.Geometry:
    """Union of the polygons of a map expansion's ``drivable_area`` records (the nuScenes map-expansion JSON tree,
    as ``RoadGrid.expansion_json`` writes it). ValueError naming ``where`` when there is none, or it has no area."""
    nodes = {r["token"]: (r["x"], r["y"]) for r in expansion.get("node", [])}
    polys = {r["token"]: r for r in expansion.get("polygon", [])}
    rings = [shapely.Polygon([nodes[t] for t in polys[tok]["exterior_node_tokens"]])
             for da in expansion.get("drivable_area", []) for tok in da["polygon_tokens"]]
    area = shapely.unary_union(rings) if rings else shapely.Polygon()
    if area.is_empty or area.area <= 0.0:
        raise ValueError(f"{where}: the world's map has no drivable area ({len(rings)} drivable_area polygons)")
    return area


@functools.lru_cache(maxsize=8)
def drivable_area(n: int, spacing: float, margin: float) -> shapely.Geometry:
    """The drivable area of ``RoadGrid(n, spacing, margin)`` (:func:`drivable_area_of` of its map expansion)."""
    where = f"RoadGrid n={n}, spacing={spacing}, margin={margin}"
    if n < 1:
        raise ValueError(f"{where}: the world's map has no drivable area (no roads)")
    return drivable_area_of(RoadGrid(n=n, spacing=spacing, margin=margin).expansion_json(), where)


def make_scenario(kind: str = "normal", seed: int = 0, agent_mode: str = "log",
                  duration_s: float = DEFAULT_DURATION_S, grid: RoadGrid | None = None) -> Scenario:
    """The scenario ``kind`` (``SCENARIO_KINDS``) of world ``seed`` with agents in ``agent_mode`` (``AGENT_MODES``
    of ``platform/sim/agents.py``). Raises ValueError naming an unknown kind or mode, or a world without a
    drivable area."""
    from odvla.platform.sim.agents import AGENT_MODES

    _check_choice("scenario kind", kind, SCENARIO_KINDS)
    _check_choice("agent mode", agent_mode, AGENT_MODES)
    if not duration_s > T_HIT + 1.0:
        raise ValueError(f"scenario duration_s={duration_s} must exceed {T_HIT + 1.0} s")
    grid = grid or RoadGrid()
    name = f"{kind}-{seed}-{agent_mode}"
    try:
        area = drivable_area(grid.n, grid.spacing, grid.margin)
    except ValueError as e:
        raise ValueError(f"scenario {name}: {e}") from None
    if grid.n < 3:
        raise ValueError(f"scenario {name}: RoadGrid n={grid.n} has no inner intersection to start a route at "
                         f"(n >= 3)")
    for attempt in range(MAX_ATTEMPTS):
        rng = np.random.default_rng([seed, KIND_INDEX[kind], attempt])
        sc = _draw(kind, seed, agent_mode, duration_s, grid, area, rng, name, attempt)
        if sc is not None:
            return sc
    raise ValueError(f"scenario {name}: no draw in {MAX_ATTEMPTS} attempts has a logged ego that moves "
                     f"{MIN_LOG_TRAVEL} m by {T_HIT} s")


def _draw(kind, seed, agent_mode, duration_s, grid, area, rng, name, attempt) -> Scenario | None:
    ego, info = ego_track(grid, rng, LOG_START_S + duration_s)
    synth = agents_around(grid, ego, rng, count=int(rng.integers(12, 20)))
    t0, t_end = LOG_START_S, LOG_START_S + duration_s
    s_log = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(ego.xy, axis=0), axis=1))])
    s_at = functools.partial(np.interp, xp=ego.t, fp=s_log)
    s0 = float(s_at(t0))
    if float(s_at(t0 + T_HIT)) - s0 < MIN_LOG_TRAVEL or float(np.interp(t0 + T_HIT, ego.t, ego.v)) < MIN_HIT_SPEED:
        return None
    route_full = info["route_points"]
    r_arc = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(route_full, axis=0), axis=1))])
    i0 = int(np.searchsorted(r_arc, s0))
    i1 = int(np.searchsorted(r_arc, float(s_at(t_end))))
    route = route_full[i0:i1 + 1]
    actors = [Actor(a.category, agent_kind(a.category), a.wlh[1], a.wlh[0], a.wlh[2], a.track) for a in synth]
    times = ego.t[(ego.t >= t0 - 1e-9) & (ego.t <= t_end + 1e-9)][::2]  # 10 Hz
    ego_xy, ego_yaw, ego_v = ego.at(times)
    ego_b = _ego_box_log(ego_xy, ego_yaw, CONFLICT_MARGIN)
    keep = [a for a in actors if not _overlaps(ego_b, a, times, 0.0)]
    removed = len(actors) - len(keep)
    target, v_ref = None, None
    if kind != "normal":
        actor = SCENARIO_KINDS[kind](ego, route_full, r_arc, s_at, t0)
        keep = [a for a in keep if not _overlaps(_actor_boxes(actor, times), a, times, 1.0)]
        removed = len(actors) - len(keep)
        keep.append(actor)
        target = len(keep) - 1
        th = np.array([t0 + T_HIT])
        exy, eyaw, ev = ego.at(th)
        axy, ayaw, av = actor.track.at(th)
        ve = ev[0] * np.array([np.cos(eyaw[0]), np.sin(eyaw[0])])
        va = av[0] * np.array([np.cos(ayaw[0]), np.sin(ayaw[0])])
        v_ref = float(np.linalg.norm(ve - va))
    sxy, syaw, sv = ego.at(np.array([t0]))
    yaw_rate = float(np.interp(t0, ego.t, np.gradient(np.unwrap(ego.yaw), ego.t)))
    steer = float(np.arctan(WHEELBASE * yaw_rate / sv[0])) if sv[0] > 0.5 else 0.0
    start = VehicleState(float(sxy[0, 0]), float(sxy[0, 1]), float(syaw[0]), float(sv[0]), steer)
    start_box = box_polygon(_ego_box_log(sxy, syaw, 0.0))[0]
    if not area.covers(start_box):
        raise ValueError(f"scenario {name}: the ego's start box at ({start.x:.1f}, {start.y:.1f}) is not inside "
                         f"the drivable area")
    return Scenario(name, kind, seed, agent_mode, duration_s, grid, ego, route, route_full[i0:], keep, area, start,
                    target, v_ref, removed, attempt, list(info["moves"]))


def _ego_box_log(xy, yaw, margin: float) -> np.ndarray:
    """Ego boxes [T, 5] (x, y, yaw, length, width) of rear-axle poses, ``margin`` m wider on every side."""
    cx = xy[:, 0] + EGO_FORWARD_SHIFT * np.cos(yaw)
    cy = xy[:, 1] + EGO_FORWARD_SHIFT * np.sin(yaw)
    n = len(xy)
    return np.stack([cx, cy, yaw, np.full(n, EGO_LENGTH + 2 * margin), np.full(n, EGO_WIDTH + 2 * margin)], -1)


def _actor_boxes(a: Actor, times: np.ndarray, margin: float = 0.0) -> np.ndarray:
    xy, yaw, _ = a.track.at(times)
    n = len(times)
    return np.stack([xy[:, 0], xy[:, 1], yaw, np.full(n, a.length + 2 * margin), np.full(n, a.width + 2 * margin)],
                    -1)


def _overlaps(boxes: np.ndarray, a: Actor, times: np.ndarray, margin: float) -> bool:
    """Whether boxes [T, 5] at ``times`` overlap actor ``a`` (inflated by ``margin`` m) at any of them."""
    return bool(shapely.intersects(box_polygon(boxes), box_polygon(_actor_boxes(a, times, margin))).any())


# ---- the injected actors -------------------------------------------------------------------------------------

def _route_pose(route, r_arc, s):
    """Points [N, 2] and headings [N] of the route at arcs ``s`` [N], continued straight past both ends."""
    s = np.asarray(s, np.float64)
    d0 = route[1] - route[0]
    d1 = route[-1] - route[-2]
    d0, d1 = d0 / np.linalg.norm(d0), d1 / np.linalg.norm(d1)
    x = np.interp(s, r_arc, route[:, 0])
    y = np.interp(s, r_arc, route[:, 1])
    xy = np.stack([x, y], -1)
    xy = np.where((s < 0)[:, None], route[0] + d0 * s[:, None], xy)
    xy = np.where((s > r_arc[-1])[:, None], route[-1] + d1 * (s - r_arc[-1])[:, None], xy)
    tang = np.gradient(route, axis=0)
    heading = np.interp(np.clip(s, 0, r_arc[-1]), r_arc, np.unwrap(np.arctan2(tang[:, 1], tang[:, 0])))
    return xy, heading


def _car() -> tuple[float, float, float]:
    """(width, length, height) m of the synthetic data's mean car."""
    return AGENT_TYPES["vehicle.car"][0]


def _front_gap(length: float) -> float:
    """Arc from the ego's rear axle to the centre of an actor of ``length`` whose rear touches the ego's front."""
    return EGO_FORWARD_SHIFT + EGO_LENGTH / 2 + length / 2


def _actor_on_route(category, wlh, route, r_arc, t, s, lateral, heading_offset, speed) -> Actor:
    xy, heading = _route_pose(route, r_arc, s)
    left = np.stack([-np.sin(heading), np.cos(heading)], -1)
    xy = xy + left * np.asarray(lateral, np.float64).reshape(-1, 1)
    yaw = (heading + heading_offset + np.pi) % (2 * np.pi) - np.pi
    w, ln, h = wlh
    return Actor(category, agent_kind(category), ln, w, h, Track(t.copy(), xy, yaw, np.asarray(speed, np.float64)),
                 injected=True)


def _stationary(ego, route, r_arc, s_at, t0) -> Actor:
    w, ln, h = _car()
    s_c = float(s_at(t0 + T_HIT)) + _front_gap(ln)
    t = ego.t
    return _actor_on_route("vehicle.car", (w, ln, h), route, r_arc, t, np.full(len(t), s_c), 0.0, 0.0,
                           np.zeros(len(t)))


def _frontal(ego, route, r_arc, s_at, t0) -> Actor:
    w, ln, h = _car()
    t = ego.t
    s_meet = float(s_at(t0 + T_HIT)) + _front_gap(ln)
    s = s_meet + FRONTAL_SPEED * (t0 + T_HIT - t)
    return _actor_on_route("vehicle.car", (w, ln, h), route, r_arc, t, s, 0.0, np.pi, np.full(len(t), FRONTAL_SPEED))


def _cutin(ego, route, r_arc, s_at, t0) -> Actor:
    w, ln, h = _car()
    t = ego.t
    th = t0 + T_HIT
    v_ego = float(np.interp(th, ego.t, ego.v))
    v_a = max(v_ego - 2.0, 2.0)
    v = np.where(t < th - 1.0, v_a, np.maximum(v_a - 3.0 * (t - (th - 1.0)), 0.0))
    s_rel = np.concatenate([[0.0], np.cumsum(0.5 * (v[1:] + v[:-1]) * np.diff(t))])
    s = s_rel - np.interp(th, t, s_rel) + float(s_at(th)) + _front_gap(ln)
    blend = np.clip((t - (th - 3.0)) / 2.0, 0.0, 1.0)
    lateral = -LANE_WIDTH * 0.5 * (1.0 + np.cos(np.pi * blend))
    return _actor_on_route("vehicle.car", (w, ln, h), route, r_arc, t, s, lateral, 0.0, v)


def _pedestrian(ego, route, r_arc, s_at, t0) -> Actor:
    wlh = AGENT_TYPES["human.pedestrian.adult"][0]
    t = ego.t
    th = t0 + T_HIT
    s_p = float(s_at(th)) + EGO_FORWARD_SHIFT + EGO_LENGTH / 2 + 0.6
    lateral = np.clip(PEDESTRIAN_SPEED * (t - th), -7.0, 7.0)
    speed = np.where(np.abs(PEDESTRIAN_SPEED * (t - th)) < 7.0, PEDESTRIAN_SPEED, 0.0)
    return _actor_on_route("human.pedestrian.adult", wlh, route, r_arc, t, np.full(len(t), s_p), lateral,
                           np.pi / 2, speed)


SCENARIO_KINDS = {"normal": None, "stationary": _stationary, "frontal": _frontal, "cutin": _cutin,
                  "pedestrian": _pedestrian}
"""Scenario kind -> the builder of its injected actor (None: no actor)."""
assert tuple(SCENARIO_KINDS) == tuple(KIND_INDEX) and set(SAFETY_KINDS) == set(SCENARIO_KINDS) - {"normal"}
