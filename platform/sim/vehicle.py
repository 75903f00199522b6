"""The ego vehicle of the closed-loop simulator: a kinematic bicycle model at 10 Hz, its limits and its record.

Reference point: the centre of the rear axle, as the nuScenes ego pose and nuPlan's ``KinematicBicycleModel``
(``nuplan/planning/simulation/controller/motion_model/kinematic_bicycle.py``) have it. With the rear axle as
reference the velocity points along the heading (no side slip), and

    dx/dt = v cos(yaw),  dy/dt = v sin(yaw),  dyaw/dt = v tan(steer) / WHEELBASE,  dv/dt = a.

One step holds the acceleration and the steering angle constant over ``dt`` and integrates these exactly: the speed
changes linearly (stopping at 0, never reversing), the heading changes with the distance travelled and the rear
axle moves on the arc of radius ``WHEELBASE / tan(steer)`` (a straight line for ``steer = 0``). So a constant steer
angle draws a circle of that radius and a constant deceleration from ``v`` stops after ``v^2 / (2 a)`` metres, at
any ``dt`` (``tests/test_sim_vehicle.py``). Before a step the commands are clipped to :class:`VehicleLimits`: the
acceleration to ``[-max_decel, max_accel]``, the steering angle to ``max_steer`` and its change to
``max_steer_rate * dt``.

The ego is the nuScenes car the data comes from: ``WHEELBASE`` and the steering ratio and lock of the synthetic CAN
bus (``platform/data/synth_canbus.py``); ``EGO_LENGTH`` x ``EGO_WIDTH`` the box of the planning metrics
(``platform/eval/occupancy.py``, UniAD's), whose centre is ``EGO_FORWARD_SHIFT`` ahead of the reference point, as
there. Global frame: x east, y north, metres, yaw rad counter-clockwise from +x.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import shapely

from odvla.platform.data.synth_canbus import STEERING_LOCK, STEERING_RATIO, WHEELBASE
from odvla.platform.eval.occupancy import EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH

__all__ = ["EGO_FORWARD_SHIFT", "EGO_LENGTH", "EGO_WIDTH", "STEERING_RATIO", "WHEELBASE", "PHYSICS_DT",
           "Trace", "VehicleLimits", "VehicleState", "box_polygon", "ego_boxes", "step"]

PHYSICS_DT = 0.1
"""Seconds per physics step (10 Hz)."""


@dataclass(frozen=True)
class VehicleState:
    """Rear-axle pose ``x, y`` (m, global), ``yaw`` (rad), speed ``v`` (m/s, >= 0) and road-wheel ``steer`` (rad,
    positive to the left)."""

    x: float
    y: float
    yaw: float
    v: float
    steer: float = 0.0


@dataclass(frozen=True)
class VehicleLimits:
    """Actuation limits. ``max_steer`` is the steering lock of the synthetic CAN bus in road-wheel angle
    (``STEERING_LOCK / STEERING_RATIO`` = 0.54 rad, a 4.3 m turning radius at the rear axle); the rate is about
    one steering-wheel turn per second. ``max_decel`` is full braking on dry asphalt (about 0.8 g)."""

    max_accel: float = 3.0
    """m/s^2"""
    max_decel: float = 8.0
    """m/s^2, positive"""
    max_steer: float = STEERING_LOCK / STEERING_RATIO
    """rad"""
    max_steer_rate: float = 0.5
    """rad/s of road-wheel angle"""
    max_speed: float = 25.0
    """m/s"""


@dataclass
class Trace:
    """The ego over time at a fixed step: ``t`` [T] s from the start, ``pose`` [T, 3] (x, y, yaw; global m, rad,
    rear axle), ``speed`` [T] m/s, ``accel`` [T] m/s^2 (longitudinal: the acceleration applied from ``t[k]`` to
    ``t[k+1]``; the last entry is the command at the last state), ``yaw_rate`` [T] rad/s (``v tan(steer) / L``)
    and ``steer`` [T] rad (road-wheel angle)."""

    t: np.ndarray
    pose: np.ndarray
    speed: np.ndarray
    accel: np.ndarray
    yaw_rate: np.ndarray
    steer: np.ndarray

    def state(self, k: int) -> VehicleState:
        """The :class:`VehicleState` at sample ``k``."""
        x, y, yaw = (float(v) for v in self.pose[k])
        return VehicleState(x, y, yaw, float(self.speed[k]), float(self.steer[k]))


def step(s: VehicleState, accel: float, steer: float, dt: float = PHYSICS_DT,
         limits: VehicleLimits | None = None) -> tuple[VehicleState, float]:
    """One exact step of the bicycle model (module docstring). Returns the new state and the acceleration actually
    applied over the step (m/s^2; the clipped command, or less where the car came to a stop inside the step)."""
    lim = limits or VehicleLimits()
    a = float(np.clip(accel, -lim.max_decel, lim.max_accel))
    d_max = lim.max_steer_rate * dt
    delta = float(np.clip(np.clip(steer, s.steer - d_max, s.steer + d_max), -lim.max_steer, lim.max_steer))
    v0 = float(s.v)
    v1 = min(v0 + a * dt, lim.max_speed)
    if v1 < 0.0:  # stops inside the step: v0^2 / (2 |a|) metres, then stands
        dist, v1 = v0 * v0 / (2.0 * -a), 0.0
    else:
        dist = 0.5 * (v0 + v1) * dt
    a_applied = (v1 - v0) / dt
    kappa = np.tan(delta) / WHEELBASE
    dyaw = dist * kappa
    if abs(dyaw) < 1e-9:
        dx, dy = dist * np.cos(s.yaw), dist * np.sin(s.yaw)
    else:
        r = 1.0 / kappa
        dx = r * (np.sin(s.yaw + dyaw) - np.sin(s.yaw))
        dy = -r * (np.cos(s.yaw + dyaw) - np.cos(s.yaw))
    yaw = float((s.yaw + dyaw + np.pi) % (2 * np.pi) - np.pi)
    return VehicleState(float(s.x + dx), float(s.y + dy), yaw, float(v1), delta), float(a_applied)


def ego_boxes(pose: np.ndarray) -> np.ndarray:
    """Ego boxes [T, 5] (centre x, y, yaw, length, width; global m, rad) of rear-axle poses [T, 3]."""
    pose = np.asarray(pose, np.float64).reshape(-1, 3)
    cx = pose[:, 0] + EGO_FORWARD_SHIFT * np.cos(pose[:, 2])
    cy = pose[:, 1] + EGO_FORWARD_SHIFT * np.sin(pose[:, 2])
    n = len(pose)
    return np.stack([cx, cy, pose[:, 2], np.full(n, EGO_LENGTH), np.full(n, EGO_WIDTH)], -1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners [..., 4, 2] (front-left, rear-left, rear-right, front-right) of boxes [..., 5] (x, y, yaw, length,
    width)."""
    b = np.asarray(boxes, np.float64)
    x, y, yaw, ln, w = (b[..., i, None] for i in range(5))
    fl = np.array([0.5, -0.5, -0.5, 0.5]) * ln
    fw = np.array([0.5, 0.5, -0.5, -0.5]) * w
    c, s = np.cos(yaw), np.sin(yaw)
    return np.stack([x + c * fl - s * fw, y + s * fl + c * fw], -1)


def box_polygon(boxes: np.ndarray) -> np.ndarray:
    """shapely Polygons (object array [...]) of boxes [..., 5] (x, y, yaw, length, width); NaN boxes give None."""
    b = np.asarray(boxes, np.float64)
    corners = box_corners(b)
    polys = shapely.polygons(np.nan_to_num(corners))
    return np.where(np.isnan(b).any(-1), None, polys)
