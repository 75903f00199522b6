"""Open-loop planning metrics: L2 displacement and collision rate in the published protocols, side by side.

Three protocols are computed from the same predictions (``PROTOCOLS``); each metric key is ``<protocol>/<name>``:
``L2_1s, L2_2s, L2_3s, L2_avg`` (metres) and ``col_1s, col_2s, col_3s, col_avg`` (percent), plus ``n`` (samples
scored) and ``gt_col`` (percent of sample-steps where the logged trajectory itself collides, excluded from ``col``).

* ``uniad`` — UniAD (``planning_metrics.py``, OpenDriveLab/UniAD): the per-step value at steps 2, 4, 6 (1, 2, 3 s);
  ``avg`` = mean of those three. Occupancy from vehicle classes only (car, bus, construction_vehicle, bicycle,
  motorcycle, truck, trailer: UniAD's occupancy labels), boxes of visibility level 1 (0-40 %) dropped (UniAD's
  ``filter_invisible``). L2 is masked by future validity (``(diff**2 * mask)`` then the sum over all samples is divided
  by the number of samples, UniAD ``compute_L2`` / ``update``).
* ``stp3`` — ST-P3 / VAD (``VAD/planner/metric_stp3.py``): the mean over all steps up to the horizon (steps 1-2,
  1-4, 1-6); ``avg`` = mean of those three. Occupancy from vehicles and pedestrians, no visibility filter; only
  samples whose whole 3 s future is valid are scored (VAD's ``fut_valid_flag``).
* ``odvla`` — OpenDriveVLA's published table (``drivevla/eval_share/evaluation.py`` with ``only_vehicle=True``, its
  "ST-P3 metrics" columns, e.g. 0.5B: 0.35 m / 0.09 %): ST-P3 averaging on UniAD's vehicle-only occupancy, over all
  val samples with masked L2 (UniAD's accumulation).

Shared (UniAD): 200 x 200 grid at 0.5 m, ego box 4.084 x 1.85 m shifted 0.5 m forward, axis-aligned, truncated cell
indices (``occupancy.py``); a step's collision is counted only where the ground-truth trajectory's own box does not
collide at that step (``m2 = ~gt_box_coll``); the rate divides by the number of scored samples.
Options (``Protocol`` fields): ``yaw_aligned`` ego box (VAD / OmniDrive) and ``collision='any'`` — a sample counts
at horizon h when it collides at any step up to h (OmniDrive).

Predictions that are NaN (the model's output did not parse) are not scored; the caller reports how many.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from odvla.model.constants import DETECTION_CLASSES, FUTURE_STEPS
from odvla.platform.eval import occupancy as occ

VEHICLE_CLASSES = ("car", "bus", "construction_vehicle", "bicycle", "motorcycle", "truck", "trailer")
"""UniAD's vehicle occupancy classes (issue: planning GT occupancy from vehicle classes only)."""
PEDESTRIAN_CLASSES = ("pedestrian",)
"""ST-P3 / VAD add the 'human' categories to the occupancy."""
MIN_VISIBILITY = 2
"""nuScenes visibility tokens: 1 = 0-40 %, 2 = 40-60 %, 3 = 60-80 %, 4 = 80-100 %; UniAD drops level 1."""
HORIZON_STEPS = (2, 4, 6)
"""1 s, 2 s, 3 s at 0.5 s per step (nuScenes keyframes at 2 Hz)."""


@dataclass(frozen=True)
class Protocol:
    """How one published table computes L2 and collision (see the module docstring)."""

    name: str
    reduce: str = "at"  # 'at': value at the horizon step (UniAD) | 'mean': mean over steps up to it (ST-P3)
    classes: tuple = VEHICLE_CLASSES
    drop_low_visibility: bool = True
    samples: str = "all"  # 'all': every sample, masked L2 (UniAD) | 'full_future': only fully valid futures (VAD)
    yaw_aligned: bool = False
    collision: str = "step"  # 'step': at each step | 'any': any collision up to the horizon (OmniDrive)
    label: str = ""


PROTOCOLS = {
    "uniad": Protocol("uniad", "at", VEHICLE_CLASSES, True, "all",
                      label="UniAD: value at 1/2/3 s, vehicle occupancy, masked L2 over all samples"),
    "stp3": Protocol("stp3", "mean", VEHICLE_CLASSES + PEDESTRIAN_CLASSES, False, "full_future",
                     label="ST-P3/VAD: mean up to 1/2/3 s, vehicle+pedestrian occupancy, full-future samples"),
    "odvla": Protocol("odvla", "mean", VEHICLE_CLASSES, True, "all",
                      label="OpenDriveVLA table: ST-P3 averaging, vehicle-only occupancy, masked L2 over all samples"),
}
DEFAULT_PROTOCOLS = tuple(PROTOCOLS.values())

_CLASS_INDEX = {c: i for i, c in enumerate(DETECTION_CLASSES)}


def _class_ids(classes: Iterable[str]) -> np.ndarray:
    return np.array([_CLASS_INDEX[c] for c in classes], dtype=np.int64)


def future_boxes_from_row(row: Mapping) -> dict:
    """The collision inputs of one shard row (or a dict with the same keys) as arrays.

    Returns {'boxes' [M,5] x, y, w, l, yaw (ego frame), 'step' [M] 0..5, 'cls' [M], 'vis' [M]}; raises ValueError
    naming the sample when the lengths disagree.
    """
    boxes = np.asarray(row["future_boxes"], dtype=np.float64).reshape(-1, 5)
    out = {
        "boxes": boxes,
        "step": np.asarray(row["future_box_step"], dtype=np.int64).reshape(-1),
        "cls": np.asarray(row["future_box_class"], dtype=np.int64).reshape(-1),
        "vis": np.asarray(row["future_box_visibility"], dtype=np.int64).reshape(-1),
    }
    m = len(boxes)
    if not (len(out["step"]) == len(out["cls"]) == len(out["vis"]) == m):
        raise ValueError(f"sample {row.get('sample_token', '?')}: future_boxes has {m} boxes but "
                         "future_box_step/class/visibility have "
                         f"{len(out['step'])}/{len(out['cls'])}/{len(out['vis'])}")
    if m and (out["step"].min() < 0 or out["step"].max() >= FUTURE_STEPS):
        raise ValueError(f"sample {row.get('sample_token', '?')}: future_box_step outside 0..{FUTURE_STEPS - 1}")
    return out


def build_occupancy(future_boxes: Sequence[Mapping], classes: Sequence[str], drop_low_visibility: bool,
                    steps: int = FUTURE_STEPS) -> np.ndarray:
    """Per-step occupancy of each sample's future boxes of ``classes``: bool [N, steps, 200, 200]."""
    n = len(future_boxes)
    grid = np.zeros((n, steps, occ.GRID_SIZE, occ.GRID_SIZE), dtype=bool)
    if n == 0:
        return grid
    ids = _class_ids(classes)
    parts = [(np.full(len(fb["boxes"]), i), fb) for i, fb in enumerate(future_boxes)]
    sidx = np.concatenate([p[0] for p in parts]).astype(np.int64)
    boxes = np.concatenate([p[1]["boxes"].reshape(-1, 5) for p in parts])
    step = np.concatenate([p[1]["step"] for p in parts]).astype(np.int64)
    cls = np.concatenate([p[1]["cls"] for p in parts]).astype(np.int64)
    vis = np.concatenate([p[1]["vis"] for p in parts]).astype(np.int64)
    keep = np.isin(cls, ids)
    if drop_low_visibility:
        keep &= vis >= MIN_VISIBILITY
    occ.rasterize_boxes(grid, sidx[keep], step[keep], boxes[keep])
    return grid


def pack_boxes(future_boxes: Sequence[Mapping], classes: Sequence[str], drop_low_visibility: bool,
               steps: int = FUTURE_STEPS) -> tuple[np.ndarray, np.ndarray]:
    """Each sample-step's boxes of ``classes`` as rounded pixel corners, padded.

    Returns pix float [N, steps, M, 4, 2] (``occupancy.box_pixel_corners``) and valid bool [N, steps, M], M the
    most boxes any sample-step has. The collision test evaluates the raster predicate at the ego's cells only,
    which is the same as rasterising the occupancy (``build_occupancy``) and reading it there, without the
    200 x 200 grids.
    """
    n = len(future_boxes)
    ids = _class_ids(classes)
    sel = []
    for i, fb in enumerate(future_boxes):
        keep = np.isin(fb["cls"], ids)
        if drop_low_visibility:
            keep &= fb["vis"] >= MIN_VISIBILITY
        sel.append((np.full(int(keep.sum()), i), fb["step"][keep], fb["boxes"].reshape(-1, 5)[keep]))
    sidx = np.concatenate([x[0] for x in sel]).astype(np.int64) if sel else np.zeros(0, np.int64)
    step = np.concatenate([x[1] for x in sel]).astype(np.int64) if sel else np.zeros(0, np.int64)
    boxes = np.concatenate([x[2] for x in sel]) if sel else np.zeros((0, 5))
    group = sidx * steps + step
    counts = np.bincount(group, minlength=n * steps) if len(group) else np.zeros(n * steps, np.int64)
    m = int(counts.max()) if len(counts) else 0
    pix = np.zeros((n * steps, m, 4, 2))
    valid = np.zeros((n * steps, m), dtype=bool)
    if len(group):
        order = np.argsort(group, kind="stable")
        g = group[order]
        first = np.concatenate([[0], np.cumsum(counts)[:-1]])
        slot = np.arange(len(g)) - first[g]
        pix[g, slot] = occ.box_pixel_corners(boxes[order])
        valid[g, slot] = True
    return pix.reshape(n, steps, m, 4, 2), valid.reshape(n, steps, m)


class PlanningMetricAccumulator:
    """Accumulates per-step sums over batches so the whole val set never holds its occupancy at once.

    ``update(pred [B,6,2], gt [B,6,2], gt_mask [B,6], future_boxes: list of B dicts)``; ``compute() -> dict``.
    """

    def __init__(self, protocols: Sequence[Protocol] = DEFAULT_PROTOCOLS):
        self.protocols = tuple(protocols)
        z = lambda: np.zeros(FUTURE_STEPS)  # noqa: E731
        self.l2 = {p.name: z() for p in self.protocols}
        self.l2_count = {p.name: z() for p in self.protocols}
        self.col = {p.name: z() for p in self.protocols}
        self.gt_col = {p.name: z() for p in self.protocols}
        self.n = {p.name: 0 for p in self.protocols}

    def update(self, pred, gt, gt_mask, future_boxes: Sequence[Mapping]) -> None:
        pred = np.asarray(pred, dtype=np.float64)
        gt = np.asarray(gt, dtype=np.float64)
        gt_mask = np.asarray(gt_mask, dtype=np.float64)
        if pred.shape != gt.shape or pred.shape[1:] != (FUTURE_STEPS, 2) or gt_mask.shape != pred.shape[:2]:
            raise ValueError(f"planning metrics: pred {pred.shape}, gt {gt.shape}, gt_mask {gt_mask.shape}; "
                             f"expected [N,{FUTURE_STEPS},2], [N,{FUTURE_STEPS},2], [N,{FUTURE_STEPS}]")
        if len(future_boxes) != len(pred):
            raise ValueError(f"planning metrics: {len(future_boxes)} future-box entries for {len(pred)} predictions")
        fb = [b if "boxes" in b else future_boxes_from_row(b) for b in future_boxes]
        scored = np.isfinite(pred).all(axis=(1, 2))
        gt = np.where(np.isfinite(gt), gt, 0.0)
        packed: dict = {}
        for p in self.protocols:
            sel = scored.copy()
            if p.samples == "full_future":
                sel &= (gt_mask > 0.5).all(1)
            elif p.samples != "all":
                raise ValueError(f"protocol {p.name}: samples must be 'all' or 'full_future', not {p.samples!r}")
            if not sel.any():
                continue
            idx = np.nonzero(sel)[0]
            key = (tuple(p.classes), p.drop_low_visibility)
            if key not in packed:
                packed[key] = pack_boxes(fb, p.classes, p.drop_low_visibility)
            pix, valid = packed[key][0][idx], packed[key][1][idx]
            d = (pred[idx] - gt[idx]) ** 2 * gt_mask[idx, :, None]  # UniAD compute_L2: mask inside the sqrt
            self.l2[p.name] += np.sqrt(d.sum(-1)).sum(0)
            self.l2_count[p.name] += len(idx)
            gt_hit = occ.ego_box_collisions(gt[idx], pix, valid, p.yaw_aligned)
            hit = occ.ego_box_collisions(pred[idx], pix, valid, p.yaw_aligned) & ~gt_hit
            if p.collision == "any":
                hit = np.maximum.accumulate(hit, axis=1)
            elif p.collision != "step":
                raise ValueError(f"protocol {p.name}: collision must be 'step' or 'any', not {p.collision!r}")
            self.col[p.name] += hit.sum(0)
            self.gt_col[p.name] += gt_hit.sum(0)
            self.n[p.name] += len(idx)

    def compute(self) -> dict:
        out: dict = {}
        for p in self.protocols:
            n = self.n[p.name]
            out[f"{p.name}/n"] = float(n)
            l2 = self.l2[p.name] / max(n, 1)
            col = 100.0 * self.col[p.name] / max(n, 1)
            vals_l2, vals_col = [], []
            for h, steps in enumerate(HORIZON_STEPS, start=1):
                if p.reduce == "at":
                    v_l2, v_col = l2[steps - 1], col[steps - 1]
                elif p.reduce == "mean":
                    v_l2 = l2[:steps].mean()
                    v_col = col[steps - 1] if p.collision == "any" else col[:steps].mean()
                else:
                    raise ValueError(f"protocol {p.name}: reduce must be 'at' or 'mean', not {p.reduce!r}")
                if n == 0:
                    v_l2 = v_col = float("nan")
                out[f"{p.name}/L2_{h}s"] = float(v_l2)
                out[f"{p.name}/col_{h}s"] = float(v_col)
                vals_l2.append(v_l2)
                vals_col.append(v_col)
            out[f"{p.name}/L2_avg"] = float(np.mean(vals_l2))
            out[f"{p.name}/col_avg"] = float(np.mean(vals_col))
            out[f"{p.name}/gt_col"] = float(100.0 * self.gt_col[p.name].sum() / max(n * FUTURE_STEPS, 1))
        return out


def compute_planning_metrics(pred, gt, gt_mask, future_boxes: Sequence[Mapping],
                             protocols: Sequence[Protocol] = DEFAULT_PROTOCOLS, chunk: int = 256) -> dict:
    """Planning metrics of ``pred`` against the logged future, every protocol side by side.

    pred, gt: [N, 6, 2] ego frame (x forward, y left), metres, t+0.5 .. t+3.0 s; NaN rows of ``pred`` are skipped
    (counted in ``<protocol>/n``). gt_mask: [N, 6] future validity. future_boxes: N dicts, either
    ``future_boxes_from_row`` output or shard rows (keys future_boxes, future_box_step, future_box_class,
    future_box_visibility). Returns {'uniad/L2_1s': m, ..., 'uniad/col_avg': %, 'stp3/...', 'odvla/...'}.
    """
    pred = np.asarray(pred, dtype=np.float64)
    acc = PlanningMetricAccumulator(protocols)
    for s in range(0, len(pred), chunk):
        acc.update(pred[s:s + chunk], np.asarray(gt)[s:s + chunk], np.asarray(gt_mask)[s:s + chunk],
                   future_boxes[s:s + chunk])
    return acc.compute()
