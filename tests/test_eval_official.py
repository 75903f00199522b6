"""``--official-out``: the released OpenDriveVLA evaluation's files from the synthetic val split (no model, no Ray):
every token, the shapes and dtypes the script reads, plain pickles, the constant-velocity fallback counted, a
non-empty folder refused; and the official script's computation (re-stated from ``eval_drivevla.py`` /
``evaluation.py`` / ``metric.py``) run on the exported files gives the project's ``odvla`` numbers."""
from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest

from odvla.model.constants import DETECTION_CLASSES
from odvla.platform.eval.evaluate import _GT_COLUMNS, PlanningTruth, read_split_table, score_trajectories
from odvla.platform.eval.official_export import OfficialOutError, write_official

CAR = DETECTION_CLASSES.index("car")
_ROW_COLS = ["sample_token", "command", "ego_state", "agent_boxes", "agent_class", "agent_visibility", "lidar2ego"]


class _PlainUnpickler(pickle.Unpickler):
    """Loads numpy arrays and builtins only: the export must not need torch or project classes."""

    def find_class(self, module, name):
        if module.split(".")[0] in ("numpy", "builtins", "copyreg", "_codecs"):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not plain numpy / builtins")


def _load(path):
    with open(path, "rb") as f:
        return _PlainUnpickler(f).load()


def _retrieve_traj(text):  # eval_drivevla.py's utils.trajectory_utils.retrieve_traj, the parts our text needs
    pairs = re.findall(r"[\[\(]([-\deE.+]+),\s*([-\deE.+]+)[\]\)]", re.sub(r"\s+", "", text))
    return [(float(x), float(y)) for x, y in pairs]


def _official_scores(out):
    """evaluation.planning_evaluation(only_vehicle=True) + metric.PlanningMetric, re-stated in numpy."""
    import test_eval_parity as R

    preds = json.loads((out / "pred_trajs_dict.json").read_text())
    gt_t, gt_m = _load(out / "gt" / "gt_traj.pkl"), _load(out / "gt" / "gt_traj_mask.pkl")
    seg = _load(out / "gt" / "planing_gt_segmentation_val")
    l2, col, total = np.zeros(6), np.zeros(6), 0
    decisions = {}
    for tok in gt_t:
        occ = np.flip(seg[tok], -1)
        occ = occ[:, 1:] if occ.shape[1] % 2 else occ
        mask = gt_m[tok]
        pred = np.asarray(preds[tok + "_trajectory"], np.float64).reshape(mask.shape)
        gt = gt_t[tok]
        l2 += np.sqrt(((pred - gt) ** 2 * mask).sum(-1)).sum(0)
        neg = np.array([-1.0, 1.0])
        gt_c = R.uniad_single_coll(gt[0] * neg, occ[0])
        hit = R.uniad_single_coll(pred[0] * neg, occ[0]) & ~gt_c
        col += hit
        decisions[tok] = hit
        total += 1
    l2, col = l2 / total, col / total
    return {h: (l2[:2 * h].mean(), 100 * col[:2 * h].mean()) for h in (1, 2, 3)}, decisions


def test_official_export_files(shards_dir, tmp_path):
    val = read_split_table(shards_dir, "val", _GT_COLUMNS)
    truth = PlanningTruth.from_table(val)
    rows = val.select(_ROW_COLS).to_pylist()
    n = len(rows)
    pred = np.asarray(val.column("future_traj").to_pylist(), np.float64).reshape(n, 6, 2)
    pred = pred + np.array([0.3, -0.4])  # offset so that L2 is not zero
    parsed = np.ones(n, bool)
    parsed[[1, 5]] = False  # two answers that did not parse
    out = tmp_path / "official"
    summary = write_official(out, rows, truth, pred, parsed)
    assert summary["samples"] == n and summary["fallback_constant_velocity"] == 2
    assert summary["fallback_tokens"] == [rows[1]["sample_token"], rows[5]["sample_token"]]
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporary files

    tokens = [r["sample_token"] for r in rows]
    lines = [json.loads(x) for x in (out / "outputs.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [f"{t}_trajectory" for t in tokens]
    for x in lines:
        assert re.fullmatch(r"\[(\(-?\d+\.\d\d,-?\d+\.\d\d\),){5}\(-?\d+\.\d\d,-?\d+\.\d\d\)\]", x["answer"][0])
        assert len(_retrieve_traj(x["answer"][0])) == 6 and x["question"]
    preds = json.loads((out / "pred_trajs_dict.json").read_text())
    assert set(preds) == {f"{t}_trajectory" for t in tokens}
    assert all(np.asarray(v).shape == (1, 6, 2) for v in preds.values())
    # the fallback is constant velocity from the ego state, in the text frame (x right, y forward)
    from odvla.platform.eval.baselines import constant_velocity
    from odvla.platform.eval.planning_frame import to_text_frame

    cv = to_text_frame(truth.to_planning(constant_velocity(np.asarray(rows[1]["ego_state"])[None])))[0]
    assert np.allclose(preds[f"{tokens[1]}_trajectory"][0], cv, atol=0.006)

    gt_t, gt_m = _load(out / "gt" / "gt_traj.pkl"), _load(out / "gt" / "gt_traj_mask.pkl")
    seg, vad = _load(out / "gt" / "planing_gt_segmentation_val"), _load(out / "gt" / "vad_gt_seg.pkl")
    for d, shape, dtype in ((gt_t, (1, 6, 2), np.float64), (gt_m, (1, 6, 2), np.float64),
                            (seg, (1, 7, 200, 200), np.uint8), (vad, (1, 6, 200, 200), np.uint8)):
        assert list(d) == tokens
        assert all(type(v) is np.ndarray and v.shape == shape and v.dtype == dtype for v in d.values())
    ends = [t for t, m in gt_m.items() if m.min() == 0]
    assert ends, "the val scene's last keyframes have masked steps"
    t = ends[-1]
    assert (seg[t][0, 1:][gt_m[t][0, :, 0] == 0] == 255).all() and (gt_t[t][gt_m[t] == 0] == 0).all()
    assert sum(int(v[0, 1:].clip(0, 1).sum()) for v in seg.values()) > 0  # vehicles were drawn

    # a non-empty folder is refused unless forced
    with pytest.raises(OfficialOutError, match="not empty"):
        write_official(out, rows, truth, pred, parsed)
    write_official(out, rows, truth, pred, parsed, force=True)


def test_official_script_on_the_export_equals_the_odvla_protocol(shards_dir, tmp_path):
    val = read_split_table(shards_dir, "val", _GT_COLUMNS)
    truth = PlanningTruth.from_table(val)
    rows = val.select(_ROW_COLS).to_pylist()
    n = len(rows)
    rng = np.random.default_rng(0)
    pred = np.asarray(val.column("future_traj").to_pylist(), np.float64).reshape(n, 6, 2)
    pred = pred + rng.normal(0, 1.0, pred.shape)
    # drive half the samples into other vehicles: the ego's waypoint on a future car's centre
    fb = val.select(["future_boxes", "future_box_step", "future_box_class"]).to_pylist()
    for i in range(0, n, 2):
        boxes = np.asarray(fb[i]["future_boxes"]).reshape(-1, 5)
        for k in range(6):
            cars = np.nonzero((np.asarray(fb[i]["future_box_step"]) == k)
                              & (np.asarray(fb[i]["future_box_class"]) == CAR))[0]
            if len(cars):
                pred[i, k] = boxes[cars[0], :2]
    out = tmp_path / "official"
    write_official(out, rows, truth, pred, np.ones(n, bool))
    official, _ = _official_scores(out)
    ours = score_trajectories(pred, truth)
    assert ours["odvla/col_3s"] > 0  # collisions happened
    for h in (1, 2, 3):
        assert official[h][0] == pytest.approx(ours[f"odvla/L2_{h}s"], abs=0.01)  # answers carry 2 decimals
        assert official[h][1] == pytest.approx(ours[f"odvla/col_{h}s"], abs=1e-9)
