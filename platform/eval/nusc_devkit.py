"""Perception scored by the nuScenes devkit's own evaluators: ``DetectionEval`` (mAP, NDS) and ``TrackingEval``
(AMOTA, AMOTP, IDS; motmetrics underneath), on the split the model was evaluated on.

The evaluators are called as they are (``nuscenes/eval/detection/evaluate.py``, ``nuscenes/eval/tracking/
evaluate.py``, devkit 1.2.0) with the published configs ``detection_cvpr_2019`` and ``tracking_nips_2019``; only
``evaluate()`` runs (``main()`` would also render PDF curves). The split is the devkit's custom split
(``nuscenes.utils.splits.get_scenes_of_custom_split``, a ``<version>/splits.json`` beside the tables): the scenes of
the shards' split, so a synthetic dataroot (whose split is its own ``odvla_split.json``) and a real one, whole or
prepared in part, are scored alike on exactly the samples the model saw. The dataroot itself is never written: the
evaluators read a view of it (``view_dataroot``: a folder whose ``<version>/`` links every table of the dataroot and
holds ``splits.json``).

Classes absent from the split's annotations keep the devkit's handling, reported as it comes: in detection their AP
is 0 and their TP errors 1 (both count in mAP and NDS); in tracking their AMOTA / AMOTP are NaN and left out of the
means (``TrackingMetrics.compute_metric`` uses ``nanmean``). ``perception/det_classes_with_gt`` and
``perception/trk_classes_with_gt`` say how many classes keep annotated boxes after the devkit's range and point
filters (the classes the means really rest on; the summaries list them).

Bad input: a results file the devkit's box classes reject is a ValueError with the devkit's message, the file and
the sample token; a split without annotations is a ValueError naming the split and the dataroot.
"""
from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

log = logging.getLogger(__name__)

DETECTION_CONFIG = "detection_cvpr_2019"
TRACKING_CONFIG = "tracking_nips_2019"
CUSTOM_SPLIT = "odvla_{split}"
"""Name of the custom split the evaluators read (``val`` is a predefined devkit name, so it cannot be reused)."""


def view_dataroot(dataroot: str | Path, version: str, split: str, scene_names: list[str], folder: Path) -> Path:
    """A folder the devkit reads as the dataroot: ``folder/<version>/`` links each table JSON of
    ``dataroot/<version>`` and holds ``splits.json`` = {CUSTOM_SPLIT: scene_names}; the other entries of
    ``dataroot`` (maps, samples) are linked too. Returns ``folder``."""
    src = Path(dataroot).resolve()
    tables = src / version
    if not tables.is_dir():
        raise FileNotFoundError(f"perception: no nuScenes tables at {tables} (dataroot {src}, version {version})")
    folder.mkdir(parents=True, exist_ok=True)
    for entry in src.iterdir():
        if entry.name != version and not (folder / entry.name).exists():
            os.symlink(entry, folder / entry.name)
    (folder / version).mkdir(exist_ok=True)
    for f in tables.glob("*.json"):
        if f.name != "splits.json" and not (folder / version / f.name).exists():
            os.symlink(f, folder / version / f.name)
    (folder / version / "splits.json").write_text(json.dumps({CUSTOM_SPLIT.format(split=split): list(scene_names)}))
    return folder


def check_results(path: str | Path, box_cls, sample_tokens: list[str]) -> None:
    """What the devkit's loader asserts, but naming where: every box of the results file ``path`` goes through
    ``box_cls.deserialize`` (the devkit's own checks: class names, score type, NaN); the file holds ``meta`` and
    ``results``, and every sample of ``sample_tokens``. Raises ValueError with the devkit's message, the file and
    the sample token."""
    data = json.loads(Path(path).read_text())
    for key in ("meta", "results"):
        if key not in data:
            raise ValueError(f"{path}: no field {key!r} (the devkit's submission format holds 'meta' and 'results')")
    if not isinstance(data["results"], dict):
        raise ValueError(f"{path}: 'results' must map sample tokens to lists of boxes")
    missing = [t for t in sample_tokens if t not in data["results"]]
    if missing:
        raise ValueError(f"{path}: {len(missing)} sample(s) of the split have no entry in 'results' (the devkit "
                         f"needs every sample, [] for none), first {missing[0]!r}")
    for tok, boxes in data["results"].items():
        for i, box in enumerate(boxes):
            try:
                parsed = box_cls.deserialize(box)
            except (AssertionError, KeyError, TypeError, ValueError) as e:
                msg = str(e) or type(e).__name__
                raise ValueError(f"{path}: sample {tok!r}, box {i}: the nuScenes devkit rejects it: {msg}") from e
            if parsed.sample_token != tok:
                raise ValueError(f"{path}: sample {tok!r}, box {i}: its sample_token is {parsed.sample_token!r}")


def annotated_sample_count(nusc, sample_tokens: list[str]) -> int:
    """How many of ``sample_tokens`` carry at least one annotation."""
    return sum(1 for t in sample_tokens if nusc.get("sample", t)["anns"])


def _split_tokens(nusc, scene_names: list[str]) -> list[str]:
    from nuscenes.eval.common.loaders import get_samples_of_scenes

    return get_samples_of_scenes(scene_names, nusc)


def configs():
    """The published configs (``DETECTION_CONFIG``, ``TRACKING_CONFIG``). Building the tracking config also sets
    the devkit's ``TRACKING_NAMES``, which ``TrackingBox`` checks names against."""
    from nuscenes.eval.common.config import config_factory

    return config_factory(DETECTION_CONFIG), config_factory(TRACKING_CONFIG)


def score_detection(nusc, result_path: Path, split_name: str, out_dir: Path) -> dict:
    """``DetectionEval(...).evaluate()`` with ``detection_cvpr_2019``; writes ``metrics_summary.json`` beside the
    results (the devkit's ``DetectionMetrics.serialize``). Returns the serialized metrics."""
    from nuscenes.eval.detection.evaluate import DetectionEval

    ev = DetectionEval(nusc, configs()[0], str(result_path), split_name, str(out_dir), verbose=False)
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    summary["classes_with_gt"] = sorted({b.detection_name for b in ev.gt_boxes.all})  # after the devkit's filters
    (out_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def score_tracking(view: Path, version: str, result_path: Path, split_name: str, out_dir: Path) -> dict:
    """``TrackingEval(...).evaluate()`` with ``tracking_nips_2019``; writes ``metrics_summary.json``."""
    from nuscenes.eval.tracking.evaluate import TrackingEval

    ev = TrackingEval(configs()[1], str(result_path), split_name, str(out_dir), version,
                      str(view), verbose=False)
    metrics, _ = ev.evaluate()
    summary = metrics.serialize()
    summary["classes_with_gt"] = sorted({b.tracking_name for scene in ev.tracks_gt.values() for boxes in
                                         scene.values() for b in boxes})
    (out_dir / "metrics_summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def _f(v) -> float:
    return float("nan") if v is None else float(v)


def figures(det: Optional[dict], trk: Optional[dict], prefix: str = "perception/") -> dict:
    """The reported figures from the devkit's summaries: ``mAP``, ``NDS``, ``mATE`` ... ``mAAE`` (detection;
    metres, m/s, rad, 1 - IoU, 1 - accuracy), ``AMOTA``, ``AMOTP`` (m), ``IDS``, ``recall``, ``MOTA``, ``FP``,
    ``FN``, ``TP`` (tracking), per-class ``AP/<class>`` and ``AMOTA/<class>``."""
    out = {}
    if det is not None:
        out[f"{prefix}mAP"] = _f(det["mean_ap"])
        out[f"{prefix}NDS"] = _f(det["nd_score"])
        for k, name in (("trans_err", "mATE"), ("scale_err", "mASE"), ("orient_err", "mAOE"), ("vel_err", "mAVE"),
                        ("attr_err", "mAAE")):
            out[f"{prefix}{name}"] = _f(det["tp_errors"][k])
        for cls, ap in det["mean_dist_aps"].items():
            out[f"{prefix}AP/{cls}"] = _f(ap)
    if trk is not None:
        for k, name in (("amota", "AMOTA"), ("amotp", "AMOTP"), ("ids", "IDS"), ("recall", "recall"),
                        ("mota", "MOTA"), ("tp", "TP"), ("fp", "FP"), ("fn", "FN"), ("frag", "FRAG")):
            out[f"{prefix}{name}"] = _f(trk[k])
        for cls, v in trk["label_metrics"]["amota"].items():
            out[f"{prefix}AMOTA/{cls}"] = _f(v)
    return out


def score_submissions(dataroot: str | Path, version: str, split: str, scene_tokens: list[str], detection: dict,
                      tracking: dict, out_dir: Path, prefix: str = "perception/") -> dict:
    """Write ``out_dir/detection/results_nusc.json`` and ``out_dir/tracking/results_nusc.json`` (the submissions of
    ``nusc_submission.submissions``), each with the devkit's ``metrics_summary.json`` beside it, and score them with
    the devkit on the scenes ``scene_tokens`` of ``dataroot`` (the shards' ``split``). Returns the figures
    (``figures``) plus the class counts and ``{prefix}seconds``. The tables are loaded twice (here, and by
    ``TrackingEval`` itself)."""
    import time

    from nuscenes import NuScenes
    from nuscenes.eval.detection.data_classes import DetectionBox
    from nuscenes.eval.tracking.data_classes import TrackingBox

    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    scene_file = Path(dataroot) / version / "scene.json"
    if not scene_file.is_file():
        raise FileNotFoundError(f"perception: no nuScenes scene table {scene_file} (dataroot {dataroot}, version "
                                f"{version})")
    name_of = {r["token"]: r["name"] for r in json.loads(scene_file.read_text())}
    missing = [t for t in dict.fromkeys(scene_tokens) if t not in name_of]
    if missing:
        raise ValueError(f"perception: scene {missing[0]!r} of the {split!r} split is not in {scene_file}; the "
                         "shards were prepared from another dataroot")
    names = [name_of[t] for t in dict.fromkeys(scene_tokens)]
    split_name = CUSTOM_SPLIT.format(split=split)
    configs()  # sets the devkit's TRACKING_NAMES before any TrackingBox is built
    # the view links the whole dataroot: a scratch folder, never inside out_dir (which MLflow uploads)
    with tempfile.TemporaryDirectory(prefix="odvla-nusc-view-") as tmp:
        view = view_dataroot(dataroot, version, split, names, Path(tmp))
        nusc = NuScenes(version=version, dataroot=str(view), verbose=False)
        tokens = _split_tokens(nusc, names)
        if annotated_sample_count(nusc, tokens) == 0:
            raise ValueError(f"perception: the {split!r} split of {dataroot} ({version}, {len(tokens)} samples) has "
                             "no annotations; the devkit's evaluators need annotated samples")
        paths = {}
        for task, sub, cls in (("detection", detection, DetectionBox), ("tracking", tracking, TrackingBox)):
            (out_dir / task).mkdir(parents=True, exist_ok=True)
            paths[task] = out_dir / task / "results_nusc.json"
            paths[task].write_text(json.dumps(sub))
            check_results(paths[task], cls, tokens)
        det = score_detection(nusc, paths["detection"], split_name, out_dir / "detection")
        trk = None
        if any(tracking["results"].get(t) for t in tokens):
            trk = score_tracking(view, version, paths["tracking"], split_name, out_dir / "tracking")
        else:  # the devkit's box filter cannot tell the class field of an empty submission
            log.warning("perception: no live track in any %s sample; the tracking figures are not computed", split)
    out = figures(det, trk, prefix)
    out[f"{prefix}det_classes_with_gt"] = float(len(det["classes_with_gt"]))
    out[f"{prefix}trk_classes_with_gt"] = float(len(trk["classes_with_gt"])) if trk is not None else float("nan")
    out[f"{prefix}samples"] = float(len(tokens))
    out[f"{prefix}tracks"] = float(sum(len(v) for v in tracking["results"].values()))
    out[f"{prefix}seconds"] = time.perf_counter() - t0
    return {k: (float(v) if np.isscalar(v) else v) for k, v in out.items()}


TRUTH_COLUMNS = ("sample_token", "scene_token", "ego2global")
"""Shard columns the submissions read: the keyframe's scene and ego pose [16] (LIDAR_TOP ego2global, row-major)."""


def tracks_from_columns(cols: dict) -> dict:
    """Prediction columns (``predict.TRACK_COLUMNS`` and ``sample_token``) -> per sample token
    ``(ids [Q], boxes [Q*9], scores [Q], labels [Q])``, what ``nusc_submission.submissions`` reads."""
    return {t: (i, b, s, lab) for t, i, b, s, lab in zip(
        list(cols["sample_token"]), cols["track_ids"], cols["track_boxes"], cols["track_scores"],
        cols["track_labels"])}


def devkit_figures(data, split: str, tracks: dict, out_dir: str | Path, prefix: str = "perception/") -> dict:
    """The perception figures of one evaluation: ``tracks`` (``tracks_from_columns``) for every keyframe of
    ``split`` of ``data.shards`` (``DataConfig``) as the devkit's submissions under ``out_dir``, scored on the
    dataroot the shards were prepared from (``data.dataroot`` or the manifest's) with the manifest's version."""
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.shards import read_manifest, read_split
    from odvla.platform.eval.nusc_submission import submissions

    truth = read_split(data.shards, split, columns=list(TRUTH_COLUMNS)).to_pylist()
    if not truth:
        raise ValueError(f"perception: split {split!r} of {data.shards} has no keyframes")
    version = str(read_manifest(data.shards)["version"])
    det, trk = submissions(truth, tracks)
    return score_submissions(resolve_dataroot(data), version, split, [str(r["scene_token"]) for r in truth], det,
                             trk, Path(out_dir), prefix)
