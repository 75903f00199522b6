"""Closed-loop rollouts: the expert, constant velocity on the stationary scenario, determinism, planner errors."""
import dataclasses

import numpy as np
import pytest

from odvla.model.constants import COMMANDS, EGO_STATE_FIELDS
from odvla.platform.sim.baselines import ConstantVelocityPlanner, ExpertPlanner, make_baseline
from odvla.platform.sim.closed_loop_metrics import score_rollout
from odvla.platform.sim.rollout import PlanResult, run_rollout
from odvla.platform.sim.scenario import make_scenario
from odvla.platform.sim.vehicle import EGO_FORWARD_SHIFT, EGO_LENGTH

HW = (36, 64)  # small 16:9 images: these tests check driving, not pixels


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_expert_replay_collides_with_nothing_in_normal_scenarios(seed):
    r = run_rollout(make_scenario("normal", seed), ExpertPlanner(), HW)
    m = score_rollout(r)
    assert m["collisions"] == 0 and not r.contact.any()
    assert m["offroad_time_s"] == 0.0 and m["planner_errors"] == 0 and m["ticks"] == 30
    assert m["route_completion"] > 0.97
    assert np.linalg.norm(r.ego_pose[:, :2] - r.ego_log_pose[:, :2], axis=1).max() < 1.0  # it tracks its log


def test_constant_velocity_hits_the_stationary_vehicle_at_the_analytic_impact_speed():
    """Seed 1: the route runs straight from the start past the stopped car. Constant velocity keeps the start speed
    v0 on the straight, so the impact speed is v0 and it happens when the front bumper has covered the gap:
    t = (distance rear axle -> car centre - car length / 2 - (0.5 + 4.084 / 2)) / v0."""
    sc = make_scenario("stationary", 1)
    car = sc.actors[sc.target]
    d = np.linalg.norm(car.track.xy[0] - [sc.start.x, sc.start.y])
    heading = np.arctan2(*(car.track.xy[0] - [sc.start.x, sc.start.y])[::-1])
    assert abs((heading - sc.start.yaw + np.pi) % (2 * np.pi) - np.pi) < 1e-3  # straight ahead
    v0 = sc.start.v
    t_hit = (d - car.length / 2 - (EGO_FORWARD_SHIFT + EGO_LENGTH / 2)) / v0
    r = run_rollout(sc, ConstantVelocityPlanner(), HW)
    m = score_rollout(r)
    first = m["collision_events"][0]
    assert first["actor"] == sc.target and first["kind"] == "vehicle"
    assert first["impact_speed"] == pytest.approx(v0, abs=1e-6)
    assert first["t"] == pytest.approx(np.ceil(t_hit / 0.1 - 1e-9) * 0.1, abs=1e-9)  # first 10-Hz frame in contact
    assert m["ncap_score"] == pytest.approx(4 * max(0.0, 1 - v0 / sc.reference_impact_speed))


def test_same_seed_gives_the_same_rollout_bit_for_bit():
    runs = [run_rollout(make_scenario("cutin", 2, agent_mode="idm"), make_baseline("constant_velocity"), HW)
            for _ in range(2)]
    a, b = (dataclasses.asdict(r) for r in runs)
    arrays = 0
    for key, va in a.items():
        if key in ("timing", "drivable_area"):
            continue
        if isinstance(va, np.ndarray):
            assert va.dtype == b[key].dtype and va.tobytes() == b[key].tobytes(), key
            arrays += 1
        else:
            assert va == b[key], key
    assert arrays >= 15
    assert runs[0].drivable_area.equals(runs[1].drivable_area)


class _Failing:
    """Plans on the ticks in ``ok`` (straight ahead at 5 m/s) and fails on the others, in the ways a planner can."""

    name = "failing"

    def __init__(self, ok):
        self.ok = set(ok)
        self.calls = 0
        self.observations = []

    def reset(self, scenario):
        self.calls = 0

    def plan(self, obs):
        self.observations.append(obs)
        k, self.calls = self.calls, self.calls + 1
        if k in self.ok:
            return PlanResult(np.stack([5.0 * 0.5 * np.arange(1, 7), np.zeros(6)], -1))
        if k % 3 == 0:
            raise RuntimeError("replica lost")
        if k % 3 == 1:
            return PlanResult(None, error="HTTP 503: no replica")
        return PlanResult(np.full((6, 2), np.nan))


def test_planner_errors_are_counted_and_the_ego_brakes_without_a_plan():
    sc = make_scenario("normal", 2)
    r = run_rollout(sc, _Failing(ok=()), HW)
    assert r.n_planner_errors == 30 and np.isnan(r.plans).all()
    msgs = [m for _, m in r.plan_errors]
    assert msgs[0] == "RuntimeError: replica lost" and msgs[1] == "HTTP 503: no replica"
    assert msgs[2] == "waypoints are not all finite"
    assert r.ego_speed[-1] == 0.0 and score_rollout(r)["planner_errors"] == 30


def test_after_an_error_the_ego_keeps_following_the_last_valid_plan():
    sc = make_scenario("normal", 2)
    r = run_rollout(sc, _Failing(ok=(0, 1)), HW)
    assert [k for k, _ in r.plan_errors] == list(range(2, 30))
    assert np.isfinite(r.plans[:2]).all() and np.isnan(r.plans[2:]).all()
    # the last plan (tick 1) goes on at 5 m/s past its 3 s: the ego ends near 5 m/s, not stopped
    assert r.ego_speed[-1] == pytest.approx(5.0, abs=0.3)


def test_observation_carries_model_inputs_from_the_simulation():
    sc = make_scenario("normal", 1)
    planner = _Failing(ok=range(30))
    run_rollout(sc, planner, HW)
    obs = planner.observations[0]
    assert len(obs.jpegs) == 6 and all(j[:3] == b"\xff\xd8\xff" for j in obs.jpegs)
    cams = obs.model_cameras((18, 32))
    assert cams["images"].shape == (6, 18, 32, 3) and cams["images"].dtype == np.uint8
    assert cams["intrinsics"][0, 0, 0] == pytest.approx(obs.intrinsics[0, 0, 0] / 2)
    assert obs.ego_state[EGO_STATE_FIELDS.index("speed")] == pytest.approx(sc.start.v, rel=1e-6)
    assert obs.past_mask.tolist() == [1.0] * 4  # 2 s of logged history before the start
    assert 0 <= obs.command < len(COMMANDS) and obs.frame_index == 0
    later = planner.observations[10]
    assert later.frame_index == 10 and later.time_s == pytest.approx(5.0)
    # the past 0.5 s step in the ego frame: about 2.5 m behind at 5 m/s, straight
    assert later.past_traj[-1] == pytest.approx([-2.5, 0.0], abs=0.3)


def test_an_image_size_the_renderer_cannot_produce_fails_before_driving():
    with pytest.raises(ValueError, match="aspect"):
        run_rollout(make_scenario("normal", 0), ExpertPlanner(), (64, 64))
