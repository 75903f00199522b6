"""CAN-bus reader of records.py: only the devkit's "no CAN data for this scene" case falls back; other problems
are named errors."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from pyquaternion import Quaternion

from odvla.platform.data.records import CanBus, CanBusError


def _write(root, scene, pose, steer):
    d = root / "can_bus"
    d.mkdir(exist_ok=True)
    (d / f"{scene}_pose.json").write_text(json.dumps(pose))
    (d / f"{scene}_steeranglefeedback.json").write_text(json.dumps(steer))


def test_reader_fallback_only_for_scenes_without_can_data(tmp_path):
    pose = [{"utime": 1_000_000 + 20_000 * i, "pos": [i * 0.1, 0, 0], "orientation": [1, 0, 0, 0],
             "vel": [5.0 + i, 0.5, 0], "accel": [0.2, -0.1, 9.8], "rotation_rate": [0, 0, 0.01 * i]}
            for i in range(10)]
    steer = [{"utime": 1_000_000 + 10_000 * i, "value": 0.1 * i} for i in range(20)]
    _write(tmp_path, "scene-0001", pose, steer)
    can = CanBus(str(tmp_path))
    msgs = can.scene_messages("scene-0001")
    state = CanBus.state(msgs, 1_050_000)  # last pose at or before: utime 1_040_000 (i=2); steer i=5
    np.testing.assert_allclose(state, [7.0, 0.5, 0.2, -0.1, 0.02, np.hypot(7.0, 0.5), 0.5], rtol=1e-6)
    assert CanBus.state(msgs, 999_999) is None  # before the first message
    # the devkit's blacklist (logs without CAN data) is the one case that falls back
    assert can.scene_messages("scene-0161") is None
    # no can_bus/ folder at all: no CAN data anywhere
    assert CanBus(str(tmp_path / "elsewhere")).scene_messages("scene-0001") is None
    # anything else is named
    with pytest.raises(CanBusError, match=r"pose messages of scene-0002 unreadable at .*scene-0002_pose.json"):
        can.scene_messages("scene-0002")
    (tmp_path / "can_bus" / "scene-0003_pose.json").write_text("{broken")
    (tmp_path / "can_bus" / "scene-0003_steeranglefeedback.json").write_text("[]")
    with pytest.raises(CanBusError, match="scene-0003.*JSONDecodeError"):
        can.scene_messages("scene-0003")
    _write(tmp_path, "scene-0004", pose, [])
    with pytest.raises(CanBusError, match="steeranglefeedback messages of scene-0004 are empty"):
        can.scene_messages("scene-0004")
    with pytest.raises(CanBusError, match="not scene-NNNN"):
        can.scene_messages("my-scene")


# ---- the CAN bus files of `odvla synth`, read back through prepare --------------------------------------------


@pytest.fixture(scope="module")
def can_root(tmp_path_factory):
    """3 synthetic scenes x 8 keyframes: scene-0001 and scene-0002 with CAN bus files, scene-0161 without (the
    devkit lists it among the logs without CAN data)."""
    from odvla.platform.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("can") / "nuscenes", scenes=3, keyframes=8, seed=0,
                           image_wh=(64, 36), scene_numbers=[1, 161, 2])


@pytest.fixture(scope="module")
def can_nusc(can_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(can_root), verbose=False)


def _keyframes(nusc, name):
    scene = next(s for s in nusc.scene if s["name"] == name)
    out, tok = [], scene["first_sample_token"]
    while tok:
        s = nusc.get("sample", tok)
        sd = nusc.get("sample_data", s["data"]["LIDAR_TOP"])
        out.append((s, nusc.get("ego_pose", sd["ego_pose_token"]), nusc.get("calibrated_sensor",
                                                                           sd["calibrated_sensor_token"])))
        tok = s["next"]
    return out


def test_synth_can_bus_follows_the_ego_poses(can_root, can_nusc):
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    can = NuScenesCanBus(dataroot=str(can_root))
    assert sorted(p.name for p in (can_root / "can_bus").iterdir() if p.name.startswith("scene-0161")) == []
    with pytest.raises(Exception, match="does not have any CAN bus data"):
        can.get_messages("scene-0161", "pose")
    turning = 0
    for name in ("scene-0001", "scene-0002"):
        for msg in ("ms_imu", "vehicle_monitor", "route", "meta"):
            assert can.get_messages(name, msg, print_warnings=False)
        pose = can.get_messages(name, "pose")
        steer = can.get_messages(name, "steeranglefeedback")
        t = np.array([m["utime"] for m in pose]) * 1e-6
        assert np.all(np.diff(t) > 0) and np.diff(t).mean() == pytest.approx(0.02, abs=1e-6)  # 50 Hz
        by_time = {m["utime"]: m for m in pose}
        for s, ep, _ in _keyframes(can_nusc, name):  # a pose message at each keyframe, at its ego pose
            m = by_time[s["timestamp"]]
            np.testing.assert_allclose(m["pos"][:2], ep["translation"][:2], atol=1e-5)
            assert Quaternion.absolute_distance(Quaternion(m["orientation"]), Quaternion(ep["rotation"])) < 1e-5
        # velocity and yaw rate (vehicle frame) agree with the messages' own positions and headings
        xy = np.array([m["pos"][:2] for m in pose])
        yaw = np.unwrap([Quaternion(m["orientation"]).yaw_pitch_roll[0] for m in pose])
        d = np.gradient(xy, t, axis=0)
        fwd = d[:, 0] * np.cos(yaw) + d[:, 1] * np.sin(yaw)
        side = -d[:, 0] * np.sin(yaw) + d[:, 1] * np.cos(yaw)
        vel = np.array([m["vel"] for m in pose])
        rate = np.array([m["rotation_rate"][2] for m in pose])
        np.testing.assert_allclose(vel[:, 0], fwd, atol=0.15)
        assert np.abs(side).max() < 0.15 and np.abs(vel[:, 1:]).max() == 0
        np.testing.assert_allclose(rate, np.gradient(yaw, t), atol=0.15)
        assert np.allclose([m["accel"][2] for m in pose], 9.81)
        # steering to the side the ego turns to
        st = np.interp(t, np.array([m["utime"] for m in steer]) * 1e-6, [m["value"] for m in steer])
        turn = (np.abs(rate) > 0.1) & (vel[:, 0] > 1.0)
        assert np.all(np.sign(st[turn]) == np.sign(rate[turn]))
        turning += int(turn.sum())
    assert turning > 0  # the scenes include turns


def _vad_yaw(q):
    """VAD's quart_to_rpy(q)[2] (vad_nuscenes_converter.py) applied to a nuScenes [w, x, y, z] list."""
    x, y, z, w = q
    return np.arctan2(2 * (w * z + x * y), 1 - 2 * (z * z + y * y))


def _nearest(utimes, u):
    d = np.abs(np.asarray(utimes) - u)
    return int(np.flatnonzero(d == d.min())[-1])  # a tie goes to the later message (VAD's locate_message)


def test_prepare_reads_can_bus_and_counts_the_fallback(can_root, can_nusc, tmp_path, capsys):
    from nuscenes.can_bus.can_bus_api import NuScenesCanBus

    from odvla.platform.cli.main import main
    from odvla.platform.data.shards import read_manifest, read_split

    out = tmp_path / "shards"
    assert main(["prepare", "--dataroot", str(can_root), "--out", str(out), "--workers", "0"]) == 0
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("ego state:"))
    assert line.startswith("ego state: 2 scene(s) from the CAN bus, 1 fell back to ego poses")
    assert line.endswith(": scene-0161")
    assert read_manifest(out)["ego_state_source"] == {"scene-0001": "can_bus", "scene-0002": "can_bus",
                                                      "scene-0161": "ego_pose"}
    import pyarrow as pa

    rows = {r["sample_token"]: r for r in pa.concat_tables([read_split(out, "train"), read_split(out, "val")])
            .to_pylist()}
    can = NuScenesCanBus(dataroot=str(can_root))
    steered = 0
    for name in ("scene-0001", "scene-0002", "scene-0161"):
        kf = _keyframes(can_nusc, name)
        pos = np.array([ep["translation"] for _, ep, _ in kf])
        yaw = np.array([_vad_yaw(ep["rotation"]) for _, ep, _ in kf])
        for k, (s, ep, cs) in enumerate(kf):
            r = rows[s["token"]]
            a, b = (k - 1, k) if k else (0, 1)
            v = np.linalg.norm(pos[b, :2] - pos[a, :2]) / 0.5
            vx, vy = v * np.cos(yaw[k] + np.pi / 2), v * np.sin(yaw[k] + np.pi / 2)
            w = (yaw[b] - yaw[a]) / 0.5
            if name == "scene-0161":  # no CAN data: ego poses for ego_state, VAD's fallbacks for vad_ego
                assert r["ego_state"][6] == 0.0
                lid = [Quaternion(e["rotation"]).rotate(c["translation"]) + np.array(e["translation"])
                       for _, e, c in kf]
                nxt = lid[k + 1] - lid[k] if k + 1 < len(kf) else np.zeros(3)
                prv = lid[k] - lid[k - 1] if k else nxt
                d = Quaternion(cs["rotation"]).inverse.rotate(Quaternion(ep["rotation"]).inverse.rotate(prv + nxt))
                want = [vx, vy, 0.0, 0.0, w, np.hypot(d[0], d[1]), 0.0]
            else:
                pose = can.get_messages(name, "pose")
                steer = can.get_messages(name, "steeranglefeedback")
                last = [m for m in pose if m["utime"] <= s["timestamp"]][-1]
                st_last = [m for m in steer if m["utime"] <= s["timestamp"]][-1]
                np.testing.assert_allclose(r["ego_state"], np.float32(
                    [*last["vel"][:2], *last["accel"][:2], last["rotation_rate"][2], np.hypot(*last["vel"][:2]),
                     st_last["value"]]), rtol=1e-6)
                after = next((m for m in pose if m["utime"] > s["timestamp"]), pose[-1])
                v0 = pose[_nearest([m["utime"] for m in pose], s["timestamp"])]["vel"][0]
                steering = steer[_nearest([m["utime"] for m in steer], s["timestamp"])]["value"]
                want = [vx, vy, after["accel"][0], after["accel"][1], w, v0, 2 * steering / 2.588]
                steered += abs(steering) > 0.05
            np.testing.assert_allclose(r["vad_ego"], np.float32(want), atol=1e-5, err_msg=f"{name} keyframe {k}")
    assert steered > 0


def test_released_prompt_reads_vad_ego_from_the_shards(can_root, tmp_path):
    """Shard rows -> rows_from_table -> collate carry vad_ego, and the released planning turn prints it."""
    import torch

    from odvla.model.prompt_released import build_released_planning_turn, planning_turn_for_row, vad_ego_from_state
    from odvla.platform.config import load_config
    from odvla.platform.data.collate import collate, rows_from_table
    from odvla.platform.data.rows import RowSpec
    from odvla.platform.data.prepare import prepare
    from odvla.platform.data.shards import read_split

    prepare(can_root, "v1.0-mini", tmp_path / "sh", rows_per_shard=64, num_workers=0, progress=False)
    table = read_split(tmp_path / "sh", "train")
    cfg = load_config(model="tiny", overrides=[f"data.shards={tmp_path / 'sh'}"])
    batch = collate(rows_from_table(table, can_root, RowSpec.from_config(cfg.data, cfg.model.vision)))
    assert batch["vad_ego"].shape == (table.num_rows, 7) and batch["vad_ego"].dtype == torch.float32
    shard_vad = np.array(table.column("vad_ego").to_pylist(), dtype=np.float32)
    np.testing.assert_array_equal(batch["vad_ego"].numpy(), shard_vad)
    to_np = lambda x: x.detach().double().numpy() if torch.is_tensor(x) else np.asarray(x)  # noqa: E731
    b = int(np.argmax(np.abs(shard_vad[:, 6])))  # a row that steers
    text_cfg = SimpleNamespace(ego_token=False)  # the released layout has no <EGO> placeholder
    turn = planning_turn_for_row(batch, b, text_cfg, to_np)
    v = shard_vad[b].astype(np.float64)
    assert f"- Heading Speed: ({v[5] * 0.5:.2f}) - Steering: ({v[6]:.2f})" in turn
    assert turn == build_released_planning_turn(v, int(batch["command"][b]), to_np(batch["past_traj"][b]),
                                                to_np(batch["past_mask"][b]), to_np(batch["future_traj"][b]),
                                                to_np(batch["future_mask"][b]))
    # a batch without vad_ego (a serve request) derives it from ego_state
    without = {k: v for k, v in batch.items() if k != "vad_ego"}
    assert planning_turn_for_row(without, b, text_cfg, to_np) == build_released_planning_turn(
        vad_ego_from_state(to_np(batch["ego_state"][b])), int(batch["command"][b]), to_np(batch["past_traj"][b]),
        to_np(batch["past_mask"][b]), to_np(batch["future_traj"][b]), to_np(batch["future_mask"][b]))


def test_vad_yaw_is_the_roll_and_ties_go_to_the_later_message():
    """VAD's quart_to_rpy unpacks nuScenes' [w, x, y, z] as (x, y, z, w): its 'yaw' of a pose turned 1 rad about
    z and rolled 0.02 rad is the roll, 0.02, not the heading. locate_message: a tie picks the later message."""
    from odvla.platform.data.records import nearest_message, vad_yaw

    q = Quaternion(axis=[0, 0, 1], angle=1.0) * Quaternion(axis=[1, 0, 0], angle=0.02)  # heading, then roll
    assert vad_yaw(list(q.elements)) == pytest.approx(0.02, abs=1e-9)
    assert vad_yaw(list(Quaternion(axis=[0, 0, 1], angle=2.5).elements)) == 0.0
    assert _vad_yaw(list(q.elements)) == pytest.approx(0.02, abs=1e-9)  # the test's own re-statement agrees
    assert [nearest_message([0, 10, 20], u) for u in (-5, 4, 5, 6, 15, 99)] == [0, 0, 1, 1, 2, 2]
