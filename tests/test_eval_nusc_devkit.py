"""Perception scored by the nuScenes devkit (``platform/eval/nusc_submission.py``, ``platform/eval/nusc_devkit.py``):
the submission's frame, the devkit's figures on hand-built tracks of the synthetic val split, and bad input."""
from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from odvla.model.constants import DETECTION_CLASSES
from odvla.platform.eval.nusc_submission import TRACKING_CLASSES, attribute, boxes_to_global, submissions


def test_boxes_move_to_the_global_frame_with_the_ego_pose():
    # ego at (10, 20, 0) heading +90 deg (its x axis is global +y)
    pose = np.array([[0.0, -1, 0, 10], [1, 0, 0, 20], [0, 0, 1, 0], [0, 0, 0, 1]])
    box = [1.0, 0.0, 0.5, 2.0, 4.0, 1.5, 0.0, 2.0, 0.0]  # 1 m ahead, heading as the ego, 2 m/s forward
    (g,) = boxes_to_global(np.array([box]), pose)
    np.testing.assert_allclose(g["translation"], [10.0, 21.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(g["velocity"], [0.0, 2.0], atol=1e-12)
    assert g["size"] == [2.0, 4.0, 1.5]
    h = math.sqrt(0.5)  # yaw 90 deg about z: (cos 45, 0, 0, sin 45)
    np.testing.assert_allclose(np.abs(g["rotation"]), [h, 0.0, 0.0, h], atol=1e-9)


def test_attributes_follow_the_speed_rule():
    assert attribute("car", 1.0) == "vehicle.moving" and attribute("car", 0.1) == "vehicle.parked"
    assert attribute("bus", 0.0) == "vehicle.stopped" and attribute("bicycle", 0.3) == "cycle.with_rider"
    assert attribute("pedestrian", 0.0) == "pedestrian.standing"
    assert attribute("pedestrian", 1.0) == "pedestrian.moving" and attribute("barrier", 5.0) == ""


@pytest.fixture(scope="module")
def val_truth(shards_dir):
    from odvla.platform.data.shards import read_manifest, read_split

    cols = ["sample_token", "scene_token", "frame_index", "ego2global", "agent_boxes", "agent_class",
            "agent_instance"]
    rows = sorted(read_split(shards_dir, "val", columns=cols).to_pylist(),
                  key=lambda r: (r["scene_token"], r["frame_index"]))
    m = read_manifest(shards_dir)
    return rows, m["dataroot"], m["version"]


def _gt_tracks(rows, ids_of=None) -> dict:
    """The annotated agents as predictions (score 1): ids from ``ids_of(row, instance ids)``, default one id per
    instance through the scene (a tracker that never loses an agent)."""
    ids: dict = {}
    out = {}
    for r in rows:
        b = np.asarray(r["agent_boxes"], np.float64).reshape(-1, 9)
        inst = np.array([ids.setdefault(i, len(ids)) for i in r["agent_instance"]], np.int64)
        out[r["sample_token"]] = (inst if ids_of is None else ids_of(r, inst), b, np.ones(len(b)),
                                  np.asarray(r["agent_class"], np.int64))
    return out


def _score(rows, root, version, tracks, out):
    from odvla.platform.eval.nusc_devkit import score_submissions

    det, trk = submissions(rows, tracks)
    return score_submissions(root, version, "val", [r["scene_token"] for r in rows], det, trk, out)


def test_the_annotations_as_predictions_score_perfectly_where_the_val_split_has_them(val_truth, tmp_path):
    rows, root, version = val_truth
    m = _score(rows, root, version, _gt_tracks(rows), tmp_path)
    det = json.loads((tmp_path / "detection" / "metrics_summary.json").read_text())
    trk = json.loads((tmp_path / "tracking" / "metrics_summary.json").read_text())
    present, trk_present = det["classes_with_gt"], trk["classes_with_gt"]
    assert present and trk_present and set(trk_present) <= set(present) <= set(DETECTION_CLASSES)
    # AP of a class: 1 with every annotation found at score 1 and no false positive, 0 without annotations
    for cls in DETECTION_CLASSES:
        assert m[f"perception/AP/{cls}"] == pytest.approx(1.0 if cls in present else 0.0), cls
    assert m["perception/mAP"] == pytest.approx(len(present) / 10)
    assert m["perception/det_classes_with_gt"] == len(present)
    # tracking: classes with annotations are perfect; the others are NaN and left out of the mean
    for cls in TRACKING_CLASSES:
        v = m[f"perception/AMOTA/{cls}"]
        assert (v == pytest.approx(1.0)) if cls in trk_present else math.isnan(v), cls
    assert m["perception/AMOTA"] == pytest.approx(1.0) and m["perception/IDS"] == 0.0
    assert m["perception/AMOTP"] == pytest.approx(0.0, abs=1e-3) and m["perception/recall"] == pytest.approx(1.0)
    sub = json.loads((tmp_path / "tracking" / "results_nusc.json").read_text())
    assert set(sub) == {"meta", "results"} and set(sub["results"]) == {r["sample_token"] for r in rows}


def test_a_tracker_with_state_makes_fewer_id_switches_than_ids_that_restart_every_keyframe(val_truth, tmp_path):
    """The ordering the demo shows (temporal state cuts ID switches), on a scene where the tracker is known to
    work: the annotations themselves. Two agents of one class swap their ids on one keyframe and swap back on
    the next: 2 + 2 switches (CLEAR MOT); ids restarting in a new order every keyframe switch far more often."""
    from nuscenes.eval.common.config import config_factory

    rows, root, version = val_truth
    # two agents of one tracking class, both inside the devkit's range for it, more than 2 m apart, on the
    # keyframes k-1, k and k+1: swap their ids on k only
    rng_of = config_factory("tracking_nips_2019").class_range
    frames = {r["frame_index"]: r for r in rows}

    def agents(f: int) -> dict:
        r = frames[f]
        b = np.asarray(r["agent_boxes"], np.float64).reshape(-1, 9)
        return {i: (DETECTION_CLASSES[c], b[j, :2]) for j, (i, c) in enumerate(zip(r["agent_instance"],
                                                                                   r["agent_class"]))
                if c >= 0 and DETECTION_CLASSES[c] in rng_of and np.hypot(*b[j, :2]) < rng_of[DETECTION_CLASSES[c]]}

    pair = None
    for k in sorted(frames)[1:-1]:
        near = [agents(f) for f in (k - 1, k, k + 1)]
        common = sorted(set(near[0]) & set(near[1]) & set(near[2]))
        pair = next(((k, a, b) for a in common for b in common if a < b and near[1][a][0] == near[1][b][0]
                     and all(np.linalg.norm(n[a][1] - n[b][1]) > 4.0 for n in near)), None)
        if pair:
            break
    assert pair is not None, "the synthetic val scene has no two agents of one class on three keyframes"
    k, a, b = pair
    kept = _gt_tracks(rows)
    swapped = _gt_tracks(rows)
    r = frames[k]
    ids = swapped[r["sample_token"]][0].copy()
    ia, ib = r["agent_instance"].index(a), r["agent_instance"].index(b)
    ids[ia], ids[ib] = ids[ib], ids[ia]
    swapped[r["sample_token"]] = (ids,) + swapped[r["sample_token"]][1:]
    rng = np.random.default_rng(0)
    restart = _gt_tracks(rows, lambda r, inst: rng.permutation(len(inst)).astype(np.int64))
    figs = {name: _score(rows, root, version, t, tmp_path / name)
            for name, t in (("kept", kept), ("swapped", swapped), ("restart", restart))}
    assert figs["kept"]["perception/IDS"] == 0.0
    assert figs["swapped"]["perception/IDS"] == 4.0
    assert figs["restart"]["perception/IDS"] > figs["swapped"]["perception/IDS"]
    assert figs["restart"]["perception/AMOTA"] < figs["kept"]["perception/AMOTA"]


def test_a_results_file_the_devkit_rejects_names_the_sample(val_truth, tmp_path):
    from nuscenes.eval.detection.data_classes import DetectionBox

    from odvla.platform.eval.nusc_devkit import check_results, configs

    rows, _, _ = val_truth
    configs()
    det, _ = submissions(rows, _gt_tracks(rows))
    tokens = [r["sample_token"] for r in rows]
    tok = next(t for t in tokens if det["results"][t])
    det["results"][tok][0]["detection_name"] = "spaceship"
    path = tmp_path / "results_nusc.json"
    path.write_text(json.dumps(det))
    with pytest.raises(ValueError, match=f"sample '{tok}', box 0: the nuScenes devkit rejects it: "
                                         "Error: Unknown detection_name spaceship"):
        check_results(path, DetectionBox, tokens)
    del det["results"][tok]
    path.write_text(json.dumps(det))
    with pytest.raises(ValueError, match=f"first '{tok}'"):
        check_results(path, DetectionBox, tokens)


def test_a_split_without_annotations_is_named(val_truth, tmp_path):
    rows, root, version = val_truth
    bare = tmp_path / "bare"
    shutil.copytree(f"{root}/{version}", bare / version)
    (bare / "maps").symlink_to(f"{root}/maps")  # the devkit opens the map masks when it loads
    (bare / version / "sample_annotation.json").write_text("[]")
    with pytest.raises(ValueError, match=r"the 'val' split of .*bare \(v1.0-mini, 20 samples\) has no annotations"):
        _score(rows, str(bare), version, _gt_tracks(rows), tmp_path / "out")
