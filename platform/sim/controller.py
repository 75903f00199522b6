"""The tracking controller: how the ego follows a plan of timed waypoints.

A plan is ``K`` waypoints (global m) at ``0.5, 1.0, ..., 0.5 K`` s after the moment it was made, when the ego's
rear axle stood at ``start_xy``. :class:`PlanFollower` turns it into a reference in time: the knots
``(0, start_xy), (0.5, p_1), ..., (0.5 K, p_K)`` joined by a modified-Akima spline per coordinate (``scipy``'s
``Akima1DInterpolator(method="makima")``: smooth through curves, and no overshoot where waypoints repeat, as a
plan that stops has them), and past the last waypoint extended at the velocity of the last 0.5-s segment (a plan
that stops stays stopped). Progress along it counts forward motion only (a step pointing backwards counts negative,
so waypoints behind the ego, or jitter about a stop, never ask the ego to reverse). The longitudinal reference
``s_ref(tau)`` is that progress at the knots joined by a cubic spline in time whose slope at ``tau = 0`` is the ego's
speed (a constant-acceleration plan is followed exactly), made non-decreasing; ``v_ref``, ``a_ref`` are its
derivatives.

- **Lateral: pure pursuit** (R. C. Coulter, "Implementation of the Pure Pursuit Path Tracking Algorithm",
  CMU-RI-TR-92-01, 1992), with the rear axle as reference: the goal point is the point of the plan's path
  ``lookahead = max(LOOKAHEAD_MIN, LOOKAHEAD_TIME * v)`` metres of arc ahead of the ego's projection on it (the
  path continued straight past its end), and the steering angle that puts the rear axle on the circle through it
  is ``atan(2 WHEELBASE sin(alpha) / d)``, with ``alpha`` the goal's bearing and ``d`` its distance. On a circular
  path this is exactly the circle's steering angle ``atan(WHEELBASE / R)``.
- **Longitudinal: feedforward plus PD on the progress**: ``a = a_ref + K_V (v_ref - v) + K_S (s_ref - s)``,
  ``s`` the ego's projection on the path (continued straight past its end). ``K_S = 0.5 /s^2``, ``K_V = 1.4 /s``:
  a critically damped error (natural frequency 0.71 rad/s). A plan whose waypoints all stand at its start is
  followed by braking at ``STOP_DECEL`` = 3 m/s^2 to a standstill, wheels straight.

nuPlan and NAVSIM track with an LQR (``nuplan/planning/simulation/controller/tracker/lqr.py``); pure pursuit is the
other classic tracker, simpler to state and exact on arcs. Both track the plan; neither invents one.
"""
from __future__ import annotations

import numpy as np
from scipy.interpolate import Akima1DInterpolator, CubicSpline

from odvla.model.constants import STEP_SECONDS
from odvla.platform.sim.vehicle import WHEELBASE, VehicleState

LOOKAHEAD_MIN = 4.0  # m
LOOKAHEAD_TIME = 0.8  # s
K_S = 0.5  # 1/s^2
K_V = 1.4  # 1/s
STOP_DECEL = 3.0  # m/s^2: braking for a plan whose waypoints all stand at the start
_DENSE_DT = 0.02  # s between dense samples of the reference
_TAIL_DT = 0.1  # s between samples of the extrapolation past the last waypoint
_EXTEND_S = 20.0  # s of extrapolation past the last waypoint


class PlanFollower:
    """Pure pursuit + speed control along one plan (module docstring).

    ``plan_xy`` [K, 2] global m, waypoint k at ``(k + 1) * step_s`` s after the plan's start; ``start_xy`` [2] the
    rear axle's position at that start, ``start_speed`` (m/s) and ``start_yaw`` (rad) the ego's then. Progress along
    the plan counts forward motion only (:func:`_forward_progress`)."""

    def __init__(self, plan_xy: np.ndarray, start_xy, start_speed: float | None = None,
                 start_yaw: float | None = None, step_s: float = STEP_SECONDS):
        plan = np.asarray(plan_xy, np.float64).reshape(-1, 2)
        if len(plan) == 0 or not np.isfinite(plan).all():
            raise ValueError(f"plan must be [K>=1, 2] finite waypoints, got {plan.tolist()}")
        knots_xy = np.vstack([np.asarray(start_xy, np.float64).reshape(1, 2), plan])
        knots_t = step_s * np.arange(len(knots_xy))
        self.t_end = float(knots_t[-1])
        tau = np.arange(0.0, self.t_end + 1e-9, _DENSE_DT)
        # the path: modified Akima per coordinate (a straight segment for one waypoint)
        if len(knots_xy) >= 3:
            xy = np.stack([Akima1DInterpolator(knots_t, knots_xy[:, i], method="makima")(tau) for i in (0, 1)], -1)
        else:
            xy = np.stack([np.interp(tau, knots_t, knots_xy[:, i]) for i in (0, 1)], -1)
        v_end = (knots_xy[-1] - knots_xy[-2]) / step_s
        tail_t = np.arange(_TAIL_DT, _EXTEND_S, _TAIL_DT)
        path = np.vstack([xy, knots_xy[-1] + v_end * tail_t[:, None]])
        progress = _forward_progress(path, start_yaw)
        best = np.maximum.accumulate(progress)
        new_max = np.concatenate([[True], progress[1:] > best[:-1] + 1e-6])
        self._geo_xy = path[new_max]  # the path where it moves forward (no standing or backing samples)
        self._geo_s = progress[new_max]
        self._end_dir = None
        if len(self._geo_xy) >= 2:
            d = self._geo_xy[-1] - self._geo_xy[-2]
            self._end_dir = d / np.linalg.norm(d)
        # the speed profile: forward progress at the knots, a cubic spline in time that starts at the ego's speed
        # (exact on constant acceleration), made non-decreasing; constant speed past the last waypoint
        s_k = np.interp(knots_t, tau, best[:len(tau)])
        v0 = float(np.linalg.norm(knots_xy[1] - knots_xy[0]) / step_s) if start_speed is None else float(start_speed)
        if len(knots_t) >= 3:
            s_t = CubicSpline(knots_t, s_k, bc_type=((1, v0), "not-a-knot"))(tau)
        else:
            s_t = np.interp(tau, knots_t, s_k)
        s_t = np.clip(np.maximum.accumulate(s_t), 0.0, s_k[-1])
        self.tau = np.concatenate([tau, self.t_end + tail_t])
        self.arc = np.concatenate([s_t, s_k[-1] + float(np.linalg.norm(v_end)) * tail_t])
        self.v = np.gradient(self.arc, self.tau, edge_order=2)
        self.a = np.gradient(self.v, self.tau, edge_order=2)

    def reference(self, tau: float) -> tuple[float, float, float]:
        """(s_ref m, v_ref m/s, a_ref m/s^2) at ``tau`` s after the plan's start."""
        return tuple(float(np.interp(tau, self.tau, x)) for x in (self.arc, self.v, self.a))

    def project(self, xy) -> float:
        """Arc length (m) of the path point nearest ``xy`` [2]; past the path's end, its distance along the last
        direction is added (an ego that overshoots a stop point sees a negative error)."""
        if len(self._geo_xy) < 2:
            return 0.0
        p = np.asarray(xy, np.float64)
        a, b = self._geo_xy[:-1], self._geo_xy[1:]
        ab = b - a
        u = np.clip(((p - a) * ab).sum(1) / np.maximum((ab * ab).sum(1), 1e-12), 0.0, 1.0)
        d = np.linalg.norm(a + u[:, None] * ab - p, axis=1)
        i = int(np.argmin(d))
        s = float(self._geo_s[i] + u[i] * (self._geo_s[i + 1] - self._geo_s[i]))
        if i == len(u) - 1 and u[i] >= 1.0:  # past the end: continue along the last direction
            s += max(0.0, float((p - self._geo_xy[-1]) @ self._end_dir))
        return s

    def point_at(self, s: float) -> np.ndarray:
        """Path point [2] at arc ``s`` (m), continued straight past the end."""
        s_max = self._geo_s[-1]
        if s <= s_max or self._end_dir is None:
            return np.array([np.interp(s, self._geo_s, self._geo_xy[:, 0]),
                             np.interp(s, self._geo_s, self._geo_xy[:, 1])])
        return self._geo_xy[-1] + self._end_dir * (s - s_max)

    def control(self, state: VehicleState, tau: float) -> tuple[float, float]:
        """(acceleration m/s^2, road-wheel steering angle rad) commands at ``tau`` s after the plan's start."""
        s_ego = self.project((state.x, state.y))
        s_ref, v_ref, a_ref = self.reference(tau)
        accel = a_ref + K_V * (v_ref - state.v) + K_S * (s_ref - s_ego)
        if self._end_dir is None:  # a plan that never moves: brake to a standstill, wheels straight
            return -STOP_DECEL, 0.0
        lookahead = max(LOOKAHEAD_MIN, LOOKAHEAD_TIME * state.v)
        goal = self.point_at(s_ego + lookahead)
        dx, dy = goal[0] - state.x, goal[1] - state.y
        c, s = np.cos(state.yaw), np.sin(state.yaw)
        fx, fy = c * dx + s * dy, -s * dx + c * dy  # goal in the vehicle frame
        d2 = fx * fx + fy * fy
        if d2 < 1e-6:
            return accel, 0.0
        # pure pursuit: curvature 2 sin(alpha) / d = 2 fy / d^2
        steer = float(np.arctan(WHEELBASE * 2.0 * fy / d2))
        return accel, steer


def _forward_progress(path: np.ndarray, start_yaw: float | None) -> np.ndarray:
    """Signed distance travelled along ``path`` [N, 2] (m, [N]): a step counts negative when it points backwards
    (more than 90 deg) from the last forward direction, which starts as ``start_yaw`` (rad; None: the first step's
    direction). A plan whose first waypoints lie behind the ego (the ego is ahead of it) or that jitters about a
    stop point thus asks for no forward motion until it passes the ego."""
    steps = np.diff(path, axis=0)
    length = np.linalg.norm(steps, axis=1)
    ref = None if start_yaw is None else np.array([np.cos(start_yaw), np.sin(start_yaw)])
    signed = np.zeros(len(steps))
    for i in np.nonzero(length > 1e-9)[0]:
        u = steps[i] / length[i]
        if ref is None or u @ ref >= 0.0:
            signed[i], ref = length[i], u
        else:
            signed[i] = -length[i]
    return np.concatenate([[0.0], np.cumsum(signed)])
