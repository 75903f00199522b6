"""Synthetic nuScenes: the real devkit loads it, it is deterministic, boxes are drawn where calibration says."""
from __future__ import annotations

import json

import numpy as np
import pytest

from odvla.model.constants import CAMERAS


@pytest.fixture(scope="module")
def nusc(synth_root):
    from nuscenes.nuscenes import NuScenes

    return NuScenes(version="v1.0-mini", dataroot=str(synth_root), verbose=False)


def test_devkit_loads_tables_and_map(synth_root, nusc):
    from nuscenes.map_expansion.map_api import NuScenesMap

    assert len(nusc.scene) == 4 and len(nusc.sample) == 80
    for s in nusc.sample:
        assert set(s["data"]) == set(CAMERAS) | {"LIDAR_TOP"}
        assert s["anns"], "every keyframe has annotated agents"
    nmap = NuScenesMap(dataroot=str(synth_root), map_name=nusc.log[0]["location"])
    for layer in ("road_divider", "lane_divider", "ped_crossing", "road_segment", "lane", "drivable_area"):
        assert len(getattr(nmap, layer)) > 0, layer
    # the ego drives on the road: every keyframe ego pose lies on a road segment of the written map
    for s in nusc.sample[::7]:
        pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
        assert nmap.record_on_point(pose["translation"][0], pose["translation"][1], "road_segment") != ""
    # the devkit reads the lidar files and projects annotations
    pc_path, boxes, _ = nusc.get_sample_data(nusc.sample[5]["data"]["LIDAR_TOP"])
    from nuscenes.utils.data_classes import LidarPointCloud

    assert LidarPointCloud.from_file(pc_path).points.shape[0] == 4 and boxes


def test_annotation_chains_and_instances(nusc):
    for inst in nusc.instance:
        tok, n = inst["first_annotation_token"], 0
        prev_ts = -1
        while tok:
            ann = nusc.get("sample_annotation", tok)
            ts = nusc.get("sample", ann["sample_token"])["timestamp"]
            assert ts > prev_ts and ann["instance_token"] == inst["token"]
            prev_ts, last, tok, n = ts, tok, ann["next"], n + 1
        assert n == inst["nbr_annotations"] and last == inst["last_annotation_token"]
    cats = {nusc.get("category", i["category_token"])["name"] for i in nusc.instance}
    assert {"vehicle.car", "human.pedestrian.adult"} <= cats
    assert {a["visibility_token"] for a in nusc.sample_annotation} <= {"1", "2", "3", "4"}


def test_agents_move_plausibly(nusc):
    speeds = {}
    for ann in nusc.sample_annotation:
        v = nusc.box_velocity(ann["token"])
        if not np.isnan(v[0]):
            speeds.setdefault(ann["category_name"], []).append(float(np.hypot(v[0], v[1])))
    assert max(speeds["human.pedestrian.adult"]) < 2.5
    assert max(max(s) for s in speeds.values()) < 17.0
    assert max(speeds["vehicle.car"]) > 2.0  # some cars drive


def test_split_recorded(synth_root, nusc):
    split = json.loads((synth_root / "odvla_split.json").read_text())
    assert split["val"] == ["scene-0004"] and len(split["train"]) == 3
    assert sorted(split["train"] + split["val"]) == sorted(s["name"] for s in nusc.scene)


def test_deterministic_per_seed(tmp_path):
    from odvla.platform.data.synth import write_synthetic

    a = write_synthetic(tmp_path / "a", scenes=1, keyframes=3, seed=5, image_wh=(96, 54))
    b = write_synthetic(tmp_path / "b", scenes=1, keyframes=3, seed=5, image_wh=(96, 54))
    c = write_synthetic(tmp_path / "c", scenes=1, keyframes=3, seed=6, image_wh=(96, 54))
    for t in ("sample_annotation", "ego_pose", "sample_data"):
        assert (a / "v1.0-mini" / f"{t}.json").read_bytes() == (b / "v1.0-mini" / f"{t}.json").read_bytes()
    assert (a / "v1.0-mini" / "ego_pose.json").read_bytes() != (c / "v1.0-mini" / "ego_pose.json").read_bytes()
    ja = sorted((a / "samples" / "CAM_FRONT").glob("*.jpg"))
    jb = sorted((b / "samples" / "CAM_FRONT").glob("*.jpg"))
    assert [p.read_bytes() for p in ja] == [p.read_bytes() for p in jb]
    assert not (tmp_path / "a.tmp").exists()


def _tree_bytes(root) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


PARALLEL_CHECK = """
import json, os, sys
from pathlib import Path
from odvla.platform.data import synth
synth.PARALLEL_MIN_IMAGES = 12
drawers = []
render_all = synth._render_all
synth._render_all = lambda *a: drawers.append(sorted(render_all(*a))) or set(drawers[-1])
out = Path(sys.argv[1])
for name, workers in (("one", 1), ("many", 2)):
    synth.write_synthetic(out / name, scenes=2, keyframes=3, seed=3, image_wh=(96, 54), workers=workers)
print(json.dumps({"pid": os.getpid(), "drawers": drawers}))
"""


def test_parallel_drawing_writes_the_same_dataroot(tmp_path):
    """Camera images drawn by a pool of forked processes: every file byte for byte as drawn in one process, and the
    pool really drew them (more images than PARALLEL_MIN_IMAGES, drawn by processes other than the caller). Run in a
    fresh interpreter: this test process may already run Ray, where drawing stays in-process."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", PARALLEL_CHECK, str(tmp_path)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    one_drawers, many_drawers = report["drawers"]
    assert one_drawers == [report["pid"]] and report["pid"] not in many_drawers and many_drawers, report
    a, b = _tree_bytes(tmp_path / "one"), _tree_bytes(tmp_path / "many")
    assert len([k for k in a if k.endswith(".jpg")]) == 2 * 3 * len(CAMERAS)
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)


@pytest.mark.integration
def test_drawing_stays_in_process_where_ray_runs(tmp_path, ray_session, monkeypatch):
    """With Ray running in this process (its threads are not fork-safe), the images are drawn here, not forked."""
    import os

    from odvla.platform.data import synth

    monkeypatch.setattr(synth, "PARALLEL_MIN_IMAGES", 12)
    drawers = []
    render_all = synth._render_all
    monkeypatch.setattr(synth, "_render_all", lambda *a: drawers.append(render_all(*a)) or drawers[-1])
    root = synth.write_synthetic(tmp_path / "r", scenes=2, keyframes=3, seed=3, image_wh=(96, 54), workers=2)
    assert drawers == [{os.getpid()}]
    assert len(list((root / "samples" / "CAM_FRONT").glob("*.jpg"))) == 6


def test_boxes_rendered_at_projected_places(synth_root, nusc):
    """The nearest fully visible box (devkit projection) covers pixels that differ from the empty background."""
    from PIL import Image

    from nuscenes.utils.geometry_utils import BoxVisibility, view_points

    from odvla.platform.world.render import Renderer

    checked = 0
    for s in nusc.sample[::3]:
        for cam in CAMERAS:
            path, boxes, K = nusc.get_sample_data(s["data"][cam], box_vis_level=BoxVisibility.ALL)
            if not boxes:
                continue
            box = min(boxes, key=lambda b: b.center[2])
            img = np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)
            bg = Renderer(img.shape[1], img.shape[0], [("boundary", np.zeros((2, 2)))]).background.astype(np.int16)
            u, v = view_points(box.center[:, None], K, normalize=True)[:2, 0]
            u, v = int(round(u)), int(round(v))
            patch = np.abs(img[v - 1:v + 2, u - 1:u + 2] - bg[v - 1:v + 2, u - 1:u + 2]).mean()
            assert patch > 20, (s["token"], cam, patch)
            checked += 1
    assert checked >= 10
