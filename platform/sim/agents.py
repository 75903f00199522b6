"""The other road users in the loop, in the two modes nuPlan has (``AGENT_MODES``):

- ``log``: non-reactive replay of every actor's logged track (``platform/world/motion.py``).
- ``idm``: every vehicle whose log moves follows its lane with the Intelligent Driver Model (M. Treiber,
  A. Hennecke, D. Helbing, "Congested traffic states in empirical observations and microscopic simulations",
  Phys. Rev. E 62, 1805, 2000), reacting to the ego and to every other actor ahead of it in its lane, as nuPlan's
  IDM agents do (``nuplan/planning/simulation/observation/idm/idm_policy.py``). Pedestrians, static objects,
  parked cars and a safety scenario's injected actor replay their logs.

IDM: ``dv/dt = a [1 - (v / v0)^4 - (s* / s)^2]``, ``s* = s0 + max(0, v T + v (v - v_lead) / (2 sqrt(a b)))``,
with the city-traffic parameters of Treiber and Kesting, "Traffic Flow Dynamics" (2013), Table 11.2: ``s0`` = 2 m,
``T`` = 1.0 s, ``a`` = 1.0 m/s^2, ``b`` = 1.5 m/s^2, exponent 4. The desired speed ``v0`` of an agent is the
highest speed of its log (its free-road speed). The deceleration is capped at ``IDM_MAX_DECEL`` (the physical
limit). Integration: the ballistic update of Treiber and Kanagaraj (2015) at the physics step, which stops a car
rather than reversing it.

Lanes: a synthetic vehicle drives along a grid line at a fixed lateral offset (``agents_around``), so its lane is
the straight line through its logged start along its logged direction of travel. The leader of an IDM agent is the
nearest actor or the ego whose box centre is ahead of it along its lane and whose box reaches into its lane
(lateral distance below half of both widths plus ``LANE_MARGIN``); the gap is bumper to bumper along the lane.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odvla.platform.sim.scenario import Scenario

IDM_S0 = 2.0  # m
IDM_T = 1.0  # s
IDM_A = 1.0  # m/s^2
IDM_B = 1.5  # m/s^2
IDM_DELTA = 4.0
IDM_MAX_DECEL = 8.0  # m/s^2
LANE_MARGIN = 0.3  # m
MIN_MOVING_SPEED = 0.5  # m/s: a logged vehicle never faster than this is parked and replays
_VEL_H = 0.05  # s: half step of the central difference that gives a logged actor's velocity

AGENT_MODES = {
    "log": "non-reactive replay of the logged tracks",
    "idm": "moving vehicles follow their lanes with the Intelligent Driver Model; the rest replay",
}


@dataclass(frozen=True)
class IDMParams:
    s0: float = IDM_S0
    T: float = IDM_T
    a: float = IDM_A
    b: float = IDM_B
    delta: float = IDM_DELTA
    max_decel: float = IDM_MAX_DECEL


def idm_accel(v: np.ndarray, v0: np.ndarray, gap: np.ndarray, v_lead: np.ndarray,
              p: IDMParams = IDMParams()) -> np.ndarray:
    """IDM acceleration [N] m/s^2 of followers at speed ``v`` [N] (m/s) with desired speed ``v0`` [N], bumper gap
    ``gap`` [N] (m; inf without a leader) and leader speed ``v_lead`` [N] along the lane; capped at
    ``-max_decel``. A gap of zero or less (contact) brakes at the cap."""
    v, v0 = np.asarray(v, np.float64), np.maximum(np.asarray(v0, np.float64), 0.1)
    gap, v_lead = np.asarray(gap, np.float64), np.asarray(v_lead, np.float64)
    s_star = p.s0 + np.maximum(0.0, v * p.T + v * (v - v_lead) / (2.0 * np.sqrt(p.a * p.b)))
    with np.errstate(divide="ignore", invalid="ignore"):
        interaction = np.where(np.isfinite(gap), (s_star / np.maximum(gap, 1e-3)) ** 2, 0.0)
    acc = p.a * (1.0 - (v / v0) ** p.delta - interaction)
    acc = np.where(gap <= 0.0, -p.max_decel, acc)
    return np.maximum(acc, -p.max_decel)


def ballistic_step(u: np.ndarray, v: np.ndarray, acc: np.ndarray, dt: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``u`` and speeds ``v`` [N] after ``dt`` s at constant ``acc`` [N]; a car that would reverse stops
    where its speed reaches 0 (Treiber and Kanagaraj 2015)."""
    v_new = v + acc * dt
    stop = v_new < 0.0
    du = np.where(stop, -v * v / (2.0 * np.where(stop, acc, -1.0)), v * dt + 0.5 * acc * dt * dt)
    return u + du, np.maximum(v_new, 0.0)


class AgentSim:
    """The actors of a scenario over simulated time: their boxes and velocities now, and a step of ``dt``.

    ``t`` is simulated time (s); the log is read at ``scenario.t0_log + t``."""

    def __init__(self, scenario: Scenario, params: IDMParams = IDMParams()):
        self.scenario = scenario
        self.params = params
        self.t = 0.0
        actors = scenario.actors
        self.n = len(actors)
        self.length = np.array([a.length for a in actors], np.float64)
        self.width = np.array([a.width for a in actors], np.float64)
        self.kinds = np.array([a.kind for a in actors], dtype=object)
        if scenario.agent_mode == "idm":
            self.idm = np.array([a.kind == "vehicle" and not a.injected and float(a.track.v.max()) > MIN_MOVING_SPEED
                                 for a in actors], bool)
        else:
            self.idm = np.zeros(self.n, bool)
        t0 = scenario.t0_log
        idx = np.nonzero(self.idm)[0]
        self._origin = np.zeros((len(idx), 2))
        self._dir = np.zeros((len(idx), 2))
        self._yaw = np.zeros(len(idx))
        self._u = np.zeros(len(idx))
        self._v = np.zeros(len(idx))
        self._v0 = np.zeros(len(idx))
        for j, i in enumerate(idx):
            tr = actors[i].track
            xy, yaw, v = tr.at(np.array([t0]))
            d = tr.xy[-1] - tr.xy[0]
            self._origin[j], self._dir[j] = xy[0], d / np.linalg.norm(d)
            self._yaw[j], self._v[j], self._v0[j] = yaw[0], v[0], float(tr.v.max())
        self._idx = idx
        # every actor's log on one time grid (the synthetic tracks share the ego's 20-Hz grid)
        grid = actors[0].track.t if actors else np.zeros(2)
        if any(len(a.track.t) != len(grid) or not np.array_equal(a.track.t, grid) for a in actors):
            raise ValueError(f"scenario {scenario.name}: the actors' tracks are not on one time grid")
        self._grid = grid
        self._grid_dt = float(grid[1] - grid[0])
        self._xy = np.stack([a.track.xy for a in actors]) if actors else np.zeros((0, 2, 2))
        self._yaw_log = np.stack([np.unwrap(a.track.yaw) for a in actors]) if actors else np.zeros((0, 2))

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """Boxes [N, 5] (x, y, yaw, length, width; global m, rad) and velocities [N, 2] (m/s, global) now."""
        t_log = self.scenario.t0_log + self.t
        xy, yaw = self._log_at(t_log)
        h = _VEL_H
        vel = (self._log_at(t_log + h)[0] - self._log_at(t_log - h)[0]) / (2 * h)  # central difference of the log
        boxes = np.column_stack([xy, yaw, self.length, self.width])
        if len(self._idx):
            xy = self._origin + self._u[:, None] * self._dir
            boxes[self._idx] = np.column_stack([xy, self._yaw, self.length[self._idx], self.width[self._idx]])
            vel[self._idx] = self._v[:, None] * self._dir
        return boxes, vel

    def _log_at(self, t_log: float) -> tuple[np.ndarray, np.ndarray]:
        """Logged positions [N, 2] and yaws [N] (wrapped to [-pi, pi)) of every actor at log time ``t_log``: linear
        interpolation of the tracks (``Track.at``), on their common time grid, clamped at its ends."""
        g = self._grid
        if self.n == 0:
            return np.zeros((0, 2)), np.zeros(0)
        x = float(np.clip((t_log - g[0]) / self._grid_dt, 0.0, len(g) - 1))
        i = min(int(np.floor(x)), len(g) - 2)
        w = x - i
        xy = (1 - w) * self._xy[:, i] + w * self._xy[:, i + 1]
        yaw = (1 - w) * self._yaw_log[:, i] + w * self._yaw_log[:, i + 1]
        return xy, (yaw + np.pi) % (2 * np.pi) - np.pi

    def step(self, dt: float, ego_box: np.ndarray, ego_vel: np.ndarray) -> None:
        """Advance by ``dt`` s: IDM agents react to the actors and the ego as they are now (ego_box [5] x, y, yaw,
        length, width; ego_vel [2] m/s global); the others follow their logs."""
        if len(self._idx):
            boxes, vel = self.state()
            all_boxes = np.vstack([boxes, np.asarray(ego_box, np.float64)[None]])
            all_vel = np.vstack([vel, np.asarray(ego_vel, np.float64)[None]])
            gap, v_lead = self.leaders(all_boxes, all_vel)
            acc = idm_accel(self._v, self._v0, gap, v_lead, self.params)
            self._u, self._v = ballistic_step(self._u, self._v, acc, dt)
        self.t += dt

    def leaders(self, boxes: np.ndarray, vel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Bumper gap [M] (m; inf when none) and speed along the lane [M] (m/s) of each IDM agent's leader among
        ``boxes`` [K, 5] / ``vel`` [K, 2] (rows ``self._idx`` are the IDM agents themselves)."""
        m = len(self._idx)
        gap, v_lead = np.full(m, np.inf), np.zeros(m)
        ok = np.isfinite(boxes).all(1)
        for j, i in enumerate(self._idx):
            d = self._dir[j]
            rel = boxes[:, :2] - boxes[i, :2]
            along = rel @ d
            lateral = np.abs(rel[:, 0] * d[1] - rel[:, 1] * d[0])
            rel_yaw = boxes[:, 2] - np.arctan2(d[1], d[0])
            half_along = 0.5 * (np.abs(boxes[:, 3] * np.cos(rel_yaw)) + np.abs(boxes[:, 4] * np.sin(rel_yaw)))
            half_across = 0.5 * (np.abs(boxes[:, 3] * np.sin(rel_yaw)) + np.abs(boxes[:, 4] * np.cos(rel_yaw)))
            cand = ok & (along > 0) & (lateral < half_across + 0.5 * self.width[i] + LANE_MARGIN)
            cand[i] = False
            if not cand.any():
                continue
            g = along - half_along - 0.5 * self.length[i]
            g = np.where(cand, g, np.inf)
            k = int(np.argmin(g))
            gap[j], v_lead[j] = g[k], float(vel[k] @ d)
        return gap, v_lead
