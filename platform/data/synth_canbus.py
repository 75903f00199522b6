"""nuScenes CAN bus expansion files for a synthetic scene, from the same ego track as its ego poses.

Written under ``<dataroot>/can_bus/`` as the devkit's ``NuScenesCanBus`` reads them (``scene-NNNN_<message>.json``,
a JSON list of messages, keys sorted as in the released files, ``utime`` in microseconds):

==================  ======  ===============================================================================
message             rate    fields (frames: global = the ego_pose table's frame; vehicle = x forward, y left)
==================  ======  ===============================================================================
pose                50 Hz   ``pos`` [3] m global, ``orientation`` [4] quaternion [w,x,y,z] global,
                            ``vel`` [3] m/s vehicle, ``accel`` [3] m/s^2 vehicle (z holds gravity, as the IMU
                            sees it), ``rotation_rate`` [3] rad/s vehicle
steeranglefeedback  100 Hz  ``value``: steering wheel angle, rad, positive to the left
ms_imu              100 Hz  ``linear_accel`` [3] m/s^2, ``q`` [4] [w,x,y,z], ``rotation_rate`` [3] rad/s
vehicle_monitor     2 Hz    ``vehicle_speed`` km/h, ``steering`` deg, ``yaw_rate`` deg/s, ``brake``,
                            ``throttle``, ``gear_position``, ``left_signal``, ``right_signal``,
                            ``rear_left_rpm``, ``rear_right_rpm``
route               --      ``[[x, y], ...]`` the lane route the ego follows, global metres
meta                --      per message type: ``count``, ``first_utime``, ``last_utime``, ``frequency_hz``
==================  ======  ===============================================================================

Kinematics from the ego :class:`~odvla.platform.world.motion.Track` (the one the ego poses are sampled from):
speed ``v`` = |d(xy)/dt|, yaw rate = d(yaw)/dt, longitudinal acceleration = dv/dt, lateral acceleration =
``v * yaw_rate`` (central differences on the track's 20 Hz grid, linearly interpolated at the message times, so
they agree with the poses). The vehicle moves
along its heading, so ``vel = (v, 0, 0)``. Steering wheel angle = ``STEERING_RATIO * atan(WHEELBASE * kappa)``
with the path curvature ``kappa = yaw_rate / v`` (0 below ``MIN_STEER_SPEED``), clipped at the steering lock.
Messages cover the scene from its first keyframe (``t0_us``) to its last, so every keyframe has a ``pose``
message at or before it.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from odvla.platform.data.transforms import yaw_quat

POSE_HZ = 50
STEER_HZ = 100
IMU_HZ = 100
MONITOR_HZ = 2
GRAVITY = 9.81  # m/s^2 in accel[2] / linear_accel[2]
WHEELBASE = 2.588  # m, Renault Zoe (the nuScenes car; VAD's Kappa = 2 * steering / 2.588 uses it too)
STEERING_RATIO = 13.0  # steering wheel angle / road wheel angle (a passenger car's)
STEERING_LOCK = 7.0  # rad of steering wheel angle
MIN_STEER_SPEED = 0.5  # m/s: below it the curvature (yaw_rate / v) is not defined, steering 0
WHEEL_RADIUS = 0.31  # m, for the vehicle_monitor wheel rpm
MESSAGES = ("pose", "steeranglefeedback", "ms_imu", "vehicle_monitor")
"""Time-stamped message types written (``route`` and ``meta`` besides)."""


def kinematics(track, t: np.ndarray) -> dict[str, np.ndarray]:
    """Ego kinematics at ``t`` [N] s: ``xy`` [N,2] m, ``yaw`` [N] rad (global), ``v`` [N] m/s, ``yaw_rate`` [N]
    rad/s, ``a_lon`` / ``a_lat`` [N] m/s^2 (vehicle frame), ``steering`` [N] rad (steering wheel angle)."""
    xy, yaw, _ = track.at(t)
    speed = np.linalg.norm(np.gradient(track.xy, track.t, axis=0), axis=1)
    v = np.interp(t, track.t, speed)
    yaw_rate = np.interp(t, track.t, np.gradient(np.unwrap(track.yaw), track.t))
    a_lon = np.interp(t, track.t, np.gradient(speed, track.t))
    kappa = np.where(v > MIN_STEER_SPEED, yaw_rate / np.maximum(v, MIN_STEER_SPEED), 0.0)
    steering = np.clip(STEERING_RATIO * np.arctan(WHEELBASE * kappa), -STEERING_LOCK, STEERING_LOCK)
    return {"xy": xy, "yaw": yaw, "v": v, "yaw_rate": yaw_rate, "a_lon": a_lon, "a_lat": v * yaw_rate,
            "steering": steering}


def _times(duration_s: float, hz: int) -> np.ndarray:
    return np.arange(int(np.floor(duration_s * hz + 1e-9)) + 1) / hz


def _r(x, nd: int = 6) -> list[float]:
    return [round(float(v), nd) for v in np.asarray(x).ravel()]


def can_messages(track, t0_us: int, duration_s: float, route_xy: np.ndarray | None = None) -> dict:
    """The CAN bus files of one scene as ``{message name: list of messages}`` (``meta``: a dict). ``t0_us``:
    the timestamp (microseconds) of the track's ``t = 0`` (the scene's first keyframe); ``duration_s``: up to
    the last keyframe."""
    out: dict = {}

    def utimes(t):
        return [int(t0_us + round(x * 1e6)) for x in t]

    t = _times(duration_s, POSE_HZ)
    k = kinematics(track, t)
    out["pose"] = [
        {"accel": _r([al, at, GRAVITY]), "orientation": _r(yaw_quat(float(y))), "pos": _r([p[0], p[1], 0.0]),
         "rotation_rate": _r([0.0, 0.0, w]), "utime": u, "vel": _r([v, 0.0, 0.0])}
        for u, p, y, v, w, al, at in zip(utimes(t), k["xy"], k["yaw"], k["v"], k["yaw_rate"], k["a_lon"],
                                          k["a_lat"])]
    t = _times(duration_s, STEER_HZ)
    k = kinematics(track, t)
    out["steeranglefeedback"] = [{"utime": u, "value": round(float(s), 6)} for u, s in zip(utimes(t), k["steering"])]
    t = _times(duration_s, IMU_HZ)
    k = kinematics(track, t)
    out["ms_imu"] = [
        {"linear_accel": _r([al, at, GRAVITY]), "q": _r(yaw_quat(float(y))), "rotation_rate": _r([0.0, 0.0, w]),
         "utime": u}
        for u, y, w, al, at in zip(utimes(t), k["yaw"], k["yaw_rate"], k["a_lon"], k["a_lat"])]
    t = _times(duration_s, MONITOR_HZ)
    k = kinematics(track, t)
    rpm = k["v"] / WHEEL_RADIUS * 60.0 / (2 * np.pi)
    out["vehicle_monitor"] = [
        {"brake": int(round(min(max(-al, 0.0) / 4.0, 1.0) * 126)), "gear_position": 7 if v > 0 else 0,
         "left_signal": 0, "rear_left_rpm": round(float(r), 3), "rear_right_rpm": round(float(r), 3),
         "right_signal": 0, "steering": round(float(np.rad2deg(s)), 3),
         "throttle": int(round(min(max(al, 0.0) / 2.0, 1.0) * 1000)), "utime": u,
         "vehicle_speed": round(float(v * 3.6), 3), "yaw_rate": round(float(np.rad2deg(w)), 3)}
        for u, v, s, w, al, r in zip(utimes(t), k["v"], k["steering"], k["yaw_rate"], k["a_lon"], rpm)]
    route = track.xy if route_xy is None else np.asarray(route_xy)
    out["route"] = [_r(p, 3) for p in np.asarray(route, dtype=np.float64)[:, :2]]
    out["meta"] = {name: {"count": len(out[name]), "first_utime": out[name][0]["utime"],
                          "last_utime": out[name][-1]["utime"], "frequency_hz": hz}
                   for name, hz in zip(MESSAGES, (POSE_HZ, STEER_HZ, IMU_HZ, MONITOR_HZ))}
    return out


def write_can_bus(dataroot, scene_name: str, track, t0_us: int, duration_s: float,
                  route_xy: np.ndarray | None = None) -> list[Path]:
    """Write ``<dataroot>/can_bus/<scene_name>_<message>.json`` for every message type; returns the paths."""
    d = Path(dataroot) / "can_bus"
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, msgs in can_messages(track, t0_us, duration_s, route_xy).items():
        p = d / f"{scene_name}_{name}.json"
        p.write_text(json.dumps(msgs, sort_keys=True, separators=(",", ":")))
        paths.append(p)
    return paths


def can_blacklist() -> frozenset[int]:
    """Scene numbers the devkit has no CAN data for (``NuScenesCanBus.can_blacklist``; synth writes no CAN files
    for them, as nuScenes has none)."""
    import tempfile

    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "can_bus").mkdir()
        return frozenset(NuScenesCanBus(dataroot=tmp).can_blacklist)
