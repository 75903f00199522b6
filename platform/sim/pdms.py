"""NAVSIM's PDM score of one simulated ego trace against agents and a drivable area.

    score_pdm(PDMInputs) -> PDMResult(nc, dac, ttc, ep, comfort, score, per-frame flags)
    PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12

Re-stated from autonomousvision/navsim (reference only):
``navsim/planning/simulation/planner/pdm_planner/scoring/pdm_scorer.py`` (``PDMScorer``, ``PDMScorerConfig``
defaults), ``.../scoring/pdm_scorer_utils.py`` (``get_collision_type``), ``.../scoring/pdm_comfort_metrics.py``,
``navsim/evaluate/pdm_score.py``, ``navsim/planning/metric_caching/metric_cache_processor.py`` (the non-reactive
observation), and nuPlan's ``nuplan/planning/simulation/observation/idm/utils.py`` (``is_agent_ahead`` 20 deg,
``is_agent_behind`` 150 deg, ``is_track_stopped`` 5e-3 m/s). Frames: everything is global (x, y metres, yaw rad
counter-clockwise); times are seconds at 10 Hz.

* **NC** (no at-fault collision): at every frame the ego box is intersected with every agent box present. A
  collision is classified as NAVSIM's ``get_collision_type`` does: ego speed <= 0.05 m/s: *stopped ego* (not at
  fault); the agent stopped (a ``static`` object always, an agent whose speed at its *first* frame is <= 5e-3 m/s):
  *stopped track* (at fault); the agent's centre more than 150 deg off the ego heading seen from the rear axle:
  *rear* (not at fault); the ego's front edge touches the agent: *front* (at fault); else *lateral*, at fault only
  while the ego is off the drivable area or across several lanes. An agent hit without fault is ignored from then
  on. NC = 0 for an at-fault hit of a vehicle, pedestrian or bicycle, 0.5 for a static object, else 1.
* **DAC**: 0 when at any frame one of the four ego corners is outside the drivable area (``drivable`` holds the
  union of NAVSIM's drivable layers), else 1. The box centre is not tested.
* **TTC**: at every frame with ego speed >= 5e-3 m/s the ego box is moved forward along its heading at its current
  speed by 0, 0.3, 0.6 and 0.9 s (frame offsets 0, 3, 6, 9) and intersected with the agents of that later frame.
  A hit is a violation (TTC = 0) when the agent is ahead (within 20 deg of the heading, seen from the rear axle), or
  when the ego is off-road, across lanes or on an intersection and the agent is not behind (150 deg); otherwise the
  agent is ignored from then on. The projection needs agents up to 0.9 s past the trace: ``agent_boxes`` may hold
  more (or fewer) frames than the trace (NAVSIM's observation spans the horizon + 1 s); past its last frame an
  agent moves on at its last velocity, as NAVSIM's own PDM observation forecasts agents.
* **EP**: the centre's progress along ``route`` (projection of the last minus the first centre, clipped at 0),
  times NC * DAC, divided by the best of that and ``best_progress_m``; when the best is at most 5 m every trace
  gets EP 1 (0 when its NC * DAC is 0).
* **C** (comfort): six bounds, each over every frame of the whole trace, strict inequalities: longitudinal
  acceleration in (-4.05, 2.40) m/s^2, |lateral acceleration| < 4.89 m/s^2, |jerk| < 8.37 m/s^3 (of the
  acceleration magnitude), |longitudinal jerk| < 4.13 m/s^3, |yaw rate| < 0.95 rad/s, |yaw acceleration| < 1.93
  rad/s^2. Signals are smoothed as NAVSIM does (``scipy.signal.savgol_filter``): accelerations with a window of the
  whole trace (order 2); jerks are the order-2 derivative filter over the whole trace of the accelerations first
  smoothed with a window of 8; yaw rate and yaw acceleration use a window of 5 (orders 2 and 3; the reference passes
  its whole-trace window to a helper that ignores it); values rounded to 8 decimals.

What differs from NAVSIM, and why:

* ``ego_pose`` is the *centre* of the ego box; ``rear_axle_offset_m`` says how far ahead of the rear axle it lies,
  and the ahead/behind tests use the rear axle, as NAVSIM's (0 puts the rear axle at the centre).
* NAVSIM's kinematic bicycle state carries no lateral acceleration (``batch_kinematic_bicycle.py`` sets
  ``ACCELERATION_Y`` to 0), so its lateral bound never fails after the first state and its jerk magnitude is the
  longitudinal one. ``lateral_accel='kinematic_zero'`` (the default) reproduces that; ``'centripetal'``
  (speed * yaw rate) is an option no reference uses.
* EP's reference: NAVSIM divides by the best of PDM-Closed's and the candidate's progress. Here ``best_progress_m``
  is whatever safe reference the caller has (``odvla eval --protocol pdms`` uses the logged expert trace tracked by
  the same controller, its progress times its NC * DAC); None: the candidate alone, so EP is 1 or 0.
* Driving-direction compliance has weight 0 in NAVSIM's PDMS and is not computed; there are no red-light polygons.
* Multiple lanes and intersections need ``lanes`` / ``intersections``; without them both conditions are false.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np
import shapely
from scipy.signal import savgol_filter

KINDS = ("vehicle", "pedestrian", "bicycle", "static")
AGENT_KINDS = ("vehicle", "pedestrian", "bicycle")  # nuPlan AGENT_TYPES: an at-fault hit scores 0, others 0.5

# PDMScorerConfig defaults and the thresholds of the functions it calls
WEIGHTS = {"ttc": 5.0, "ep": 5.0, "comfort": 2.0}
PROGRESS_DISTANCE_THRESHOLD = 5.0  # m
TTC_STOPPED_SPEED = 5e-3  # m/s, PDMScorerConfig.stopped_speed_threshold
EGO_STOPPED_SPEED = 5e-2  # m/s, get_collision_type(stopped_speed_threshold)
TRACK_STOPPED_SPEED = 5e-3  # m/s, nuPlan is_track_stopped
AHEAD_DEG, BEHIND_DEG = 20.0, 150.0  # nuPlan is_agent_ahead / is_agent_behind
TTC_FRAME_OFFSETS = (0, 3, 6, 9)  # np.arange(0, 10, 3) at 0.1 s
DT = 0.1  # s
STATIC_COLLISION_SCORE = 0.5

# pdm_comfort_metrics.py bounds
COMFORT_BOUNDS = {
    "lon_accel": (-4.05, 2.40),  # m/s^2
    "lat_accel": (-4.89, 4.89),  # m/s^2
    "jerk": (-8.37, 8.37),  # m/s^3, of the acceleration magnitude
    "lon_jerk": (-4.13, 4.13),  # m/s^3
    "yaw_rate": (-0.95, 0.95),  # rad/s
    "yaw_accel": (-1.93, 1.93),  # rad/s^2
}


@dataclass(frozen=True)
class PDMInputs:
    """One trace and its world. ``T`` trace frames at 0.1 s, ``N`` agents, ``Ta`` agent frames from t = 0 (any
    number; past the last one agents move on at their last velocity).

    t [T] s, t[0] = 0, 0.1 s steps; ego_pose [T, 3] box centre x, y (m) and yaw (rad), global frame; ego_speed [T]
    m/s longitudinal; ego_length / ego_width m (the box is centred on ``ego_pose``); agent_boxes [Ta, N, 5] x, y,
    yaw, length, width, NaN where the agent is absent; agent_velocity [Ta, N, 2] m/s global; agent_kinds N of
    ``KINDS``; drivable: shapely (Multi)Polygon, global; route [M, 2] route centreline, global;
    best_progress_m: the reference's safe progress (m) EP divides by (see the module docstring).
    Optional: ego_accel [T] m/s^2 longitudinal (None: the gradient of ``ego_speed``); rear_axle_offset_m (the box
    centre lies this far ahead of the rear axle); lanes: lane polygons (multiple-lanes test); intersections:
    (Multi)Polygon; lateral_accel: 'kinematic_zero' (NAVSIM) | 'centripetal'; agent_ids: N names for reports.
    """

    t: np.ndarray
    ego_pose: np.ndarray
    ego_speed: np.ndarray
    ego_length: float
    ego_width: float
    agent_boxes: np.ndarray
    agent_velocity: np.ndarray
    agent_kinds: tuple
    drivable: object
    route: np.ndarray
    best_progress_m: Optional[float] = None
    ego_accel: Optional[np.ndarray] = None
    rear_axle_offset_m: float = 0.0
    lanes: Optional[tuple] = None
    intersections: Optional[object] = None
    lateral_accel: str = "kinematic_zero"
    agent_ids: Optional[tuple] = None


@dataclass
class PDMResult:
    """Sub-scores, the score, and per-frame flags ([T] bool) for reports.

    ``progress_m``: the raw route progress (m, before NC * DAC); ``best_progress_m``: the EP denominator used;
    ``comfort_checks``: each bound's pass flag; ``collisions``: (frame, agent index, kind, collision type, at fault)
    of every agent hit first counted; ``ttc_hits``: (frame, offset, agent index) of the violations.
    """

    nc: float
    dac: float
    ttc: float
    ep: float
    comfort: float
    score: float
    progress_m: float
    best_progress_m: float
    at_fault_collision: np.ndarray
    off_road: np.ndarray
    ttc_violation: np.ndarray
    multiple_lanes: np.ndarray
    comfort_checks: dict = field(default_factory=dict)
    collisions: list = field(default_factory=list)
    ttc_hits: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"nc": self.nc, "dac": self.dac, "ttc": self.ttc, "ep": self.ep, "comfort": self.comfort,
                "score": self.score}


def aggregate(nc: float, dac: float, ttc: float, ep: float, comfort: float) -> float:
    """PDMS = NC * DAC * (5 TTC + 5 EP + 2 C) / 12 (``PDMScorer._aggregate_scores``)."""
    w = WEIGHTS
    return nc * dac * (w["ttc"] * ttc + w["ep"] * ep + w["comfort"] * comfort) / sum(w.values())


def box_corners(x, y, yaw, length, width) -> np.ndarray:
    """[..., 4, 2] corners front-left, rear-left, rear-right, front-right (nuPlan's order) of boxes centred on x, y."""
    x, y, yaw, length, width = np.broadcast_arrays(*(np.asarray(v, np.float64) for v in (x, y, yaw, length, width)))
    c, s = np.cos(yaw), np.sin(yaw)
    signs = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]], np.float64)
    lon = signs[:, 0] * length[..., None] / 2
    lat = signs[:, 1] * width[..., None] / 2
    return np.stack([x[..., None] + c[..., None] * lon - s[..., None] * lat,
                     y[..., None] + s[..., None] * lon + c[..., None] * lat], -1)


def _relative_angle(ref_xy, ref_yaw, xy) -> float:
    """nuPlan ``get_agent_relative_angle``: angle (rad) between the heading and the direction to ``xy``."""
    d = np.asarray(xy, np.float64) - np.asarray(ref_xy, np.float64)
    n = np.linalg.norm(d)
    if n == 0:
        return float("nan")  # the reference divides by zero too: neither ahead nor behind
    return float(np.arccos(np.clip(np.dot([np.cos(ref_yaw), np.sin(ref_yaw)], d / n), -1.0, 1.0)))


def _validate(x: PDMInputs) -> int:
    t = np.asarray(x.t, np.float64)
    T = len(t)
    if T < 2 or abs(t[0]) > 1e-9 or not np.allclose(np.diff(t), DT, atol=1e-6):
        raise ValueError(f"PDMInputs.t: expected 0.1 s steps from 0 (10 Hz), got {t[:4]}... ({T} frames)")
    for name, shape in (("ego_pose", (T, 3)), ("ego_speed", (T,))):
        if np.shape(getattr(x, name)) != shape:
            raise ValueError(f"PDMInputs.{name}: shape {np.shape(getattr(x, name))}, expected {shape}")
    if x.ego_accel is not None and np.shape(x.ego_accel) != (T,):
        raise ValueError(f"PDMInputs.ego_accel: shape {np.shape(x.ego_accel)}, expected {(T,)}")
    boxes = np.asarray(x.agent_boxes)
    if boxes.ndim != 3 or boxes.shape[2] != 5 or boxes.shape[0] < 1:
        raise ValueError(f"PDMInputs.agent_boxes: shape {boxes.shape}, expected [Ta >= 1, N, 5]")
    if np.shape(x.agent_velocity) != boxes.shape[:2] + (2,):
        raise ValueError(f"PDMInputs.agent_velocity: shape {np.shape(x.agent_velocity)}, expected "
                         f"{boxes.shape[:2] + (2,)}")
    bad = [k for k in x.agent_kinds if k not in KINDS]
    if len(x.agent_kinds) != boxes.shape[1] or bad:
        raise ValueError(f"PDMInputs.agent_kinds: {len(x.agent_kinds)} entries for {boxes.shape[1]} agents, "
                         f"unknown {bad[:3]} (allowed {KINDS})")
    if x.drivable is None or shapely.is_empty(x.drivable):
        raise ValueError("PDMInputs.drivable: empty drivable area")
    if np.ndim(x.route) != 2 or np.shape(x.route)[1] != 2 or len(x.route) < 2:
        raise ValueError(f"PDMInputs.route: shape {np.shape(x.route)}, expected [M >= 2, 2]")
    if x.lateral_accel not in ("kinematic_zero", "centripetal"):
        raise ValueError(f"PDMInputs.lateral_accel: {x.lateral_accel!r}, expected 'kinematic_zero' or 'centripetal'")
    return T


class _Agents:
    """Agent polygons per frame, with NAVSIM's first-frame identity (kind, heading, speed) per agent."""

    def __init__(self, boxes: np.ndarray, velocity: np.ndarray, kinds: tuple):
        self.boxes = np.asarray(boxes, np.float64)
        self.velocity = np.asarray(velocity, np.float64)
        self.kinds = kinds
        present = np.isfinite(self.boxes).all(-1)  # [Ta, N]
        first = np.argmax(present, axis=0)
        n = np.arange(self.boxes.shape[1])
        self.seen = present.any(0)
        self.first_heading = self.boxes[first, n, 2]
        first_speed = np.hypot(*self.velocity[first, n].T) if len(n) else np.zeros(0)
        first_speed = np.where(np.isfinite(first_speed), first_speed, 0.0)
        self.stopped = np.array([k == "static" for k in kinds], bool) | (first_speed <= TRACK_STOPPED_SPEED)
        self._cache: dict = {}

    def at(self, k: int):
        """(indices, boxes [n, 5], polygons [n]) of the agents present at frame ``k``; past the last frame the
        last one moved at its velocity."""
        if k not in self._cache:
            last = self.boxes.shape[0] - 1
            b = self.boxes[min(k, last)].copy()
            if k > last:
                v = np.nan_to_num(self.velocity[last])
                b[:, :2] += v * (k - last) * DT
            idx = np.flatnonzero(np.isfinite(b).all(-1))
            polys = shapely.polygons(box_corners(*b[idx].T)) if len(idx) else np.array([], object)
            self._cache[k] = (idx, b[idx], polys)
        return self._cache[k]


def _comfort(x: PDMInputs, T: int) -> dict:
    """Each comfort bound's pass flag (``pdm_comfort_metrics.py``), over the whole trace."""
    t = np.asarray(x.t, np.float64)
    speed = np.asarray(x.ego_speed, np.float64)
    ax = np.asarray(x.ego_accel, np.float64) if x.ego_accel is not None else np.gradient(speed, t)
    heading = np.asarray(x.ego_pose, np.float64)[:, 2]
    unwrapped = heading - 2 * np.pi * np.concatenate([[0.0], np.cumsum(np.round(np.diff(heading) / (2 * np.pi)))])
    if x.lateral_accel == "centripetal":
        ay = speed * np.gradient(unwrapped, t)
    else:
        ay = np.zeros(T)
    dx = float(np.diff(t).mean())

    def accel(a, window):
        return np.round(savgol_filter(a, window_length=min(window, T), polyorder=2, axis=-1), 8)

    def jerk(a):
        return np.round(savgol_filter(accel(a, 8), window_length=T, polyorder=2, deriv=1, delta=dx), 8)

    def yaw_deriv(order, poly):
        w = min(5, T)
        if poly >= w:
            raise ValueError(f"PDMInputs.t: {T} frames are too few for the yaw filters (window 5, order {poly})")
        return np.round(savgol_filter(unwrapped, window_length=w, polyorder=poly, deriv=order, delta=dx), 8)

    values = {"lon_accel": accel(ax, T), "lat_accel": accel(ay, T), "jerk": jerk(np.hypot(ax, ay)),
              "lon_jerk": jerk(ax), "yaw_rate": yaw_deriv(1, 2), "yaw_accel": yaw_deriv(2, 3)}
    return {k: bool(np.all((v > COMFORT_BOUNDS[k][0]) & (v < COMFORT_BOUNDS[k][1]))) for k, v in values.items()}


def score_pdm(x: PDMInputs) -> PDMResult:
    """NAVSIM's PDM score of ``x`` (see the module docstring)."""
    T = _validate(x)
    pose = np.asarray(x.ego_pose, np.float64)
    speed = np.abs(np.asarray(x.ego_speed, np.float64))
    corners = box_corners(pose[:, 0], pose[:, 1], pose[:, 2], x.ego_length, x.ego_width)  # [T, 4, 2]
    ego_polys = shapely.polygons(corners)
    rear = pose[:, :2] - x.rear_axle_offset_m * np.stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])], -1)
    agents = _Agents(x.agent_boxes, x.agent_velocity, tuple(x.agent_kinds))

    # ego areas (PDMScorer._calculate_ego_area): corners strictly inside
    inside = shapely.contains_xy(x.drivable, corners[..., 0], corners[..., 1])  # [T, 4]
    off_road = ~inside.all(-1)
    multiple_lanes = np.zeros(T, bool)
    if x.lanes:
        per_lane = np.stack([shapely.contains_xy(lane, corners[..., 0], corners[..., 1]).sum(-1)
                             for lane in x.lanes], -1)  # [T, L] corners inside each lane
        multiple_lanes = ((per_lane > 0).sum(-1) > 1) & np.all(per_lane != 4, axis=-1)
    in_intersection = (shapely.contains_xy(x.intersections, rear[:, 0], rear[:, 1])
                       if x.intersections is not None and not shapely.is_empty(x.intersections) else np.zeros(T, bool))
    lateral_fault_area = off_road | multiple_lanes

    # NC (PDMScorer._calculate_no_at_fault_collision + get_collision_type)
    nc, ignored, collisions = 1.0, set(), []
    at_fault = np.zeros(T, bool)
    for k in range(T):
        idx, boxes, polys = agents.at(k)
        if not len(idx):
            continue
        hits = np.flatnonzero(shapely.intersects(polys, ego_polys[k]))
        for h in hits:
            a = int(idx[h])
            if a in ignored:
                continue
            centre = shapely.centroid(polys[h])
            centre = (centre.x, centre.y)
            if speed[k] <= EGO_STOPPED_SPEED:
                kind = "stopped_ego"
            elif agents.stopped[a]:
                kind = "stopped_track"
            elif _relative_angle(rear[k], pose[k, 2], centre) > np.deg2rad(BEHIND_DEG):
                kind = "active_rear"
            elif shapely.intersects(shapely.linestrings(corners[k, [0, 3]]), polys[h]):
                kind = "active_front"
            else:
                kind = "active_lateral"
            fault = kind in ("active_front", "stopped_track") or (kind == "active_lateral" and lateral_fault_area[k])
            if fault:
                nc = min(nc, 0.0 if x.agent_kinds[a] in AGENT_KINDS else STATIC_COLLISION_SCORE)
                at_fault[k] = True
            else:
                ignored.add(a)
            collisions.append((k, a, x.agent_kinds[a], kind, fault))
    dac = 0.0 if off_road.any() else 1.0

    # TTC (PDMScorer._calculate_ttc)
    ttc, ttc_ignored, ttc_hits = 1.0, set(), []
    ttc_violation = np.zeros(T, bool)
    heading_dir = np.stack([np.cos(pose[:, 2]), np.sin(pose[:, 2])], -1)
    for k in range(T):
        for off in TTC_FRAME_OFFSETS:
            idx, boxes, polys = agents.at(k + off)
            if not len(idx):
                continue
            moved = shapely.polygons(corners[k] + heading_dir[k] * speed[k] * off * DT)
            for h in np.flatnonzero(shapely.intersects(polys, moved)):
                a = int(idx[h])
                if a in ttc_ignored or speed[k] < TTC_STOPPED_SPEED:
                    continue
                c = shapely.centroid(polys[h])
                angle = _relative_angle(rear[k], pose[k, 2], (c.x, c.y))
                if angle < np.deg2rad(AHEAD_DEG) or ((lateral_fault_area[k] or in_intersection[k])
                                                      and not angle > np.deg2rad(BEHIND_DEG)):
                    ttc = 0.0
                    ttc_violation[k] = True
                    ttc_hits.append((k, off, a))
                else:
                    ttc_ignored.add(a)

    # EP (PDMScorer._calculate_progress + _aggregate_scores)
    route = shapely.LineString(np.asarray(x.route, np.float64))
    progress = max(0.0, route.project(shapely.Point(pose[-1, :2])) - route.project(shapely.Point(pose[0, :2])))
    multi = nc * dac
    raw = progress * multi
    best = max(raw, float(x.best_progress_m) if x.best_progress_m is not None else raw)
    if best > PROGRESS_DISTANCE_THRESHOLD:
        ep = raw / best
    else:
        ep = 0.0 if multi == 0.0 else 1.0

    checks = _comfort(x, T)
    comfort = 1.0 if all(checks.values()) else 0.0
    return PDMResult(nc=nc, dac=dac, ttc=ttc, ep=ep, comfort=comfort, score=aggregate(nc, dac, ttc, ep, comfort),
                     progress_m=progress, best_progress_m=best, at_fault_collision=at_fault, off_road=off_road,
                     ttc_violation=ttc_violation, multiple_lanes=multiple_lanes, comfort_checks=checks,
                     collisions=collisions, ttc_hits=ttc_hits)
