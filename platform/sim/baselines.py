"""Baseline planners of the closed-loop table (``BASELINES``), beside the model:

- ``expert``: log replay. At each tick it plans the logged ego's positions 0.5 .. 3.0 s ahead (log time), moved
  into the simulated ego's frame: it drives the logged route and speed profile, whatever the world does. In a
  safety scenario it drives into the injected actor, by construction.
- ``constant_velocity``: the ego keeps its velocity (``platform/eval/baselines.py``, ``constant_velocity``).
- ``ego_mlp``: the ego-status MLP of the open-loop table (``EgoMLP``, AD-MLP's "Ego-MLP": ego state, command and
  past trajectory, no camera), fitted by ``train_ego_mlp`` on :func:`world_ego_samples`: every 0.5-s keyframe of
  ``scenes`` logged ego tracks the synthetic world draws (``ego_track``, world seeds ``[seed, i]``, a different
  stream from the scenarios'), with the ego state of the synthetic CAN bus (``synth_canbus.kinematics``) and the
  command of the training data (``command_from_future``). The same inputs the training rows hold, from the same
  generator, without writing a dataroot; an MLP trained on the shards (``platform/eval``) can be passed instead.

None of them sees the cameras: a planner that cannot see the stopped car fails the safety scenarios.
"""
from __future__ import annotations

import numpy as np

from odvla.model.constants import FUTURE_STEPS, PAST_STEPS, STEP_SECONDS
from odvla.platform.data.records import command_from_future
from odvla.platform.data.synth_canbus import kinematics
from odvla.platform.eval.baselines import EgoMLPBaseline, constant_velocity, train_ego_mlp
from odvla.platform.sim.rollout import PlanResult
from odvla.platform.sim.sensors import Observation, to_ego
from odvla.platform.world.motion import ego_track
from odvla.platform.world.road_map import RoadGrid

_STEPS = STEP_SECONDS * np.arange(1, FUTURE_STEPS + 1)


class ExpertPlanner:
    """Log replay (module docstring)."""

    name = "expert"

    def reset(self, scenario) -> None:
        self.scenario = scenario

    def plan(self, obs: Observation) -> PlanResult:
        xy, _, _ = self.scenario.ego_log.at(self.scenario.t0_log + obs.time_s + _STEPS)
        return PlanResult(to_ego(xy, obs.ego_pose))


class ConstantVelocityPlanner:
    """The ego keeps its current velocity for 3 s."""

    name = "constant_velocity"

    def reset(self, scenario) -> None:
        pass

    def plan(self, obs: Observation) -> PlanResult:
        return PlanResult(constant_velocity(obs.ego_state[None])[0])


class EgoMLPPlanner:
    """The ego-status MLP (module docstring); ``baseline`` from ``train_ego_mlp`` (default: fitted on
    :func:`world_ego_samples`)."""

    name = "ego_mlp"

    def __init__(self, baseline: EgoMLPBaseline | None = None):
        self.baseline = baseline if baseline is not None else train_world_ego_mlp()

    def reset(self, scenario) -> None:
        pass

    def plan(self, obs: Observation) -> PlanResult:
        out = self.baseline.predict(obs.ego_state[None], np.array([obs.command]), obs.past_traj[None],
                                    obs.past_mask[None])
        return PlanResult(out[0])


def world_ego_samples(scenes: int = 32, seed: int = 10_000, keyframes: int = 40) -> dict:
    """Training rows of the logged ego of ``scenes`` synthetic scenes (module docstring): ``ego_state`` [S, 7],
    ``command`` [S], ``past_traj`` [S, 4, 2], ``past_mask`` [S, 4], ``future_traj`` [S, 6, 2], ``future_mask``
    [S, 6] (ego frame, m), ``S = scenes * keyframes``."""
    grid = RoadGrid()
    rows = {k: [] for k in ("ego_state", "command", "past_traj", "past_mask", "future_traj", "future_mask")}
    for i in range(scenes):
        rng = np.random.default_rng([seed, i])
        track, _ = ego_track(grid, rng, (keyframes - 1) * STEP_SECONDS)
        kf = np.arange(keyframes) * STEP_SECONDS
        kin = kinematics(track, kf)
        xy, yaw, _ = track.at(kf)
        for k in range(keyframes):
            pose = np.array([xy[k, 0], xy[k, 1], yaw[k]])
            v = kin["v"][k]
            rows["ego_state"].append([v, 0.0, kin["a_lon"][k], kin["a_lat"][k], kin["yaw_rate"][k], v,
                                      kin["steering"][k]])
            past_idx = k - PAST_STEPS + np.arange(PAST_STEPS)
            pmask = past_idx >= 0
            rows["past_traj"].append(np.where(pmask[:, None], to_ego(xy[np.clip(past_idx, 0, None)], pose), 0.0))
            rows["past_mask"].append(pmask.astype(np.float32))
            fxy, _, _ = track.at(kf[k] + _STEPS)  # the track runs 3.5 s past the last keyframe
            fut = to_ego(fxy, pose)
            rows["future_traj"].append(fut)
            rows["future_mask"].append(np.ones(FUTURE_STEPS, np.float32))
            rows["command"].append(command_from_future(fut, np.ones(FUTURE_STEPS)))
    return {k: np.asarray(v, np.float32 if k != "command" else np.int64) for k, v in rows.items()}


def train_world_ego_mlp(scenes: int = 32, seed: int = 10_000, epochs: int = 200) -> EgoMLPBaseline:
    """``train_ego_mlp`` on :func:`world_ego_samples` (a few seconds on one core)."""
    s = world_ego_samples(scenes, seed)
    return train_ego_mlp(s["ego_state"], s["command"], s["past_traj"], s["past_mask"], s["future_traj"],
                         s["future_mask"], epochs=epochs, seed=0)


BASELINES = {"expert": ExpertPlanner, "constant_velocity": ConstantVelocityPlanner, "ego_mlp": EgoMLPPlanner}
"""Baseline name -> planner class (no arguments needed)."""


def make_baseline(name: str):
    """The baseline planner ``name``; ValueError naming the choices for another name."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline planner {name!r}; choices: {', '.join(BASELINES)}")
    return BASELINES[name]()
