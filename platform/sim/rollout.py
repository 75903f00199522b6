"""The closed loop: the planner drives the ego through a scenario, the world answers.

Every ``TICK_S`` = 0.5 s (the keyframe rate the model was trained at) the sensors render an
:class:`~odvla.platform.sim.sensors.Observation` from the simulated pose and the planner returns a
:class:`PlanResult`: six waypoints at 0.5 .. 3.0 s in the ego frame (x forward, y left, m). Between ticks the
physics runs at 10 Hz (``PHYSICS_DT``): the tracking controller follows the latest plan
(``platform/sim/controller.py``), the bicycle model moves the ego (``platform/sim/vehicle.py``), the agents move
(``platform/sim/agents.py``), and each frame's ego box is checked against the agents' boxes and the drivable area
(``closed_loop_metrics.frame_checks``).

**Planner errors** (an exception, an answer with an error, waypoints that are not [6, 2] finite numbers) are
counted and listed in the :class:`Rollout` (``plan_errors``), never replaced by a made-up plan: the ego keeps
following the last valid plan (past its 3 s it is continued at the velocity of its last segment), and before any
valid plan it brakes at 3 m/s^2 to a standstill on its current heading. The rollout always runs to its end; the
record says how many of its ticks had no plan. A collision does not end it either: boxes pass through each other
(there is no contact physics), and the figures count the collision (NeuroNCAP stops at the first one; its score
reads only that one).

The same scenario, planner and image size give the same rollout, bit for bit (timings aside).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from odvla.model.constants import FUTURE_STEPS, PAST_STEPS, STEP_SECONDS
from odvla.platform.sim.agents import AgentSim
from odvla.platform.sim.closed_loop_metrics import frame_checks
from odvla.platform.sim.controller import PlanFollower
from odvla.platform.sim.scenario import Scenario
from odvla.platform.sim.sensors import (Observation, Sensors, ego_state, past_trajectory, route_command, to_global,
                                        vad_ego)
from odvla.platform.sim.vehicle import PHYSICS_DT, WHEELBASE, VehicleLimits, ego_boxes, step

TICK_S = STEP_SECONDS
STEPS_PER_TICK = int(round(TICK_S / PHYSICS_DT))


@dataclass
class PlanResult:
    """A planner's answer: ``waypoints`` [6, 2] (ego frame, x forward, y left, m, at 0.5 .. 3.0 s) or an ``error``
    message (then ``waypoints`` is None)."""

    waypoints: np.ndarray | None
    error: str | None = None


class Planner(Protocol):
    """What drives the ego. ``name`` labels the rollout; ``reset`` starts a scenario (new scene state);
    ``plan`` answers one observation."""

    name: str

    def reset(self, scenario: Scenario) -> None: ...

    def plan(self, obs: Observation) -> PlanResult: ...


@dataclass
class Rollout:
    """One closed-loop run. ``T`` physics frames at 10 Hz (``t`` = 0 .. duration), ``P`` planner ticks, ``N``
    actors. Global frame (x east, y north, m, rad) unless said otherwise."""

    scenario: str
    kind: str
    seed: int
    agent_mode: str
    planner: str
    t: np.ndarray
    """[T] s"""
    ego_pose: np.ndarray
    """[T, 3] x, y, yaw of the rear axle"""
    ego_speed: np.ndarray
    """[T] m/s"""
    ego_accel: np.ndarray
    """[T] m/s^2 longitudinal, applied from t[k] to t[k+1] (0 at the last frame)"""
    ego_yaw_rate: np.ndarray
    """[T] rad/s"""
    ego_steer: np.ndarray
    """[T] rad road-wheel angle"""
    ego_box: np.ndarray
    """[T, 5] x, y, yaw, length, width of the ego's box"""
    agent_boxes: np.ndarray
    """[T, N, 5] x, y, yaw, length, width; NaN where absent"""
    agent_velocities: np.ndarray
    """[T, N, 2] m/s; NaN where absent"""
    agent_kinds: np.ndarray
    """[N] 'vehicle' | 'pedestrian' | 'static'"""
    agent_categories: np.ndarray
    """[N] nuScenes categories"""
    target: int | None
    """index of a safety scenario's injected actor"""
    reference_impact_speed: float | None
    tick_t: np.ndarray
    """[P] s"""
    plans: np.ndarray
    """[P, 6, 2] the plan of each tick, ego frame of that tick; NaN where the planner failed"""
    plans_global: np.ndarray
    """[P, 6, 2] the same in the global frame"""
    commands: np.ndarray
    """[P] COMMANDS index given to the planner"""
    plan_errors: list
    """(tick index, message) of every failed tick"""
    contact: np.ndarray
    """[T, N] bool: the ego's box intersects the actor's box"""
    offroad: np.ndarray
    """[T] bool: an ego corner is outside the drivable area"""
    route: np.ndarray
    """[M, 2] the logged ego's route over the scenario (the goal of route completion)"""
    drivable_area: object
    """shapely geometry"""
    ego_log_pose: np.ndarray
    """[T, 3] the logged ego at the same times (the expert's log)"""
    timing: dict = field(default_factory=dict)
    """per tick [P] seconds: 'render', 'planner', 'physics', 'metrics' (physics and metrics of the 5 frames after
    the tick)"""

    @property
    def n_planner_errors(self) -> int:
        return len(self.plan_errors)


def _valid_plan(res) -> str | None:
    """None when ``res`` is a usable PlanResult, else what is wrong with it."""
    if not isinstance(res, PlanResult):
        return f"planner returned {type(res).__name__}, not a PlanResult"
    if res.error is not None:
        return str(res.error)
    w = None if res.waypoints is None else np.asarray(res.waypoints, np.float64)
    if w is None or w.shape != (FUTURE_STEPS, 2):
        return f"waypoints of shape {None if w is None else w.shape}, expected ({FUTURE_STEPS}, 2)"
    if not np.isfinite(w).all():
        return "waypoints are not all finite"
    return None


def run_rollout(scenario: Scenario, planner: Planner, image_hw=(225, 400), limits: VehicleLimits | None = None
                ) -> Rollout:
    """Drive ``scenario`` with ``planner`` (module docstring); cameras rendered at ``image_hw`` (H, W)."""
    sensors = Sensors(scenario, image_hw)
    agents = AgentSim(scenario)
    planner.reset(scenario)
    n_frames = int(round(scenario.duration_s / PHYSICS_DT)) + 1
    n_ticks = (n_frames - 1 + STEPS_PER_TICK - 1) // STEPS_PER_TICK
    n = agents.n
    t = np.arange(n_frames) * PHYSICS_DT
    pose, speed, accel = np.zeros((n_frames, 3)), np.zeros(n_frames), np.zeros(n_frames)
    steer_arr = np.zeros(n_frames)
    a_boxes, a_vel = np.full((n_frames, n, 5), np.nan), np.full((n_frames, n, 2), np.nan)
    contact, offroad = np.zeros((n_frames, n), bool), np.zeros(n_frames, bool)
    plans = np.full((n_ticks, FUTURE_STEPS, 2), np.nan)
    plans_g = np.full((n_ticks, FUTURE_STEPS, 2), np.nan)
    commands = np.zeros(n_ticks, np.int64)
    errors: list = []
    timing = {k: np.zeros(n_ticks) for k in ("render", "planner", "physics", "metrics")}
    categories = [a.category for a in scenario.actors]
    heights = [a.height for a in scenario.actors]
    log = scenario.ego_log
    log_xy, log_yaw, _ = log.at(scenario.t0_log + t)
    log_accel = np.gradient(log.v, log.t)
    state = scenario.start
    last_accel = float(np.interp(scenario.t0_log, log.t, log_accel))
    follower, follower_t0 = None, 0.0
    for k in range(n_frames):
        boxes, vel = agents.state()
        pose[k] = (state.x, state.y, state.yaw)
        speed[k], steer_arr[k] = state.v, state.steer
        a_boxes[k], a_vel[k] = boxes, vel
        tick = k // STEPS_PER_TICK
        t_m = time.perf_counter()
        eb = ego_boxes(pose[k])[0]
        contact[k], offroad[k] = frame_checks(eb, boxes, scenario.drivable_area)
        timing["metrics"][min(tick, n_ticks - 1)] += time.perf_counter() - t_m
        if k == n_frames - 1:
            break
        if k % STEPS_PER_TICK == 0:
            t_r = time.perf_counter()
            obs = _observe(scenario, sensors, k, t, pose, speed, state, last_accel, boxes, categories, heights)
            commands[tick] = obs.command
            t_p = time.perf_counter()
            timing["render"][tick] = t_p - t_r
            try:
                res = planner.plan(obs)
                problem = _valid_plan(res)
            except Exception as e:  # a planner's failure is counted, never raised through the loop
                problem = f"{type(e).__name__}: {e}"
            timing["planner"][tick] = time.perf_counter() - t_p
            if problem is None:
                plans[tick] = np.asarray(res.waypoints, np.float64)
                plans_g[tick] = to_global(plans[tick], pose[k])
                follower, follower_t0 = PlanFollower(plans_g[tick], pose[k, :2], state.v, state.yaw), t[k]
            else:
                errors.append((tick, problem))
                if follower is None:  # no valid plan yet: brake to a standstill on the current heading
                    follower = PlanFollower(np.repeat(pose[k:k + 1, :2], FUTURE_STEPS, 0), pose[k, :2], state.v,
                                            state.yaw)
                    follower_t0 = t[k]
        t_ph = time.perf_counter()
        a_cmd, d_cmd = follower.control(state, t[k] - follower_t0)
        state, accel[k] = step(state, a_cmd, d_cmd, PHYSICS_DT, limits)
        last_accel = accel[k]
        ego_v = state.v * np.array([np.cos(state.yaw), np.sin(state.yaw)])
        agents.step(PHYSICS_DT, ego_boxes(np.array([state.x, state.y, state.yaw]))[0], ego_v)
        timing["physics"][tick] += time.perf_counter() - t_ph
    return Rollout(
        scenario.name, scenario.kind, scenario.seed, scenario.agent_mode,
        getattr(planner, "name", type(planner).__name__),
        t, pose, speed, accel, speed * np.tan(steer_arr) / WHEELBASE, steer_arr, ego_boxes(pose), a_boxes, a_vel,
        np.array([a.kind for a in scenario.actors], dtype=object), np.array(categories, dtype=object),
        scenario.target, scenario.reference_impact_speed, t[:-1:STEPS_PER_TICK][:n_ticks], plans, plans_g, commands,
        errors, contact, offroad, scenario.route, scenario.drivable_area,
        np.column_stack([log_xy, log_yaw]), timing)


def _observe(scenario, sensors, k, t, pose, speed, state, last_accel, boxes, categories, heights) -> Observation:
    """The observation at frame ``k`` (module docstring of ``sensors.py``)."""
    es = ego_state(state.v, last_accel, state.steer)
    yaw_rate = float(es[4])
    jpegs = sensors.render(pose[k], state.v, yaw_rate, boxes, categories, heights)
    past = np.zeros((PAST_STEPS, 2))
    for i in range(PAST_STEPS):
        tp = t[k] - (PAST_STEPS - i) * STEP_SECONDS
        past[i] = _position(scenario, tp, pose)
    xy_05 = _position(scenario, t[k] - STEP_SECONDS, pose)
    speed_05 = float(np.linalg.norm(pose[k, :2] - xy_05) / STEP_SECONDS)
    past_traj, past_mask = past_trajectory(past, pose[k])
    return Observation(
        time_s=float(t[k]), frame_index=k // STEPS_PER_TICK, scene_token=scenario.name, jpegs=jpegs,
        image_hw=(sensors.h, sensors.w), intrinsics=sensors.K.astype(np.float32),
        sensor2ego=sensors.s2e.astype(np.float32), ego_state=es, vad_ego=vad_ego(es, speed_05),
        past_traj=past_traj, past_mask=past_mask,
        command=route_command(scenario.route_ahead, pose[k], state.v), ego_pose=pose[k].copy())


def _position(scenario, tp: float, pose: np.ndarray) -> np.ndarray:
    """The ego's global position [2] at simulated time ``tp`` <= now: the simulated trace, or the logged ego before
    the start (``pose`` [T, 3] filled up to now)."""
    if tp >= -1e-9:
        return pose[int(round(tp / PHYSICS_DT)), :2]
    xy, _, _ = scenario.ego_log.at(np.array([scenario.t0_log + tp]))
    return xy[0]
