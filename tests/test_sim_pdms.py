"""NAVSIM's PDM score (``platform/sim/pdms.py``) on hand-built traces, each expected value derived from NAVSIM's
definitions (``pdm_scorer.py``, ``pdm_scorer_utils.py``, ``pdm_comfort_metrics.py``) in the comments."""
from __future__ import annotations

import numpy as np
import pytest
import shapely

from odvla.platform.sim.pdms import PDMInputs, aggregate, score_pdm

T = 31  # 3 s at 10 Hz
t = np.arange(T) * 0.1
ROAD = shapely.box(-100, -5, 300, 5)  # a straight road 10 m wide along +x
ROUTE = np.array([[-100.0, 0.0], [300.0, 0.0]])
L, W = 4.0, 2.0  # ego box


def no_agents(frames=T):
    return np.zeros((frames, 0, 5)), np.zeros((frames, 0, 2))


def straight(v0=10.0, accel=0.0, y=0.0):
    """Ego along +x at lateral offset y: speed v0 + accel t (never below 0)."""
    v = np.maximum(v0 + accel * t, 0.0)
    x = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * 0.1)])
    return np.stack([x, np.full(T, y), np.zeros(T)], -1), v


def agent_track(x0, y0, vx, vy=0.0, length=4.0, width=2.0, yaw=0.0, frames=T):
    """One agent moving at constant velocity: boxes [frames, 1, 5], velocity [frames, 1, 2]."""
    tt = np.arange(frames) * 0.1
    boxes = np.stack([x0 + vx * tt, y0 + vy * tt, np.full(frames, yaw), np.full(frames, length),
                      np.full(frames, width)], -1)[:, None]
    return boxes, np.tile([[vx, vy]], (frames, 1))[:, None]


def inputs(pose, speed, boxes=None, vel=None, kinds=(), drivable=ROAD, **kw):
    if boxes is None:
        boxes, vel = no_agents()
    return PDMInputs(t=t, ego_pose=pose, ego_speed=speed, ego_length=L, ego_width=W, agent_boxes=boxes,
                     agent_velocity=vel, agent_kinds=tuple(kinds), drivable=drivable, route=ROUTE, **kw)


def test_clean_drive_scores_one_everywhere():
    pose, v = straight(10.0)
    r = score_pdm(inputs(pose, v))
    assert (r.nc, r.dac, r.ttc, r.ep, r.comfort, r.score) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert r.progress_m == pytest.approx(30.0)  # 10 m/s for 3 s along the route
    assert not r.at_fault_collision.any() and not r.off_road.any() and not r.ttc_violation.any()


def test_weighted_formula():
    assert aggregate(1, 1, 1, 1, 1) == 1.0
    assert aggregate(1, 1, 0, 0.5, 1) == pytest.approx((0 + 2.5 + 2) / 12)
    assert aggregate(0.5, 1, 1, 1, 0) == pytest.approx(0.5 * 10 / 12)
    assert aggregate(1, 0, 1, 1, 1) == 0.0


def test_static_object_collision_gives_half():
    # a 1 m static box centred at x = 20: the ego front (x + 2) reaches 19.5 at x = 17.5, t = 1.75 s -> frame 18;
    # a static object is a stopped track: at fault, 0.5. TTC: it is ahead -> 0. EP: 30 m * 0.5 = 15 m, the only
    # reference -> 1. PDMS = 0.5 * 1 * (0 + 5 + 2) / 12
    pose, v = straight(10.0)
    boxes, vel = agent_track(20.0, 0.0, 0.0, length=1.0, width=1.0)
    r = score_pdm(inputs(pose, v, boxes, vel, ("static",)))
    assert r.nc == 0.5 and r.dac == 1.0 and r.ttc == 0.0 and r.ep == 1.0 and r.comfort == 1.0
    assert r.score == pytest.approx(0.5 * 7 / 12)
    assert np.flatnonzero(r.at_fault_collision)[0] == 18
    assert r.collisions[0][3] == "stopped_track" and r.collisions[0][4]


def test_stopped_vehicle_hit_is_at_fault_zero():
    pose, v = straight(10.0)
    boxes, vel = agent_track(20.0, 0.0, 0.0)  # a parked car (speed 0 <= 5e-3): stopped track
    r = score_pdm(inputs(pose, v, boxes, vel, ("vehicle",)))
    assert r.nc == 0.0 and r.score == 0.0 and r.ep == 0.0  # multiplier 0 -> EP 0 below the 5 m threshold


def test_front_collision_with_slower_vehicle_is_at_fault():
    # ego front at 2, lead car rear at 5 - 2 + 3 = 6 (centre 8): closes at 5 m/s, contact at 0.8 s on the front edge
    pose, v = straight(10.0)
    boxes, vel = agent_track(8.0, 0.0, 5.0)
    r = score_pdm(inputs(pose, v, boxes, vel, ("vehicle",)))
    assert r.nc == 0.0 and r.collisions[0][3] == "active_front"
    assert np.flatnonzero(r.at_fault_collision)[0] == 8


def test_rear_ended_stopped_ego_is_not_at_fault():
    # ego stopped at the origin (rear at -2); a car from behind at 5 m/s, front at -10 + 2 + 5 t reaches -2 at 1.2 s:
    # ego speed 0 <= 0.05 -> stopped-ego collision, not at fault. TTC skips a stopped ego; EP: 0 m <= 5 m -> 1
    pose, v = straight(0.0)
    boxes, vel = agent_track(-10.0, 0.0, 5.0)
    r = score_pdm(inputs(pose, v, boxes, vel, ("vehicle",)))
    assert (r.nc, r.dac, r.ttc, r.ep, r.comfort, r.score) == (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
    assert r.collisions and r.collisions[0][3] == "stopped_ego" and not r.collisions[0][4]


def test_rear_ended_moving_ego_is_not_at_fault():
    # ego at 1 m/s, a car from behind at 6 m/s: centre straight behind (180 deg > 150) -> active rear, not at fault
    pose, v = straight(1.0)
    boxes, vel = agent_track(-10.0, 0.0, 6.0)
    r = score_pdm(inputs(pose, v, boxes, vel, ("vehicle",)))
    assert r.nc == 1.0 and r.collisions[0][3] == "active_rear"
    assert r.ttc == 1.0  # behind, on-road, one lane: ignored


def _side_swipe(**kw):
    # a 2 m long car beside the ego (centre 0.5 m behind the ego centre, 2.5 m left), same speed, drifting right at
    # 0.5 m/s: its right side (y = 1.5 - 0.5 t) meets the ego's left side (y = 1) at 1 s; its centre is ~100 deg off
    # the ego heading (neither ahead nor behind) and it never reaches the ego's front edge (x + 2): lateral
    pose, v = straight(10.0)
    boxes, vel = agent_track(-0.5, 2.5, 10.0, vy=-0.5, length=2.0)
    return score_pdm(inputs(pose, v, boxes, vel, ("vehicle",), **kw))


def test_lateral_collision_on_one_lane_is_not_at_fault():
    r = _side_swipe()
    assert r.nc == 1.0 and r.collisions[0][3] == "active_lateral" and not r.collisions[0][4]


def test_lateral_collision_across_lanes_is_at_fault():
    # two lanes split at y = 0.5: the ego (y in [-1, 1]) has corners in both and in neither all four
    lanes = (shapely.box(-100, -5, 300, 0.5), shapely.box(-100, 0.5, 300, 5))
    r = _side_swipe(lanes=lanes)
    assert r.multiple_lanes.all() and r.dac == 1.0
    assert r.nc == 0.0 and r.collisions[0][3] == "active_lateral" and r.collisions[0][4]


def test_corner_off_drivable_area_gives_dac_zero():
    # centre at y = 4.5 is on the road (|y| < 5), its left corners at y = 5.5 are not
    pose, v = straight(10.0, y=4.5)
    r = score_pdm(inputs(pose, v))
    assert r.dac == 0.0 and r.off_road.all() and r.score == 0.0 and r.ep == 0.0
    pose, v = straight(10.0, y=3.9)  # corners at 4.9: inside
    assert score_pdm(inputs(pose, v)).dac == 1.0


def test_ttc_violation_without_collision():
    # lead car 8 m/s, its rear 7.1 m ahead of the ego front; the ego at 10 m/s closes 0.2 m per frame and never
    # touches within 3 s (1.1 m left). Projected 0.9 s ahead (ego +9 m, the car +7.2 m by then) the gap is
    # 7.1 - 0.2 k - 1.8 < 0 first at k = 27: TTC 0, NC 1 -> PDMS (0 + 5 + 2) / 12
    pose, v = straight(10.0)
    for frames in (T + 9, T):  # logged agents past the trace, or the last frame moved on at its velocity
        boxes, vel = agent_track(2.0 + 7.1 + 2.0, 0.0, 8.0, frames=frames)
        r = score_pdm(inputs(pose, v, boxes, vel, ("vehicle",)))
        assert r.nc == 1.0 and r.ttc == 0.0 and not r.collisions
        assert np.flatnonzero(r.ttc_violation)[0] == 27
        assert r.score == pytest.approx(7 / 12)


def _comfort_fails(x):
    r = score_pdm(x)
    return r.comfort, sorted(k for k, ok in r.comfort_checks.items() if not ok)


def test_comfort_longitudinal_acceleration_bounds():
    pose, v = straight(20.0, accel=-5.0)  # -5 < -4.05; constant: jerk 0
    assert _comfort_fails(inputs(pose, v, ego_accel=np.full(T, -5.0))) == (0.0, ["lon_accel"])
    pose, v = straight(5.0, accel=2.5)  # 2.5 > 2.40
    assert _comfort_fails(inputs(pose, v, ego_accel=np.full(T, 2.5))) == (0.0, ["lon_accel"])
    pose, v = straight(5.0, accel=2.3)
    assert _comfort_fails(inputs(pose, v, ego_accel=np.full(T, 2.3))) == (1.0, [])
    # the derived acceleration (no ego_accel): the gradient of the speed
    pose, v = straight(20.0, accel=-5.0)
    r = score_pdm(inputs(pose, v))
    assert r.comfort == 0.0 and r.score == pytest.approx(10 / 12)


def test_comfort_longitudinal_jerk_bound():
    # a = 1.5 (t - 1.5)^2 - 3.5 in [-3.5, -0.125] (inside the bounds); the savgol filters keep a quadratic, so the
    # jerk is its derivative 3 (t - 1.5), +-4.5 at the ends > 4.13. |a| = -a: the magnitude jerk is also 4.5 < 8.37
    a = 1.5 * (t - 1.5) ** 2 - 3.5
    v = 20.0 + np.concatenate([[0.0], np.cumsum((a[1:] + a[:-1]) / 2 * 0.1)])
    x = np.concatenate([[0.0], np.cumsum((v[1:] + v[:-1]) / 2 * 0.1)])
    pose = np.stack([x, np.zeros(T), np.zeros(T)], -1)
    assert _comfort_fails(inputs(pose, v, ego_accel=a)) == (0.0, ["lon_jerk"])


def _turn(yaw, speed):
    """Poses along the heading profile ``yaw`` [T] at constant ``speed``."""
    step = speed * 0.1
    xy = np.concatenate([[[0.0, 0.0]], np.cumsum(step * np.stack([np.cos(yaw[:-1]), np.sin(yaw[:-1])], -1), 0)])
    return np.concatenate([xy, yaw[:, None]], -1), np.full(T, speed)


def test_comfort_yaw_rate_bound():
    open_area = shapely.box(-100, -100, 100, 100)
    pose, v = _turn(1.0 * t, 2.0)  # 1.0 rad/s > 0.95 (the filters keep a linear heading); yaw acceleration 0
    assert _comfort_fails(inputs(pose, v, drivable=open_area)) == (0.0, ["yaw_rate"])
    pose, v = _turn(0.9 * t, 2.0)
    assert _comfort_fails(inputs(pose, v, drivable=open_area)) == (1.0, [])


def test_comfort_yaw_acceleration_bound():
    # yaw = 0.2 sin(4 t): the 5-point filters at 0.1 s answer a sine of 0.4 rad per step with gain
    # (4 sin .8 + 2 sin .4) / (10 * .1) / 4 = 0.91 (rate: peak 0.73 < 0.95) and
    # (4 cos .8 - 2 cos .4 - 2) / (7 * .01) / -16 = 0.94 (acceleration: peak 3.0 > 1.93)
    open_area = shapely.box(-100, -100, 100, 100)
    pose, v = _turn(0.2 * np.sin(4 * t), 2.0)
    assert _comfort_fails(inputs(pose, v, drivable=open_area)) == (0.0, ["yaw_accel"])


def test_comfort_lateral_acceleration_only_with_the_centripetal_option():
    # 10 m/s at 0.5 rad/s: v * yaw rate = 5 > 4.89. NAVSIM's kinematic state has no lateral acceleration: passes
    open_area = shapely.box(-100, -100, 100, 100)
    pose, v = _turn(0.5 * t, 10.0)
    assert _comfort_fails(inputs(pose, v, drivable=open_area)) == (1.0, [])
    assert _comfort_fails(inputs(pose, v, drivable=open_area, lateral_accel="centripetal")) == (0.0, ["lat_accel"])


def test_ep_relative_to_best_progress_with_low_progress_threshold():
    pose, v = straight(1.0)  # 3 m of progress
    r = score_pdm(inputs(pose, v))
    assert r.progress_m == pytest.approx(3.0) and r.ep == 1.0  # best 3 m <= 5 m: EP 1
    assert score_pdm(inputs(pose, v, best_progress_m=4.5)).ep == 1.0  # best still <= 5 m
    r = score_pdm(inputs(pose, v, best_progress_m=12.0))
    assert r.ep == pytest.approx(3.0 / 12.0) and r.score == pytest.approx((5 + 5 * 0.25 + 2) / 12)
    pose, v = straight(10.0)  # 30 m beats a 12 m reference: the best is its own -> 1
    assert score_pdm(inputs(pose, v, best_progress_m=12.0)).ep == 1.0
    pose, v = straight(-0.0)
    pose = pose.copy()
    pose[:, 0] = -np.arange(T) * 0.1  # backwards: progress clipped at 0
    assert score_pdm(inputs(pose, np.full(T, 1.0), best_progress_m=12.0)).ep == 0.0


def test_bad_inputs_name_the_field():
    pose, v = straight(10.0)
    with pytest.raises(ValueError, match="PDMInputs.t"):
        score_pdm(PDMInputs(t * 2, pose, v, L, W, *no_agents(), (), ROAD, ROUTE))
    boxes, vel = agent_track(20.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="agent_kinds.*truck"):
        score_pdm(inputs(pose, v, boxes, vel, ("truck",)))
    with pytest.raises(ValueError, match="drivable"):
        score_pdm(inputs(pose, v, drivable=shapely.Polygon()))


# ---- odvla eval --protocol pdms on the synthetic logs (platform/sim/log_pdms.py)

@pytest.fixture(scope="module")
def synthetic_pdms(shards_dir):
    from odvla.platform.config import load_config
    from odvla.platform.eval.baselines import constant_velocity
    from odvla.platform.eval.evaluate import read_split_table
    from odvla.platform.sim.log_pdms import ROW_COLUMNS, pdms_metrics

    data = load_config(model="tiny", overrides=[f"data.shards={shards_dir}"]).data
    val = read_split_table(shards_dir, "val", ROW_COLUMNS)
    ego = np.asarray(val.column("ego_state").to_pylist(), np.float64)
    plans = {"cv/": constant_velocity(ego), "stop/": np.zeros((val.num_rows, 6, 2))}
    m, rows = pdms_metrics(data, val, plans)
    return val, ego, m, rows


def test_protocol_scores_methods_against_the_expert_on_synthetic_logs(synthetic_pdms):
    from odvla.platform.sim.log_pdms import pdms_table

    val, ego, m, rows = synthetic_pdms
    full = np.asarray(val.column("future_mask").to_pylist()).min(1) > 0
    assert m["pdms/skipped_short_future"] == (~full).sum() and m["expert/pdms/n"] == full.sum() > 0
    assert m["cv/pdms/n"] == m["stop/pdms/n"] == full.sum()
    # the logged expert collides with nothing and stays on the road in the normal synthetic scenes; it is its own
    # progress reference
    assert m["expert/pdms/nc"] == 1.0 and m["expert/pdms/dac"] == 1.0 and m["expert/pdms/ep"] == 1.0
    for k in ("score", "nc", "dac", "ttc", "ep", "comfort"):
        assert 0.0 <= m[f"cv/pdms/{k}"] <= 1.0
    speed = dict(zip(val.column("sample_token").to_pylist(), ego[:, 5]))
    expert = {r["sample_token"]: r for r in rows if r["method"] == "expert/"}
    for r in (r for r in rows if r["method"] == "stop/"):
        v0 = speed[r["sample_token"]]
        # a plan to stand still: the tracked car brakes, so it covers less than 3 s at its start speed
        assert r["progress_m"] < 3.0 * v0
        assert r["best_progress_m"] == pytest.approx(max(expert[r["sample_token"]]["progress_m"], r["progress_m"]))
        if r["best_progress_m"] > 5.0 and r["nc"] * r["dac"] == 1.0:
            assert r["ep"] == pytest.approx(r["progress_m"] / r["best_progress_m"])
    assert m["stop/pdms/ep"] < m["expert/pdms/ep"]
    table = "\n".join(pdms_table(m))
    assert "| constant velocity |" in table and "| logged expert |" in table


def test_protocol_without_map_names_location_and_sample(tmp_path, shards_dir, synth_root):
    import json

    from odvla.platform.config import load_config
    from odvla.platform.eval.evaluate import read_split_table
    from odvla.platform.sim.log_pdms import MapLayers, check_maps

    rows = read_split_table(shards_dir, "val", ["sample_token", "log_location"])
    tok, loc = rows.column("sample_token")[0].as_py(), rows.column("log_location")[0].as_py()
    data = load_config(model="tiny", overrides=[f"data.shards={shards_dir}", f"data.dataroot={tmp_path}"]).data
    with pytest.raises(FileNotFoundError, match=f"sample {tok}: no map for location '{loc}'"):
        check_maps(data, rows)
    # a map expansion whose drivable_area is empty
    src = json.loads((synth_root / "maps" / "expansion" / f"{loc}.json").read_text())
    src["drivable_area"] = []
    (tmp_path / "maps" / "expansion").mkdir(parents=True)
    (tmp_path / "maps" / "expansion" / f"{loc}.json").write_text(json.dumps(src))
    check_maps(data, rows)  # the file is there now
    with pytest.raises(ValueError, match=f"sample {tok}: map '{loc}'.*no drivable_area"):
        MapLayers(str(tmp_path), loc, tok)


def test_extra_protocols_by_name_and_unknown_names_are_named():
    from odvla.platform.sim.log_pdms import LogPDMS, extra_protocols

    (proto,) = extra_protocols(["pdms", "pdms"])  # once, however often it is asked for
    assert isinstance(proto, LogPDMS) and extra_protocols([]) == ()
    with pytest.raises(ValueError, match="'navsim'.*pdms"):
        extra_protocols(["pdms", "navsim"])
