"""prepare: shard schema, geometry against the devkit's own functions, command rule, splits, atomic rerun."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from pyquaternion import Quaternion

from odvla.model.constants import CAMERAS, COMMANDS, DETECTION_CLASSES, MAP_CLASSES
from odvla.platform.data.records import command_from_future
from odvla.platform.data.shard_schema import META_VERSION_KEY, SCHEMA, SCHEMA_VERSION
from odvla.platform.data.shards import read_manifest, read_split, shard_files


@pytest.fixture(scope="module")
def nusc(synth_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_root), verbose=False)


@pytest.fixture(scope="module")
def rows(shards_dir):
    import pyarrow as pa

    t = pa.concat_tables([read_split(shards_dir, "train"), read_split(shards_dir, "val")])
    return {r["sample_token"]: r for r in t.to_pylist()}


def test_layout_schema_and_manifest(shards_dir, rows):
    m = read_manifest(shards_dir)
    assert m["schema_version"] == SCHEMA_VERSION and m["split_source"] == "odvla_split.json"
    assert m["splits"]["train"]["samples"] == 60 and m["splits"]["val"]["samples"] == 20
    files = shard_files(shards_dir, "train")
    assert len(files) == 2  # rows_per_shard=32
    for f in files:
        assert pq.read_schema(f).metadata[META_VERSION_KEY] == SCHEMA_VERSION.encode()
        assert pq.read_schema(f).remove_metadata().equals(SCHEMA.remove_metadata())
    assert not [p for p in shards_dir.iterdir() if p.name.startswith(".")]
    assert {r["split"] for r in rows.values() if r["scene_name"] == "scene-0004"} == {"val"}
    assert len(rows) == 80
    # every synthetic scene has CAN bus files: no scene fell back to ego poses
    assert m["ego_state_source"] == {f"scene-000{i}": "can_bus" for i in range(1, 5)}


def _pose(nusc, sd_token):
    sd = nusc.get("sample_data", sd_token)
    return nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])


def test_agent_boxes_match_devkit(nusc, rows):
    """Boxes in the ego frame equal the devkit's get_boxes + Box.translate/rotate, and get_sample_data's
    sensor-frame boxes moved by the calibration."""
    checked = 0
    for s in nusc.sample[::9]:
        r = rows[s["token"]]
        pose, cs = _pose(nusc, s["data"]["LIDAR_TOP"])
        got = np.array(r["agent_boxes"]).reshape(-1, 9)
        inst = r["agent_instance"]
        boxes = nusc.get_boxes(s["data"]["LIDAR_TOP"])
        _, lidar_boxes, _ = nusc.get_sample_data(s["data"]["LIDAR_TOP"])
        assert len(boxes) == len(got)
        for box, lbox in zip(boxes, lidar_boxes):
            i = inst.index(nusc.get("sample_annotation", box.token)["instance_token"])
            box.translate(-np.array(pose["translation"]))
            box.rotate(Quaternion(pose["rotation"]).inverse)
            np.testing.assert_allclose(got[i, :3], box.center, atol=1e-3)
            np.testing.assert_allclose(got[i, 3:6], box.wlh, atol=1e-4)
            yaw = box.orientation.yaw_pitch_roll[0]
            assert abs(np.angle(np.exp(1j * (got[i, 6] - yaw)))) < 1e-4
            lbox.rotate(Quaternion(cs["rotation"]))
            lbox.translate(np.array(cs["translation"]))
            np.testing.assert_allclose(got[i, :3], lbox.center, atol=1e-3)
            v = nusc.box_velocity(box.token)
            v_ego = Quaternion(pose["rotation"]).inverse.rotate(np.nan_to_num(v))
            np.testing.assert_allclose(got[i, 7:9], v_ego[:2], atol=1e-3)
            cls = DETECTION_CLASSES.index("car") if box.name == "vehicle.car" else None
            if cls is not None:
                assert r["agent_class"][i] == cls
            checked += 1
    assert checked > 20


def test_ego_waypoints_and_state_match_poses(nusc, rows):
    scene = nusc.scene[1]
    toks, tok = [], scene["first_sample_token"]
    while tok:
        toks.append(tok)
        tok = nusc.get("sample", tok)["next"]
    poses = [_pose(nusc, nusc.get("sample", t)["data"]["LIDAR_TOP"])[0] for t in toks]
    k = 8
    r = rows[toks[k]]
    q = Quaternion(poses[k]["rotation"])
    fut = np.array(r["future_traj"]).reshape(6, 2)
    past = np.array(r["past_traj"]).reshape(4, 2)
    for i in range(6):
        d = q.inverse.rotate(np.array(poses[k + 1 + i]["translation"]) - poses[k]["translation"])
        np.testing.assert_allclose(fut[i], d[:2], atol=1e-3)
    for i in range(4):
        d = q.inverse.rotate(np.array(poses[k - 4 + i]["translation"]) - poses[k]["translation"])
        np.testing.assert_allclose(past[i], d[:2], atol=1e-3)
    assert r["past_mask"] == [1.0] * 4 and r["future_mask"] == [1.0] * 6
    # ego state from the CAN bus that `odvla synth` writes: the last pose / steering message at or before the
    # keyframe, read with the devkit; its velocity agrees with the poses' central difference around the keyframe
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    can = NuScenesCanBus(dataroot=nusc.dataroot)
    ts = nusc.get("sample", toks[k])["timestamp"]
    pose = [m for m in can.get_messages(scene["name"], "pose") if m["utime"] <= ts][-1]
    steer = [m for m in can.get_messages(scene["name"], "steeranglefeedback") if m["utime"] <= ts][-1]
    want = [*pose["vel"][:2], *pose["accel"][:2], pose["rotation_rate"][2], np.hypot(*pose["vel"][:2]),
            steer["value"]]
    np.testing.assert_allclose(r["ego_state"], np.float32(want), rtol=1e-6)
    dt = (nusc.get("sample", toks[k + 1])["timestamp"] - nusc.get("sample", toks[k - 1])["timestamp"]) * 1e-6
    v = q.inverse.rotate(np.array(poses[k + 1]["translation"]) - poses[k - 1]["translation"]) / dt
    assert r["ego_state"][0] == pytest.approx(v[0], abs=0.1 + 2.0 * dt / 2)  # |accel| <= 4 m/s^2 over +-0.5 s
    assert abs(r["ego_state"][1]) < 1e-6 and abs(v[1]) < 0.5
    # masks at the scene ends
    first, last = rows[toks[0]], rows[toks[-1]]
    assert first["past_mask"] == [0.0] * 4 and first["prev_sample_token"] == ""
    assert last["future_mask"] == [0.0] * 6
    assert rows[toks[-3]]["future_mask"] == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_cameras_match_calibration(nusc, rows, synth_root):
    from nuscenes.utils.geometry_utils import transform_matrix

    s = nusc.sample[3]
    r = rows[s["token"]]
    K = np.array(r["cam_intrinsics"]).reshape(6, 3, 3)
    S = np.array(r["cam_sensor2ego"]).reshape(6, 4, 4)
    E = np.array(r["cam_ego2global"]).reshape(6, 4, 4)
    for i, cam in enumerate(CAMERAS):
        sd = nusc.get("sample_data", s["data"][cam])
        pose, cs = _pose(nusc, s["data"][cam])
        assert r["cam_paths"][i] == sd["filename"] and (synth_root / sd["filename"]).is_file()
        np.testing.assert_allclose(K[i], cs["camera_intrinsic"], rtol=1e-5)
        np.testing.assert_allclose(S[i], transform_matrix(cs["translation"], Quaternion(cs["rotation"])), atol=1e-5)
        np.testing.assert_allclose(E[i], transform_matrix(pose["translation"], Quaternion(pose["rotation"])),
                                   atol=1e-3)
    assert r["image_hw"] == [180, 320]


def test_map_polylines_match_devkit(synth_root, nusc, rows):
    """Dividers equal NuScenesMap.get_map_geom's lines for the same patch; crossings/boundaries are present."""
    from nuscenes.map_expansion.map_api import NuScenesMap

    nmap = NuScenesMap(dataroot=str(synth_root), map_name="boston-seaport")
    s = nusc.sample[25]
    r = rows[s["token"]]
    pose, _ = _pose(nusc, s["data"]["LIDAR_TOP"])
    x, y = pose["translation"][:2]
    yaw = Quaternion(pose["rotation"]).yaw_pitch_roll[0]
    geoms = nmap.get_map_geom((x, y, 30.0, 60.0), np.rad2deg(yaw), ["road_divider", "lane_divider"])
    ref = sorted(tuple(np.round(np.asarray(g.coords)[[0, -1]], 2).ravel()) for _, gs in geoms for g in gs
                 if not g.is_empty and g.geom_type == "LineString")
    pts = np.array(r["map_points"]).reshape(-1, 2)
    starts = np.concatenate([[0], np.cumsum(r["map_lengths"])[:-1]])
    ours = sorted(tuple(np.round(pts[[s0, s0 + n - 1]], 2).ravel())
                  for s0, n, c in zip(starts, r["map_lengths"], r["map_class"]) if c == MAP_CLASSES.index("divider"))
    assert ours == ref and len(ours) > 0
    assert MAP_CLASSES.index("boundary") in r["map_class"]
    assert np.all(np.abs(pts[:, 0]) <= 30.01) and np.all(np.abs(pts[:, 1]) <= 15.01)


@pytest.mark.parametrize("y,mask,expected", [
    ([0.1, 0.3, 0.8, 1.5, 2.4, 3.1], [1] * 6, "turn left"),
    ([0, 0, 0, -0.5, -1.5, -2.6], [1] * 6, "turn right"),
    ([0, 0.2, 0.5, 0.9, 1.4, 1.99], [1] * 6, "keep forward"),
    ([0.5, 1.0, 2.5, 9.0, 9.0, 9.0], [1, 1, 1, 0, 0, 0], "turn left"),  # last valid waypoint decides
    ([0.0, 0.0, -1.0, -9.0, 0.0, 0.0], [1, 1, 1, 0, 0, 0], "keep forward"),
    ([5.0] * 6, [0] * 6, "keep forward"),  # no future: forward
])
def test_command_rule(y, mask, expected):
    traj = np.stack([np.arange(1, 7) * 4.0, np.array(y)], -1)
    assert COMMANDS[command_from_future(traj, np.array(mask))] == expected


def test_commands_in_shards_follow_rule_and_all_occur(rows):
    seen = set()
    for r in rows.values():
        ft = np.array(r["future_traj"]).reshape(6, 2)
        assert r["command"] == command_from_future(ft, np.array(r["future_mask"]))
        seen.add(r["command"])
    assert seen == {0, 1, 2}


def test_waypoint_frame_hand_case():
    """Ego at (10, 5) heading north: a point 2 m north is 2 m ahead, a point 1 m west is 1 m to the left."""
    from odvla.platform.data.transforms import global_to_ego_xy, pose_matrix, yaw_quat

    E = pose_matrix(yaw_quat(np.pi / 2), [10.0, 5.0, 0.0])
    np.testing.assert_allclose(global_to_ego_xy(np.array([[10.0, 7.0], [9.0, 5.0]]), E), [[2, 0], [0, 1]],
                               atol=1e-9)


def test_official_splits_for_real_names(tmp_path):
    from nuscenes.utils.splits import create_splits_scenes

    from odvla.platform.data.errors import DataError
    from odvla.platform.data.prepare import scene_splits

    off = create_splits_scenes(verbose=False)
    names = [off["train"][0], off["val"][0]]
    m, src = scene_splits(tmp_path, "v1.0-trainval", names)
    assert (m[names[0]], m[names[1]], src) == ("train", "val", "nuscenes.utils.splits")
    m, _ = scene_splits(tmp_path, "v1.0-mini", [off["mini_val"][0]])
    assert m[off["mini_val"][0]] == "val"
    with pytest.raises(DataError, match="scene-9999"):
        scene_splits(tmp_path, "v1.0-mini", ["scene-9999"])


def test_ray_parallel_prepare_equals_in_process(synth_root, shards_dir, tmp_path, ray_session):
    """The Ray-task path (2 tasks at once on the session's Ray) writes exactly the fixture's rows."""
    from odvla.platform.data.prepare import prepare

    rep = prepare(synth_root, "v1.0-mini", tmp_path / "ray", rows_per_shard=32, num_workers=2, progress=True)
    assert rep["splits"] == read_manifest(shards_dir)["splits"]
    for split in ("train", "val"):
        assert read_split(tmp_path / "ray", split).equals(read_split(shards_dir, split))


def test_rerun_replaces_atomically(synth_root, tmp_path):
    from odvla.platform.data.prepare import prepare

    out = tmp_path / "sh"
    (out / "train").mkdir(parents=True)
    (out / "train" / "part-00099.parquet").write_text("stale")
    rep = prepare(synth_root, "v1.0-mini", out, rows_per_shard=100, num_workers=0, progress=False)
    assert rep["splits"]["train"]["files"] == ["part-00000.parquet"]
    assert sorted(p.name for p in (out / "train").iterdir()) == ["part-00000.parquet"]
    first = read_split(out, "train")
    prepare(synth_root, "v1.0-mini", out, rows_per_shard=100, num_workers=0, progress=False)
    assert read_split(out, "train").equals(first)  # deterministic, rerun-safe
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    assert json.loads((out / "manifest.json").read_text())["splits"]["val"]["samples"] == 20
