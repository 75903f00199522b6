"""Closed-loop scenarios, agents (IDM), sensors' inputs and their bad-input errors."""
import numpy as np
import pytest
import shapely

from odvla.model.constants import CAMERAS, COMMANDS
from odvla.platform.sim.agents import IDMParams, ballistic_step, idm_accel
from odvla.platform.sim.scenario import LOG_START_S, SAFETY_KINDS, T_HIT, drivable_area_of, make_scenario
from odvla.platform.sim.sensors import check_cameras, route_command
from odvla.platform.sim.vehicle import box_polygon, ego_boxes
from odvla.platform.world.road_map import RoadGrid


def _log_ego_boxes(sc, times):
    xy, yaw, _ = sc.ego_log.at(LOG_START_S + times)
    return ego_boxes(np.column_stack([xy, yaw]))


def _actor_boxes(a, times):
    xy, yaw, _ = a.track.at(LOG_START_S + times)
    n = len(times)
    return np.column_stack([xy, yaw, np.full(n, a.length), np.full(n, a.width)])


def test_unknown_kind_and_agent_mode_are_named():
    with pytest.raises(ValueError, match=r"unknown scenario kind 'highway'.*normal, stationary, frontal"):
        make_scenario("highway", 0)
    with pytest.raises(ValueError, match=r"unknown agent mode 'smart'.*log, idm"):
        make_scenario("normal", 0, agent_mode="smart")


def test_world_without_drivable_area_is_an_error():
    with pytest.raises(ValueError, match=r"scenario normal-0-log: RoadGrid n=0.*the world's map has no drivable"):
        make_scenario("normal", 0, grid=RoadGrid(n=0))
    exp = RoadGrid(n=3).expansion_json()
    assert drivable_area_of(exp).area == pytest.approx(2 * 3 * 14.0 * (2 * 100.0 + 14.0) - 9 * 14.0 ** 2)
    exp["drivable_area"] = []
    with pytest.raises(ValueError, match=r"town\.json: the world's map has no drivable area \(0 drivable_area"):
        drivable_area_of(exp, "town.json")


def test_same_seed_same_world_other_seed_other_world():
    a, b, c = make_scenario("cutin", 4), make_scenario("cutin", 4), make_scenario("cutin", 5)
    assert a.start == b.start and np.array_equal(a.route, b.route)
    assert [x.track.xy.tobytes() for x in a.actors] == [x.track.xy.tobytes() for x in b.actors]
    assert a.start != c.start


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normal_agents_never_touch_the_logged_ego(seed):
    sc = make_scenario("normal", seed)
    times = np.arange(0, sc.duration_s + 1e-9, 0.1)
    ego = box_polygon(_log_ego_boxes(sc, times))
    for a in sc.actors:
        assert not shapely.intersects(ego, box_polygon(_actor_boxes(a, times))).any(), a.category
    assert sc.target is None and sc.reference_impact_speed is None
    assert sc.drivable_area.covers(box_polygon(_log_ego_boxes(sc, np.array([0.0])))[0])


@pytest.mark.parametrize("kind", SAFETY_KINDS)
def test_logged_ego_hits_the_injected_actor_at_t_hit(kind):
    """Before T_HIT - 0.3 s the logged ego is clear of the actor; by T_HIT + 0.3 s the two boxes overlap."""
    sc = make_scenario(kind, 3)
    actor = sc.actors[sc.target]
    assert actor.injected and actor.kind == ("pedestrian" if kind == "pedestrian" else "vehicle")
    times = np.arange(0, sc.duration_s + 1e-9, 0.1)
    hit = shapely.intersects(box_polygon(_log_ego_boxes(sc, times)), box_polygon(_actor_boxes(actor, times)))
    first = times[np.argmax(hit)]
    assert hit.any() and T_HIT - 0.3 <= first <= T_HIT + 0.3, first
    # v_ref: the relative speed of the logged ego and the actor at T_HIT
    _, yaw, v = sc.ego_log.at(np.array([LOG_START_S + T_HIT]))
    _, ayaw, av = actor.track.at(np.array([LOG_START_S + T_HIT]))
    rel = v[0] * np.array([np.cos(yaw[0]), np.sin(yaw[0])]) - av[0] * np.array([np.cos(ayaw[0]), np.sin(ayaw[0])])
    assert sc.reference_impact_speed == pytest.approx(np.linalg.norm(rel))


@pytest.mark.parametrize("brake", [1.5, 4.0, 8.0])
def test_idm_keeps_its_gap_behind_a_braking_leader(brake):
    """Leader and follower at 12 m/s, the follower at the IDM equilibrium gap for v0 = 15 m/s
    (``s = s*(v, 0) / sqrt(1 - (v / v0)^4)``); the leader brakes at ``brake`` m/s^2 (comfortable to full braking)
    to a standstill. While the follower is faster than 1 m/s its bumper gap stays above s0. The last creep to
    standstill is underdamped (linearised about ``s = s0, v = 0``: damping ratio ``T sqrt(a / (2 s0))`` = 0.5), so
    it stops a little short of s0, never closer than s0 - 0.25 m, and never touches."""
    p = IDMParams()
    dt, v, v0 = 0.1, 12.0, 15.0
    s_eq = (p.s0 + v * p.T) / np.sqrt(1 - (v / v0) ** 4)
    lead_u, lead_v = s_eq + 4.6, v  # 4.6 m: the leader's length (bumper gap = centre distance - 4.6)
    u, fv = np.array([0.0]), np.array([v])
    gaps, speeds = [], []
    for _ in range(300):
        gap = lead_u - u[0] - 4.6
        gaps.append(gap)
        speeds.append(fv[0])
        acc = idm_accel(fv, np.array([v0]), np.array([gap]), np.array([lead_v]), p)
        u, fv = ballistic_step(u, fv, acc, dt)
        lu, lv = ballistic_step(np.array([lead_u]), np.array([lead_v]), np.array([-brake if lead_v > 0 else 0.0]), dt)
        lead_u, lead_v = float(lu[0]), float(lv[0])
    gaps, speeds = np.array(gaps), np.array(speeds)
    assert gaps[speeds > 1.0].min() > p.s0
    assert gaps.min() >= p.s0 - 0.25
    assert speeds[-1] < 0.01 and gaps[-1] == pytest.approx(p.s0, abs=0.25)


def test_idm_free_road_approaches_desired_speed_and_never_reverses():
    p = IDMParams()
    acc = idm_accel(np.array([0.0, 10.0, 15.0]), np.array([10.0, 10.0, 10.0]), np.full(3, np.inf), np.zeros(3), p)
    # a (1 - (v/v0)^4): 1, 0, 1 - 1.5^4
    assert acc == pytest.approx([1.0, 0.0, 1.0 * (1 - 1.5 ** 4)])
    u, v = ballistic_step(np.array([0.0]), np.array([1.0]), np.array([-5.0]), 0.5)
    assert v[0] == 0.0 and u[0] == pytest.approx(1.0 / (2 * 5.0))


def test_idm_agents_react_to_the_ego_standing_in_their_lane():
    """An IDM vehicle with the ego standing 30 m ahead in its lane stops about s0 behind it; the same vehicle in
    log mode drives on through the ego's place."""
    from odvla.platform.sim.agents import AgentSim

    sims = {}
    for mode in ("idm", "log"):
        sc = make_scenario("normal", 1, agent_mode=mode)
        sims[mode] = AgentSim(sc)
    sim = sims["idm"]
    assert sim.idm.any() and not sims["log"].idm.any()
    j, i = 0, int(sims["idm"]._idx[0])
    assert sim._v[j] > 1.0  # it is moving at the start
    start = sim._origin[j] + 30.0 * sim._dir[j]
    ego = np.array([start[0], start[1], float(np.arctan2(sim._dir[j, 1], sim._dir[j, 0])), 4.084, 1.85])
    for s in sims.values():
        for _ in range(200):
            s.step(0.1, ego, np.zeros(2))
    gaps = {}
    for mode, s in sims.items():
        boxes, _ = s.state()
        travelled = float((boxes[i, :2] - sim._origin[j]) @ sim._dir[j])
        gaps[mode] = 30.0 - travelled - (sc.actors[i].length + 4.084) / 2
    assert IDMParams().s0 - 0.25 <= gaps["idm"] <= IDMParams().s0 + 0.5 and sim._v[j] < 0.05
    assert gaps["log"] < -10.0  # replay passes through


def test_command_comes_from_the_route_ahead():
    straight = np.stack([np.linspace(0, 200, 801), np.zeros(801)], -1)
    pose = np.array([10.0, 0.0, 0.0])
    assert COMMANDS[route_command(straight, pose, 10.0)] == "keep forward"
    R = 8.75  # a left turn of the synthetic grid 12 m ahead, then north
    arc = np.pi / 2 * np.linspace(0, 1, 50)
    turn = np.vstack([np.stack([np.linspace(0, 22, 89), np.zeros(89)], -1)[:-1],
                      np.stack([22 + R * np.sin(arc), R * (1 - np.cos(arc))], -1),
                      np.stack([np.full(40, 22 + R), R + np.linspace(0.5, 40, 40)], -1)])
    assert COMMANDS[route_command(turn, pose, 10.0)] == "turn left"  # 30 m ahead: well past the turn
    assert COMMANDS[route_command(turn, pose, 1.0)] == "keep forward"  # 3 m ahead: still straight
    right = turn * [1.0, -1.0]
    assert COMMANDS[route_command(right, pose, 10.0)] == "turn right"


@pytest.mark.parametrize("hw,cams,message", [
    ((64, 112), CAMERAS, None),
    ((64, 64), CAMERAS, r"aspect 1.000"),
    ((8, 14), CAMERAS, r"outside 16..900"),
    ((1800, 3200), CAMERAS, r"outside 16..900"),
    ((64.5, 112), CAMERAS, r"whole pixels"),
    ((64, 112), CAMERAS[:5], r"six cameras in the order"),
    ((64, 112), CAMERAS[:5] + ("CAM_TOP",), r"\['CAM_TOP'\] are not in the renderer's rig"),
])
def test_camera_set_and_image_size_the_renderer_cannot_produce(hw, cams, message):
    if message is None:
        assert check_cameras(hw, cams) == (64, 112)
    else:
        with pytest.raises(ValueError, match=message):
            check_cameras(hw, cams)
