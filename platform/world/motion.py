"""Kinematics of the synthetic scenes: the ego along a lane route with a speed profile, and other agents.

Everything is simulated at ``SIM_DT`` (20 Hz) in the global frame (x east, y north, metres, yaw rad CCW from +x)
and sampled later at the sensor timestamps. The ego's speed profile mixes what a constant-velocity planner gets
wrong: slowing for turns (lateral acceleration limit), braking to a stop before intersections and waiting,
accelerating from standstill, and cruise-speed changes on straight roads.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odvla.platform.world.road_map import HALF_WIDTH, OUTER_LANE, SIDEWALK, RoadGrid

SIM_DT = 0.05
A_LAT = 2.5  # m/s^2 lateral acceleration limit in turns
A_ACC = 2.0  # m/s^2 max acceleration
B_COMFORT = 2.5  # m/s^2 planned braking
B_MAX = 4.0
STOP_BEFORE = HALF_WIDTH + 5.5  # stop point: metres before the intersection centre (behind the ped crossing)


@dataclass
class Track:
    """A sampled trajectory: ``t`` [T] s, ``xy`` [T,2] m, ``yaw`` [T] rad, ``v`` [T] m/s (global frame)."""

    t: np.ndarray
    xy: np.ndarray
    yaw: np.ndarray
    v: np.ndarray

    def at(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Linear interpolation at ``times`` (s) -> xy [N,2], yaw [N], speed [N]."""
        x = np.interp(times, self.t, self.xy[:, 0])
        y = np.interp(times, self.t, self.xy[:, 1])
        yaw = np.interp(times, self.t, np.unwrap(self.yaw))
        return np.stack([x, y], -1), (yaw + np.pi) % (2 * np.pi) - np.pi, np.interp(times, self.t, self.v)


def _arc(points: np.ndarray) -> np.ndarray:
    return np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])


def _path_pose(points: np.ndarray, arc: np.ndarray, s: np.ndarray):
    xy = np.stack([np.interp(s, arc, points[:, 0]), np.interp(s, arc, points[:, 1])], -1)
    tang = np.gradient(points, axis=0)
    heading = np.unwrap(np.arctan2(tang[:, 1], tang[:, 0]))
    return xy, np.interp(s, arc, heading)


def ego_track(grid: RoadGrid, rng: np.random.Generator, duration: float) -> tuple[Track, dict]:
    """The ego's track for ``duration`` s (+3 s margin) and a description of its manoeuvres."""
    node = (int(rng.integers(1, grid.n - 1)), int(rng.integers(1, grid.n - 1)))
    heading = int(rng.integers(4))
    start_dist = float(rng.uniform(15.0, 70.0))
    cruise0 = float(rng.uniform(6.0, 12.0))
    T = duration + 3.5
    pts, entries, moves = grid.route(node, heading, start_dist, rng, length=14.0 * T + 50.0)
    arc = _arc(pts)
    # speed limit from curvature, then the braking envelope (backward pass)
    _, hd = _path_pose(pts, arc, arc)
    kappa = np.abs(np.gradient(hd, arc, edge_order=1))
    vlim = np.minimum(np.sqrt(A_LAT / np.maximum(kappa, 1e-6)), 20.0)
    vlim = np.convolve(np.pad(vlim, 4, mode="edge"), np.ones(9) / 9, mode="valid")  # smooth arc joins
    vlim = np.minimum(vlim, np.sqrt(A_LAT / np.maximum(np.convolve(np.pad(kappa, 4, mode="edge"),
                                                                   np.ones(9) / 9, mode="valid"), 1e-6)))
    for i in range(len(vlim) - 2, -1, -1):
        vlim[i] = min(vlim[i], np.sqrt(vlim[i + 1] ** 2 + 2 * B_COMFORT * (arc[i + 1] - arc[i])))
    # stops before intersections (some), waiting 1..4 s
    stops = [e - (STOP_BEFORE - HALF_WIDTH) for e in entries if rng.random() < 0.45]
    stops = [s for s in stops if s > 3.0]
    waits = [float(rng.uniform(1.0, 4.0)) for _ in stops]
    # start from standstill sometimes
    v = 0.0 if rng.random() < 0.25 else min(cruise0, float(np.interp(0.0, arc, vlim)))
    hold_until = float(rng.uniform(0.5, 2.5)) if v == 0.0 else 0.0
    # cruise target changes
    n_changes = int(rng.integers(0, 3))
    change_t = np.sort(rng.uniform(2.0, max(T - 4.0, 2.5), n_changes))
    change_v = rng.uniform(4.0, 13.0, n_changes)

    n = int(np.ceil(T / SIM_DT)) + 1
    ts = np.arange(n) * SIM_DT
    s_arr, v_arr = np.zeros(n), np.zeros(n)
    s, stop_i, stopped_at = 0.0, 0, None
    for k, t in enumerate(ts):
        s_arr[k], v_arr[k] = s, v
        target = cruise0
        for ct, cv in zip(change_t, change_v):
            if t >= ct:
                target = cv
        vdes = min(target, float(np.interp(s, arc, vlim)))
        if t < hold_until:
            vdes = 0.0
        if stop_i < len(stops):
            gap = stops[stop_i] - s
            if stopped_at is None and gap < 0.3 and v < 0.3:
                stopped_at = t
            if stopped_at is not None and t - stopped_at >= waits[stop_i]:
                stop_i, stopped_at = stop_i + 1, None
            elif stopped_at is not None:
                vdes = 0.0
            else:
                vdes = min(vdes, np.sqrt(2 * B_COMFORT * max(gap - 0.1, 0.0)))
        a = float(np.clip((vdes - v) / (2 * SIM_DT), -B_MAX, A_ACC))
        v = max(v + a * SIM_DT, 0.0)
        s = s + v * SIM_DT
        if stop_i < len(stops) and stopped_at is None:
            s = min(s, stops[stop_i] + 0.2)
    xy, yaw = _path_pose(pts, arc, s_arr)
    info = {"moves": moves, "stops": len(stops), "cruise": cruise0, "route_points": pts}
    return Track(ts, xy, (yaw + np.pi) % (2 * np.pi) - np.pi, v_arr), info


# ---- other agents -------------------------------------------------------------------------------------------

AGENT_TYPES = {
    # category: (wlh mean, speed range m/s, moving attribute, stopped attribute, relative frequency)
    "vehicle.car": ((1.95, 4.6, 1.7), (3.0, 12.0), "vehicle.moving", "vehicle.stopped", 0.5),
    "vehicle.truck": ((2.5, 7.0, 3.0), (3.0, 9.0), "vehicle.moving", "vehicle.stopped", 0.08),
    "vehicle.bus.rigid": ((2.9, 11.0, 3.4), (3.0, 8.0), "vehicle.moving", "vehicle.stopped", 0.04),
    "vehicle.motorcycle": ((0.8, 2.1, 1.5), (4.0, 11.0), "cycle.with_rider", "cycle.with_rider", 0.04),
    "vehicle.bicycle": ((0.6, 1.75, 1.3), (3.0, 6.0), "cycle.with_rider", "cycle.with_rider", 0.04),
    "human.pedestrian.adult": ((0.67, 0.73, 1.75), (0.8, 1.8), "pedestrian.moving", "pedestrian.standing", 0.22),
    "movable_object.trafficcone": ((0.4, 0.4, 1.0), (0.0, 0.0), "", "", 0.05),
    "movable_object.barrier": ((2.4, 0.5, 1.0), (0.0, 0.0), "", "", 0.03),
}


@dataclass
class Agent:
    category: str
    wlh: tuple
    track: Track
    attribute_moving: str
    attribute_stopped: str


def agents_around(grid: RoadGrid, ego: Track, rng: np.random.Generator, count: int) -> list[Agent]:
    """``count`` agents placed on lanes, sidewalks and road edges near the ego's route.

    Vehicles use the outer lanes (the ego keeps to the inner lanes, so the ground-truth ego plan does not drive
    through them), driving straight with a constant acceleration phase; parked cars stand at the kerb;
    pedestrians walk along sidewalks or stand; cones and barriers stand at road edges.
    """
    cats = list(AGENT_TYPES)
    freq = np.array([AGENT_TYPES[c][4] for c in cats])
    T = ego.t[-1]
    ts = ego.t
    out = []
    for _ in range(count):
        cat = cats[int(rng.choice(len(cats), p=freq / freq.sum()))]
        wlh0, (vmin, vmax), att_m, att_s, _ = AGENT_TYPES[cat]
        wlh = tuple(float(x * rng.uniform(0.9, 1.1)) for x in wlh0)
        # anchor near a random point of the ego's path
        anchor = ego.xy[int(rng.integers(len(ego.xy)))] + rng.normal(0, 25.0, 2)
        axis = int(rng.integers(2))  # road along x (0) or y (1)
        c = grid.lines[int(np.argmin(np.abs(grid.lines - anchor[1 - axis])))]
        along = float(anchor[axis])
        direction = 1.0 if rng.random() < 0.5 else -1.0
        right = -direction if axis == 0 else direction  # offset sign of the right-hand side
        vehicle = cat.startswith("vehicle.")
        if vehicle:
            parked = cat == "vehicle.car" and rng.random() < 0.25
            offset = right * ((HALF_WIDTH + 1.3) if parked else OUTER_LANE)
            v0 = 0.0 if parked else float(rng.uniform(vmin, vmax))
            acc = 0.0 if parked else float(rng.choice([0.0, rng.uniform(-1.5, 1.5)]))
        elif cat.startswith("human"):
            offset = right * float(rng.uniform(*SIDEWALK))
            v0 = 0.0 if rng.random() < 0.2 else float(rng.uniform(vmin, vmax))
            acc = 0.0
        else:
            offset = right * float(rng.uniform(HALF_WIDTH - 0.6, HALF_WIDTH + 0.8))
            v0, acc = 0.0, 0.0
        t_acc = float(rng.uniform(0, T))
        v = np.clip(v0 + acc * np.clip(ts - t_acc, 0, None), 0.0, vmax + 2.0)
        u = along + direction * np.concatenate([[0.0], np.cumsum(v[:-1] * SIM_DT)])
        if axis == 0:
            xy = np.stack([u, np.full_like(u, c + offset)], -1)
            yaw = 0.0 if direction > 0 else np.pi
        else:
            xy = np.stack([np.full_like(u, c + offset), u], -1)
            yaw = np.pi / 2 if direction > 0 else -np.pi / 2
        yaw_arr = np.full(len(ts), yaw + (rng.normal(0, 0.03) if vehicle else 0.0))
        out.append(Agent(cat, wlh, Track(ts, xy, yaw_arr, v), att_m, att_s))
    return out

