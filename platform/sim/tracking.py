"""Drive the bicycle model along one plan: the step the closed loop repeats every planner tick, and what the
log-based PDM score (``platform/sim/pdms.py``) simulates each keyframe's plan with, as NAVSIM tracks a plan with its
controller and motion model before scoring it."""
from __future__ import annotations

import numpy as np

from odvla.platform.sim.controller import PlanFollower
from odvla.platform.sim.vehicle import WHEELBASE, Trace, VehicleLimits, VehicleState, step


def track_plan(start: "VehicleState", plan_xy: np.ndarray, duration_s: float, dt: float = 0.1,
               limits: "VehicleLimits | None" = None) -> "Trace":
    """Drive the bicycle model along ``plan_xy`` [K, 2] (global frame, m; waypoint k at (k+1)*0.5 s after start).
    Returns Trace with t [T] s (0, dt, ..., duration), pose [T, 3] (x, y, yaw; global, m, rad), speed [T] m/s,
    accel [T] m/s^2 (longitudinal), yaw_rate [T] rad/s, steer [T] rad.

    The controller is :class:`~odvla.platform.sim.controller.PlanFollower` (pure pursuit + speed control), the model
    :func:`~odvla.platform.sim.vehicle.step`; ``T = round(duration_s / dt) + 1``."""
    if not (duration_s >= 0 and dt > 0):
        raise ValueError(f"track_plan: duration_s={duration_s} must be >= 0 and dt={dt} > 0")
    follower = PlanFollower(plan_xy, (start.x, start.y), start.v, start.yaw)
    n = int(round(duration_s / dt)) + 1
    t = np.arange(n) * dt
    pose, speed = np.zeros((n, 3)), np.zeros(n)
    accel, steer = np.zeros(n), np.zeros(n)
    s = start
    for k in range(n):
        pose[k] = (s.x, s.y, s.yaw)
        speed[k], steer[k] = s.v, s.steer
        a_cmd, d_cmd = follower.control(s, float(t[k]))
        s_next, accel[k] = step(s, a_cmd, d_cmd, dt, limits)
        if k + 1 < n:
            s = s_next
    yaw_rate = speed * np.tan(steer) / WHEELBASE
    return Trace(t, pose, speed, accel, yaw_rate, steer)
