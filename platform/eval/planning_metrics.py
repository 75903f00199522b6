"""Open-loop planning metrics: L2 displacement and collision rate in the published protocols, side by side.

Three protocols are computed from the same predictions (``PROTOCOLS``; a new protocol is one ``Protocol`` entry
there); each metric key is ``<protocol>/<name>``:
``L2_1s, L2_2s, L2_3s, L2_avg`` (metres) and ``col_1s, col_2s, col_3s, col_avg`` (percent), plus ``n`` (samples
scored) and ``gt_col`` (percent of sample-steps where the logged trajectory itself collides, excluded from ``col``).
Each protocol reproduces its reference code's per-step collision decisions on the same inputs, quirks included
(``tests/test_eval_parity.py`` compares them with a re-statement of each reference on randomized cases):

* ``uniad`` — UniAD (``planning_metrics.py`` + ``occflow_label.py``, OpenDriveLab/UniAD, config
  ``stage2_e2e/base_e2e.py``): the per-step value at steps 2, 4, 6 (1, 2, 3 s); ``avg`` = mean of those three.
  Occupancy (``occupancy='future_annotations'``): every annotated box of the future keyframe t+k of the vehicle
  classes (car, bus, construction_vehicle, bicycle, motorcycle, truck, trailer), visibility-1 boxes *kept* (the
  released config sets ``filter_invisible=False``), ``uniad`` raster. L2 is masked by future validity
  (``(diff**2 * mask)`` inside the sqrt, summed over all samples and divided by their number).
* ``stp3`` — ST-P3 / VAD (``VAD/planner/metric_stp3.py``, ``VAD.py compute_planner_metric_stp3``): the mean over all
  steps up to the horizon (steps 1-2, 1-4, 1-6); ``avg`` = mean of those three. Occupancy
  (``occupancy='current_agents'``): only agents annotated in the *current* keyframe, with lidar or radar points
  (``valid_flag``), centre inside VAD's range (|x| < 15 m lateral, |y| < 30 m forward, LiDAR frame), of the ten
  detection classes, drawn at their annotated future pose where the instance has one (current size), vehicles and
  pedestrians; ``vad`` raster (ego one cell further forward, ``occupancy.py``). Only samples whose whole 3 s future
  is valid are scored (``fut_valid_flag``); L2 is the plain mean over steps.
* ``odvla`` — OpenDriveVLA's published table (``drivevla/eval_share/evaluation.py`` with ``only_vehicle=True``, its
  "STP-3 evaluation" print, e.g. 0.5B: 0.35 m / 0.09 %): ST-P3 averaging on UniAD's vehicle-only occupancy, over all
  val samples with masked L2 (UniAD's accumulation), ``odvla`` raster indexing (the released script's flipped
  occupancy and negated x: the ego box one cell further right, ``occupancy.py``).

Shared: the planning frame is the keyframe's LiDAR frame (UniAD's ``sdc_planning`` and VAD's ``ego_fut_trajs`` are
the LIDAR_TOP sensor's future positions there; ``planning_frame.py`` moves the shard's ego-frame values into it);
trajectories and boxes reach this module as (forward, left) metres in that frame. A step's collision is counted only
where the ground-truth trajectory's own box does not collide at that step (``m2 = ~gt_box_coll``); the rate divides
by the number of scored samples. Options (``Protocol`` fields, no reference uses them): ``yaw_aligned`` ego box and
``collision='any'`` — a sample counts at horizon h when it collides at any step up to h (OmniDrive).

Predictions that are NaN (the model's output did not parse) are not scored; the caller reports how many.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Sequence

import numpy as np

from odvla.model.constants import DETECTION_CLASSES, FUTURE_STEPS
from odvla.platform.eval import occupancy as occ

VEHICLE_CLASSES = ("car", "bus", "construction_vehicle", "bicycle", "motorcycle", "truck", "trailer")
"""UniAD's vehicle occupancy classes (``occflow_label.py`` ``vehicle_classes``); VAD's 'vehicle' categories that
survive its ten-class name filter are the same seven."""
PEDESTRIAN_CLASSES = ("pedestrian",)
"""VAD adds the 'human' categories (those that map to the detection class pedestrian)."""
MIN_VISIBILITY = 2
"""nuScenes visibility tokens: 1 = 0-40 %, 2 = 40-60 %, 3 = 60-80 %, 4 = 80-100 %. Only the option
``drop_low_visibility`` uses it: UniAD's released config keeps level 1 (``filter_invisible=False``)."""
HORIZON_STEPS = (2, 4, 6)
"""1 s, 2 s, 3 s at 0.5 s per step (nuScenes keyframes at 2 Hz)."""


# The parts a ``Protocol`` names by string, each a small strategy: a new variant of one is one entry here.
def _value_at(l2: np.ndarray, col: np.ndarray, steps: int, cumulative: bool) -> tuple[float, float]:
    """UniAD: the per-step value at the horizon step (``steps``, 1-based)."""
    return l2[steps - 1], col[steps - 1]


def _mean_up_to(l2: np.ndarray, col: np.ndarray, steps: int, cumulative: bool) -> tuple[float, float]:
    """ST-P3: the mean over the steps up to the horizon; a ``cumulative`` collision rate (``collision='any'``)
    already counts every step up to the horizon, so it is read at the horizon step."""
    return l2[:steps].mean(), col[steps - 1] if cumulative else col[:steps].mean()


HORIZON_REDUCTIONS = {"at": _value_at, "mean": _mean_up_to}
"""``Protocol.reduce`` -> ``(l2 [6], col [6], steps, cumulative) -> (L2, col)`` at one horizon."""
SAMPLE_RULES = {
    "all": lambda gt_mask: np.ones(len(gt_mask), dtype=bool),  # every sample, masked L2 (UniAD)
    "full_future": lambda gt_mask: (gt_mask > 0.5).all(1),  # only fully valid futures (VAD's fut_valid_flag)
}
"""``Protocol.samples`` -> ``gt_mask [N, 6] -> bool [N]``, the samples the protocol scores (parsed ones among them)."""
COLLISION_MODES = {
    "step": lambda hit: hit,  # a collision at each step
    "any": lambda hit: np.maximum.accumulate(hit, axis=1),  # any collision up to the step (OmniDrive)
}
"""``Protocol.collision`` -> ``hit [N, 6] bool -> [N, 6] bool``, the counted collisions per step."""
OCCUPANCY_BOXES = {
    "future_annotations": lambda fb: fb,  # every annotated box of the future keyframes (UniAD)
    "current_agents": lambda fb: fb.get("agents"),  # current agents at their future poses (VAD)
}
"""``Protocol.occupancy`` -> the box set of a ``future_boxes_from_row`` dict the occupancy is drawn from."""
OCCUPANCY_SOURCES = tuple(OCCUPANCY_BOXES)


def _one_of(options) -> str:
    """``'a' or 'b'``: the names of a registry, for an error message."""
    return " or ".join(repr(k) for k in options)


@dataclass(frozen=True)
class Protocol:
    """How one published table computes L2 and collision (see the module docstring).

    ``family``: the published column family its numbers sit in (``uniad``: value at the horizon; ``stp3``: mean up
    to it); the results table groups by it, so a protocol cannot be left out. ``frame`` and ``occupancy_text`` say
    in words what the table states for it, ``label`` what it computes (the results table's legend). The string
    fields name strategies of the registries above (``HORIZON_REDUCTIONS``, ``SAMPLE_RULES``, ``OCCUPANCY_BOXES``,
    ``occupancy.RASTER_SPECS``, ``COLLISION_MODES``). A new protocol is one entry in ``PROTOCOLS``.
    """

    name: str
    family: str  # 'uniad' | 'stp3'
    reduce: str = "at"  # HORIZON_REDUCTIONS: 'at' value at the horizon step (UniAD) | 'mean' mean up to it (ST-P3)
    classes: tuple = VEHICLE_CLASSES
    drop_low_visibility: bool = False
    samples: str = "all"  # SAMPLE_RULES: 'all' every sample, masked L2 (UniAD) | 'full_future' full futures (VAD)
    occupancy: str = "future_annotations"  # OCCUPANCY_BOXES
    raster: str = "uniad"  # occupancy.RASTER_SPECS
    yaw_aligned: bool = False
    collision: str = "step"  # COLLISION_MODES: 'step' at each step | 'any' any collision up to the horizon
    label: str = ""
    frame: str = "keyframe LiDAR frame, LIDAR_TOP sensor path"
    occupancy_text: str = ""


PROTOCOLS = {
    "uniad": Protocol("uniad", "uniad", "at", VEHICLE_CLASSES, False, "all", "future_annotations", "uniad",
                      label="UniAD: value at 1/2/3 s, masked L2 over all samples",
                      occupancy_text="future keyframes' annotations, vehicles, all visibilities, UniAD raster"),
    "stp3": Protocol("stp3", "stp3", "mean", VEHICLE_CLASSES + PEDESTRIAN_CLASSES, False, "full_future",
                     "current_agents", "vad",
                     label="ST-P3/VAD: mean up to 1/2/3 s, full-future samples only",
                     occupancy_text="current agents (points > 0, |x|<15 m, |y|<30 m) at their future poses, "
                                    "vehicles + pedestrians, VAD raster (ego row ceil)"),
    "odvla": Protocol("odvla", "stp3", "mean", VEHICLE_CLASSES, False, "all", "future_annotations", "odvla",
                      label="OpenDriveVLA table: ST-P3 averaging, masked L2 over all samples",
                      occupancy_text="UniAD's vehicle occupancy, released script's indexing (ego column ceil)"),
}
DEFAULT_PROTOCOLS = tuple(PROTOCOLS.values())
FAMILIES = ("stp3", "uniad")
"""Published column families, in table order."""

_CLASS_INDEX = {c: i for i, c in enumerate(DETECTION_CLASSES)}


def _class_ids(classes: Iterable[str]) -> np.ndarray:
    return np.array([_CLASS_INDEX[c] for c in classes], dtype=np.int64)


def _box_set(boxes, step, cls, vis=None, token="?", what="future_boxes") -> dict:
    out = {"boxes": np.asarray(boxes, dtype=np.float64).reshape(-1, 5),
           "step": np.asarray(step, dtype=np.int64).reshape(-1),
           "cls": np.asarray(cls, dtype=np.int64).reshape(-1)}
    m = len(out["boxes"])
    out["vis"] = np.full(m, 4, np.int64) if vis is None else np.asarray(vis, dtype=np.int64).reshape(-1)
    if not (len(out["step"]) == len(out["cls"]) == len(out["vis"]) == m):
        raise ValueError(f"sample {token}: {what} has {m} boxes but its step/class/visibility lists have "
                         f"{len(out['step'])}/{len(out['cls'])}/{len(out['vis'])}")
    if m and (out["step"].min() < 0 or out["step"].max() >= FUTURE_STEPS):
        raise ValueError(f"sample {token}: {what} step outside 0..{FUTURE_STEPS - 1}")
    return out


def future_boxes_from_row(row: Mapping) -> dict:
    """The collision inputs of one sample as arrays, in the frame the values are given in.

    ``row``: a shard row or a dict with its keys ``future_boxes`` [M*5] (forward, left, w, l, yaw),
    ``future_box_step``/``future_box_class``/``future_box_visibility`` [M], and optionally ``agent_occupancy``:
    {'boxes' [A,5], 'step' [A], 'cls' [A]} (the current agents at their future poses, already filtered by VAD's
    rules; ``planning_frame.planning_inputs`` builds it). Returns {'boxes', 'step', 'cls', 'vis', 'agents': {...}};
    raises ValueError naming the sample when lengths disagree.
    """
    tok = row.get("sample_token", "?")
    out = _box_set(row["future_boxes"], row["future_box_step"], row["future_box_class"],
                   row["future_box_visibility"], tok)
    ag = row.get("agent_occupancy")
    out["agents"] = _box_set(ag["boxes"], ag["step"], ag["cls"], None, tok, "agent_occupancy") if ag is not None \
        else _box_set(np.zeros((0, 5)), [], [], None, tok)
    return out


def _selected(fb: Mapping, p: Protocol) -> tuple[np.ndarray, np.ndarray]:
    src = OCCUPANCY_BOXES[p.occupancy](fb)
    if src is None:  # a dict without VAD's agent source: no agents
        return np.zeros((0, 5)), np.zeros(0, np.int64)
    keep = np.isin(src["cls"], _class_ids(p.classes))
    if p.drop_low_visibility:
        keep &= src["vis"] >= MIN_VISIBILITY
    return src["boxes"][keep], src["step"][keep]


def build_occupancy(future_boxes: Sequence[Mapping], classes: Sequence[str], drop_low_visibility: bool = False,
                    steps: int = FUTURE_STEPS, raster: str = "uniad",
                    occupancy: str = "future_annotations") -> np.ndarray:
    """Per-step occupancy of each sample's boxes of ``classes``: uint8 [N, steps, 200, 200] in ``raster``'s layout."""
    p = Protocol("raster", "uniad", classes=tuple(classes), drop_low_visibility=drop_low_visibility,
                 occupancy=occupancy, raster=raster)
    return protocol_occupancy(future_boxes, p, steps)


def protocol_occupancy(future_boxes: Sequence[Mapping], p: Protocol, steps: int = FUTURE_STEPS) -> np.ndarray:
    """The reference raster of protocol ``p`` for each sample: uint8 [N, steps, 200, 200] (cv2.fillPoly)."""
    if p.occupancy not in OCCUPANCY_SOURCES:
        raise ValueError(f"protocol {p.name}: occupancy must be one of {OCCUPANCY_SOURCES}, not {p.occupancy!r}")
    fb = [b if "boxes" in b else future_boxes_from_row(b) for b in future_boxes]
    grid = occ.occupancy_grids(len(fb), steps)
    sidx, step, boxes = occ.stack_boxes([_selected(b, p) for b in fb])
    occ.rasterize_boxes(grid, sidx, step, boxes, p.raster)
    return grid


def collision_decisions(pred, gt, occupancy: np.ndarray, p: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """Per-step decisions of protocol ``p``: (counted collision of ``pred`` [N,6] bool, gt collision [N,6] bool).

    pred, gt [N, 6, 2] planning frame (forward, left); occupancy from ``protocol_occupancy``. A pred collision is
    counted only where the GT box does not collide (the references' ``m2``).
    """
    gt_hit = occ.ego_collisions(gt, occupancy, p.yaw_aligned, p.raster)
    hit = occ.ego_collisions(pred, occupancy, p.yaw_aligned, p.raster) & ~gt_hit
    return hit, gt_hit


class PlanningMetricAccumulator:
    """Accumulates per-step sums over batches so the whole val set never holds its occupancy at once.

    ``update(pred [B,6,2], gt [B,6,2], gt_mask [B,6], future_boxes: list of B dicts)``; ``compute() -> dict``.
    """

    def __init__(self, protocols: Sequence[Protocol] = DEFAULT_PROTOCOLS):
        self.protocols = tuple(protocols)
        z = lambda: np.zeros(FUTURE_STEPS)  # noqa: E731
        self.l2 = {p.name: z() for p in self.protocols}
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
        grids: dict = {}
        for p in self.protocols:
            if p.samples not in SAMPLE_RULES:
                raise ValueError(f"protocol {p.name}: samples must be {_one_of(SAMPLE_RULES)}, not {p.samples!r}")
            sel = scored & SAMPLE_RULES[p.samples](gt_mask)
            if p.collision not in COLLISION_MODES:
                raise ValueError(f"protocol {p.name}: collision must be {_one_of(COLLISION_MODES)}, "
                                 f"not {p.collision!r}")
            if not sel.any():
                continue
            idx = np.nonzero(sel)[0]
            key = (p.occupancy, tuple(p.classes), p.drop_low_visibility, occ.boxes_layout(p.raster))
            if key not in grids:  # one raster per occupancy definition, shared by the protocols that read it
                grids[key] = protocol_occupancy(fb, p)
            d = (pred[idx] - gt[idx]) ** 2 * gt_mask[idx, :, None]  # UniAD compute_L2: mask inside the sqrt
            self.l2[p.name] += np.sqrt(d.sum(-1)).sum(0)
            hit, gt_hit = collision_decisions(pred[idx], gt[idx], grids[key][idx], p)
            hit = COLLISION_MODES[p.collision](hit)
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
                if p.reduce not in HORIZON_REDUCTIONS:
                    raise ValueError(f"protocol {p.name}: reduce must be {_one_of(HORIZON_REDUCTIONS)}, "
                                     f"not {p.reduce!r}")
                v_l2, v_col = HORIZON_REDUCTIONS[p.reduce](l2, col, steps, p.collision == "any")
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

    pred, gt: [N, 6, 2] planning frame (forward, left), metres, t+0.5 .. t+3.0 s; NaN rows of ``pred`` are skipped
    (counted in ``<protocol>/n``). gt_mask: [N, 6] future validity. future_boxes: N dicts, either
    ``future_boxes_from_row`` output or rows with its keys. Returns {'uniad/L2_1s': m, ..., 'uniad/col_avg': %,
    'stp3/...', 'odvla/...'}.
    """
    pred = np.asarray(pred, dtype=np.float64)
    acc = PlanningMetricAccumulator(protocols)
    for s in range(0, len(pred), chunk):
        acc.update(pred[s:s + chunk], np.asarray(gt)[s:s + chunk], np.asarray(gt_mask)[s:s + chunk],
                   future_boxes[s:s + chunk])
    return acc.compute()
