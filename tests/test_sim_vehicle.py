"""The simulator's bicycle model, tracking controller and geometric checks against closed-form results."""
import numpy as np
import pytest
import shapely

from odvla.platform.sim.closed_loop_metrics import (collision_events, frame_checks, ncap_score, route_completion)
from odvla.platform.sim.tracking import track_plan
from odvla.platform.sim.vehicle import (EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH, WHEELBASE, VehicleLimits,
                                        VehicleState, ego_boxes, step)

T6 = 0.5 * np.arange(1, 7)


def test_constant_steer_draws_circle_of_radius_wheelbase_over_tan():
    delta, v = 0.2, 5.0
    R = WHEELBASE / np.tan(delta)
    s = VehicleState(0.0, 0.0, 0.0, v, delta)
    centre = np.array([0.0, R])  # left of the start, heading +x
    lim = VehicleLimits(max_steer=0.5)
    for k in range(1, 61):
        s, a = step(s, 0.0, delta, 0.1, lim)
        assert a == 0.0
        assert np.hypot(s.x - centre[0], s.y - centre[1]) == pytest.approx(R, abs=1e-9)
        # heading = arc / R
        expected_yaw = (v * 0.1 * k / R + np.pi) % (2 * np.pi) - np.pi
        assert s.yaw == pytest.approx(expected_yaw, abs=1e-9)


def test_constant_deceleration_stops_after_v2_over_2a_and_stays():
    v0, a = 10.0, 3.0
    s = VehicleState(0.0, 0.0, 0.3, v0)
    for _ in range(60):
        s, _ = step(s, -a, 0.0, 0.1)
    d = v0 * v0 / (2 * a)
    assert s.v == 0.0
    assert s.x == pytest.approx(d * np.cos(0.3), abs=1e-9)
    assert s.y == pytest.approx(d * np.sin(0.3), abs=1e-9)


def test_limits_clip_acceleration_steer_and_steer_rate():
    lim = VehicleLimits(max_accel=2.0, max_decel=5.0, max_steer=0.4, max_steer_rate=0.5)
    s, a = step(VehicleState(0, 0, 0, 5.0), 10.0, 1.0, 0.1, lim)
    assert a == pytest.approx(2.0) and s.v == pytest.approx(5.2)
    assert s.steer == pytest.approx(0.05)  # 0.5 rad/s * 0.1 s
    s, a = step(VehicleState(0, 0, 0, 5.0, 0.39), -20.0, 1.0, 0.1, lim)
    assert a == pytest.approx(-5.0) and s.steer == pytest.approx(0.4)


def test_tracker_follows_a_straight_line_at_constant_speed():
    v = 8.0
    plan = np.stack([v * T6, np.zeros(6)], -1) + [10.0, -3.0]
    tr = track_plan(VehicleState(10.0, -3.0, 0.0, v), plan, 3.0)
    assert tr.t[-1] == pytest.approx(3.0) and len(tr.t) == 31
    assert tr.pose[-1] == pytest.approx([10.0 + 3 * v, -3.0, 0.0], abs=1e-6)
    assert np.abs(tr.speed - v).max() < 1e-6 and np.abs(tr.accel).max() < 1e-6


def test_tracker_follows_an_arc_at_its_radius():
    """Waypoints on a circle of radius R: pure pursuit steers atan(L / R) and the rear axle stays on the circle."""
    R, v = 20.0, 6.0
    t = 0.5 * np.arange(1, 13)  # a 6-s plan, so the lookahead stays on the arc during 3 s
    ang = v * t / R
    plan = np.stack([R * np.sin(ang), R * (1 - np.cos(ang))], -1)
    tr = track_plan(VehicleState(0.0, 0.0, 0.0, v, np.arctan(WHEELBASE / R)), plan, 3.0)
    radius = np.hypot(tr.pose[:, 0], tr.pose[:, 1] - R)
    assert np.abs(radius - R).max() < 0.01
    assert tr.pose[-1, 2] == pytest.approx(v * 3.0 / R, abs=0.01)
    assert tr.steer == pytest.approx(np.full(31, np.arctan(WHEELBASE / R)), abs=0.005)
    assert tr.yaw_rate[-1] == pytest.approx(v / R, abs=0.005)


@pytest.mark.parametrize("v0,b", [(8.0, 4.0), (6.0, 3.0), (5.0, 2.0)])
def test_tracker_stops_where_a_constant_deceleration_plan_stops(v0, b):
    tt = np.minimum(T6, v0 / b)
    s = v0 * tt - b * tt ** 2 / 2
    tr = track_plan(VehicleState(0.0, 0.0, 0.0, v0), np.stack([s, np.zeros(6)], -1), 5.0)
    assert tr.speed[-1] < 0.05  # at rest, up to the position loop's creep onto the stop point
    assert tr.pose[-1, 0] == pytest.approx(v0 * v0 / (2 * b), abs=0.1)
    assert np.abs(tr.accel[:6] + b).max() < 0.1  # the plan's deceleration, fed forward, over the first 0.6 s


def test_ego_box_and_contact_against_shapely_polygons():
    """Ego at the origin heading +x: its box spans x in [0.5 - 2.042, 0.5 + 2.042], y in [-0.925, 0.925]."""
    pose = np.array([0.0, 0.0, 0.0])
    box = ego_boxes(pose)[0]
    front = EGO_FORWARD_SHIFT + EGO_LENGTH / 2
    assert shapely.equals(shapely.box(EGO_FORWARD_SHIFT - EGO_LENGTH / 2, -EGO_WIDTH / 2, front, EGO_WIDTH / 2),
                          shapely.polygons(np.array([[front, EGO_WIDTH / 2], [front - EGO_LENGTH, EGO_WIDTH / 2],
                                                     [front - EGO_LENGTH, -EGO_WIDTH / 2], [front, -EGO_WIDTH / 2]])))
    road = shapely.box(-10.0, -2.0, 30.0, 2.0)
    agents = np.array([
        [front + 1.0 + 0.05, 0.0, 0.0, 2.0, 1.0],  # rear 5 cm ahead of the ego's front: no contact
        [front + 1.0 - 0.05, 0.0, 0.0, 2.0, 1.0],  # rear 5 cm inside: contact
        [0.0, EGO_WIDTH / 2 + 1.0 + 0.05, np.pi / 2, 2.0, 1.0],  # rotated 90 deg: 2 m across y, 5 cm clear
        [np.nan] * 5,  # absent
    ])
    contact, off = frame_checks(box, agents, road)
    assert contact.tolist() == [False, True, False, False] and off is False
    # moved left until the left corners (y = 0.925 + dy) cross y = 2: off-road from dy > 1.075
    _, off = frame_checks(ego_boxes(np.array([0.0, 1.05, 0.0]))[0], agents[:0], road)
    assert off is False
    _, off = frame_checks(ego_boxes(np.array([0.0, 1.10, 0.0]))[0], agents[:0], road)
    assert off is True


def test_collision_events_impact_speed_and_ncap_score():
    contact = np.zeros((6, 2), bool)
    contact[2:4, 0] = True  # one spell with actor 0 from frame 2
    contact[5, 1] = True
    ego_v = np.tile([6.0, 0.0], (6, 1))
    agent_v = np.zeros((6, 2, 2))
    agent_v[:, 0] = [2.0, 0.0]  # same direction: relative 4 m/s
    agent_v[:, 1] = [-3.0, 0.0]  # oncoming: relative 9 m/s
    ev = collision_events(contact, ego_v, agent_v, np.arange(6) * 0.1, np.array(["vehicle", "pedestrian"]))
    assert [(e["frame"], e["actor"], e["impact_speed"]) for e in ev] == [(2, 0, 4.0), (5, 1, 9.0)]
    assert ncap_score(ev, 8.0) == pytest.approx(4 * (1 - 4.0 / 8.0))  # the first collision counts
    assert ncap_score(ev, 3.0) == 0.0
    assert ncap_score([], 3.0) == 5.0


def test_route_completion_is_furthest_progress_over_length():
    route = np.stack([np.linspace(0, 100, 11), np.zeros(11)], -1)
    pose = np.array([[0.0, 1.0, 0.0], [40.0, -1.0, 0.0], [30.0, 0.0, 0.0]])
    assert route_completion(pose, route) == pytest.approx(0.4)
    assert route_completion(np.array([[150.0, 0.0, 0.0]]), route) == 1.0
