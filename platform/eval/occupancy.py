"""Per-step BEV occupancy of ground-truth boxes and the ego-box collision test, as each reference code computes them.

Shared by the references (UniAD ``planning_metrics.py`` + ``occflow_label.py``, VAD ``metric_stp3.py``,
OpenDriveVLA ``drivevla/eval_share/metric.py``):

* grid: 200 x 200 cells of 0.5 m over [-50, 50] m (``gen_dx_bx([-50, 50, 0.5], ...)``), ``bx = -49.75`` m (centre of
  the first cell), ``dx = 0.5`` m.
* ego box: 4.084 m long, 1.85 m wide, centre 0.5 m forward of the trajectory point, axis-aligned (no yaw). It is
  rasterised once at the origin as the cells whose centres lie inside it (``skimage.draw.polygon``: 8 rows along
  the length x 4 columns across = 32 cells, ``EGO_FOOTPRINT``), then moved by ``waypoint / dx`` and truncated with
  ``astype(np.int32)``, then clipped to the grid (``np.clip``: an ego partly outside still tests the border cells).
* boxes: corners mapped to pixels as ``(corner - bx + dx / 2) / dx``, rounded (``np.round``: half to even), and
  filled with ``cv2.fillPoly`` one box at a time. ``fillPoly`` sets the cells inside *and* every cell its 8-connected
  edge lines pass through, so a box covers more cells than its centre-inside set; this module calls ``cv2.fillPoly``
  itself, so the raster is the reference's raster bit for bit (``tests/test_eval_parity.py`` checks the corners,
  orientation and fill against an independent ``cv2.fillPoly`` call).

What differs between them is the raster's orientation and how the ego's cells are indexed (``RASTER_SPECS``, one
``Raster`` each; a new convention is one entry there):

* ``uniad`` (UniAD, and the raster OpenDriveVLA's ``gt/planing_gt_segmentation_val`` holds): row from the forward
  coordinate, column from the rightward one (UniAD's LiDAR frame: x right, y forward; ``fillPoly`` gets (x, y)
  pixel pairs, so the row is y). Ego cells ``r = int(fwd/dx + rr)``, ``c = int(right/dx + cc)``: the footprint's
  position is ``floor`` of the waypoint's cell coordinate.
* ``vad`` (VAD ``metric_stp3.py``): a forward-up raster. Corners go through ``lidar2cv_rot = [[1, 0], [0, -1]]``
  first, so the row is ``(-fwd - bx + dx/2) / dx`` and the column ``(right - bx + dx/2) / dx``. Ego cells
  ``r = int(200 - (fwd/dx + rr))``, ``c = int(right/dx + cc)``. Relative to the boxes this is ``ceil``, not
  ``floor``, of the forward cell coordinate: the ego box sits one cell (0.5 m) further forward than UniAD's unless
  the forward position is a multiple of 0.5 m.
* ``odvla`` (OpenDriveVLA's released ``evaluation.py``/``metric.py``): UniAD's raster with its last axis flipped
  (``torch.flip(occ, [-1])``), and ``evaluate_coll`` negating x while the matching negation in ``update`` is
  commented out. Ego cells in the flipped raster ``r = int(fwd/dx + rr)``, ``c' = clip(int(-right/dx + cc))``, i.e.
  column ``199 - c'`` of UniAD's raster: ``ceil`` of the lateral cell coordinate instead of ``floor``, the ego box
  0.5 m further right unless the lateral position is a multiple of 0.5 m. This reproduces what the released
  script computes, not what it seems to intend.

Coordinates here are in the *planning frame* of the protocol, written as (forward, left) metres (``fwd = x``,
``right = -y``). For UniAD / VAD / OpenDriveVLA that frame is the keyframe's LiDAR frame; the caller moves the
shard's ego-frame values there (``planning_frame.py``). Hand-built cases may pass ego-frame values directly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import cv2
import numpy as np

GRID_MIN = -50.0  # m, UniAD X_BOUND / Y_BOUND lower edge
GRID_MAX = 50.0  # m
CELL = 0.5  # m per cell (UniAD dx)
GRID_SIZE = int(round((GRID_MAX - GRID_MIN) / CELL))  # 200
CELL_CENTRE0 = GRID_MIN + CELL / 2.0  # -49.75 m, UniAD bx
EGO_LENGTH = 4.084  # m, UniAD self.H (nuScenes Renault Zoe)
EGO_WIDTH = 1.85  # m, UniAD self.W
EGO_FORWARD_SHIFT = 0.5  # m, UniAD's "+ 0.5" on the box's longitudinal corners


@dataclass(frozen=True)
class Raster:
    """One reference's raster layout and ego-cell indexing (module docstring), named by ``Protocol.raster``.

    ``boxes_in``: the raster whose layout the boxes are drawn in (``odvla`` reads UniAD's raster, so its occupancy
    is UniAD's, shared between the protocols that read it). ``rows_backward``: box rows count from ``-forward`` (VAD's
    forward-up raster) instead of ``forward``. ``ego_cells``: ``(fwd, right, rr, cc) -> (r, c)``, the ego box's cells
    before clipping to the grid: fwd, right [B, T, 1] metres; rr, cc [K] the footprint's cells at the origin;
    r, c int32 [B, T, K].
    """

    name: str
    boxes_in: str
    rows_backward: bool
    ego_cells: Callable[[np.ndarray, np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def _uniad_ego_cells(fwd, right, rr, cc):
    """``r = int(fwd/dx + rr)``, ``c = int(right/dx + cc)``: floor of the waypoint's cell."""
    return (fwd / CELL + rr).astype(np.int32), (right / CELL + cc).astype(np.int32)


def _vad_ego_cells(fwd, right, rr, cc):
    """``r = int(200 - (fwd/dx + rr))``, ``c = int(right/dx + cc)``: forward ceil relative to the boxes."""
    return (GRID_SIZE - (fwd / CELL + rr)).astype(np.int32), (right / CELL + cc).astype(np.int32)


def _odvla_ego_cells(fwd, right, rr, cc):
    """x negated, raster flipped along its last axis -> column ``199 - c'`` of the uniad raster: lateral ceil."""
    r = (fwd / CELL + rr).astype(np.int32)
    c = (-right / CELL + cc).astype(np.int32)
    return r, (GRID_SIZE - 1) - np.clip(c, 0, GRID_SIZE - 1)


RASTER_SPECS = {r.name: r for r in (
    Raster("uniad", boxes_in="uniad", rows_backward=False, ego_cells=_uniad_ego_cells),
    Raster("vad", boxes_in="vad", rows_backward=True, ego_cells=_vad_ego_cells),
    Raster("odvla", boxes_in="uniad", rows_backward=False, ego_cells=_odvla_ego_cells),
)}
"""Every raster / ego-cell convention; a new one is one entry."""
RASTERS = tuple(RASTER_SPECS)
"""Raster / ego-cell conventions (module docstring). ``odvla`` uses the ``uniad`` raster (``Raster.boxes_in``)."""


def _ego_footprint_cells() -> np.ndarray:
    """(rr, cc) of the ego box at the origin: cells whose centres are inside it (skimage ``polygon``). int64 [32, 2].

    rr indexes the forward coordinate, cc the rightward one, both as ``(coord - bx) / dx`` cell indices.
    """
    lo_f, hi_f = -EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, EGO_LENGTH / 2 + EGO_FORWARD_SHIFT
    lo_r, hi_r = -EGO_WIDTH / 2, EGO_WIDTH / 2
    rows = np.arange(np.ceil((lo_f - CELL_CENTRE0) / CELL), np.floor((hi_f - CELL_CENTRE0) / CELL) + 1)
    cols = np.arange(np.ceil((lo_r - CELL_CENTRE0) / CELL), np.floor((hi_r - CELL_CENTRE0) / CELL) + 1)
    rr, cc = np.meshgrid(rows, cols, indexing="ij")
    return np.stack([rr.ravel(), cc.ravel()], -1).astype(np.int64)


EGO_FOOTPRINT = _ego_footprint_cells()


def _ego_box_points(spacing: float = 0.25) -> np.ndarray:
    """Points covering the ego box in its own frame (forward, left), metres, for the yaw-aligned option. [P, 2]."""
    lo_f, hi_f = -EGO_LENGTH / 2 + EGO_FORWARD_SHIFT, EGO_LENGTH / 2 + EGO_FORWARD_SHIFT
    f = np.linspace(lo_f, hi_f, int(np.ceil((hi_f - lo_f) / spacing)) + 1)
    s = np.linspace(-EGO_WIDTH / 2, EGO_WIDTH / 2, int(np.ceil(EGO_WIDTH / spacing)) + 1)
    ff, ss = np.meshgrid(f, s, indexing="ij")
    return np.stack([ff.ravel(), ss.ravel()], -1)


EGO_BOX_POINTS = _ego_box_points()


def _check_raster(raster: str) -> None:
    if raster not in RASTERS:
        raise ValueError(f"occupancy raster must be one of {RASTERS}, not {raster!r}")


def boxes_layout(raster: str) -> str:
    """The raster whose layout ``raster``'s boxes are drawn in (``Raster.boxes_in``): rasters with the same layout
    share one occupancy grid."""
    _check_raster(raster)
    return RASTER_SPECS[raster].boxes_in


def trajectory_yaw(traj: np.ndarray) -> np.ndarray:
    """Heading (rad, counter-clockwise from forward) of each waypoint from the displacement to it.

    traj [..., T, 2] (forward, left) -> [..., T]. The first step's displacement is from the origin (the ego now);
    where a step moves less than 1 cm the previous heading is kept (0 at the start).
    """
    prev = np.concatenate([np.zeros_like(traj[..., :1, :]), traj[..., :-1, :]], axis=-2)
    d = traj - prev
    yaw = np.arctan2(d[..., 1], d[..., 0])
    moving = np.hypot(d[..., 0], d[..., 1]) > 0.01
    out = np.zeros(traj.shape[:-1])
    for t in range(traj.shape[-2]):  # T = 6: carry the previous heading over stationary steps
        last = out[..., t - 1] if t else np.zeros(traj.shape[:-2])
        out[..., t] = np.where(moving[..., t], yaw[..., t], last)
    return out


def ego_cells(traj: np.ndarray, yaw_aligned: bool = False, raster: str = "uniad") -> tuple[np.ndarray, np.ndarray]:
    """Raster cells (row, col) the ego box covers at each waypoint: two int64 arrays [B, T, K], clipped to the grid.

    traj [B, T, 2] planning frame (forward, left), metres. ``raster`` picks the reference's indexing (module
    docstring; K = 32). ``yaw_aligned=True`` (an option no reference uses; VAD / OmniDrive variants): the box is
    turned to the trajectory heading, sampled every 0.25 m, and the samples mapped to ``uniad`` cells.
    """
    _check_raster(raster)
    traj = np.asarray(traj, dtype=np.float64)
    fwd, right = traj[..., 0], -traj[..., 1]
    rr, cc = EGO_FOOTPRINT[:, 0], EGO_FOOTPRINT[:, 1]
    if yaw_aligned:
        if raster != "uniad":
            raise ValueError("yaw_aligned ego boxes are defined on the 'uniad' raster only")
        yaw = trajectory_yaw(traj)  # [B,T]
        cos, sin = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
        pf, pl = EGO_BOX_POINTS[:, 0], EGO_BOX_POINTS[:, 1]
        x = traj[..., 0:1] + cos * pf - sin * pl  # [B,T,P]
        y = traj[..., 1:2] + sin * pf + cos * pl
        r = ((x - CELL_CENTRE0) / CELL).astype(np.int32)
        c = ((-y - CELL_CENTRE0) / CELL).astype(np.int32)
    else:
        r, c = RASTER_SPECS[raster].ego_cells(fwd[..., None], right[..., None], rr, cc)
    return (np.clip(r, 0, GRID_SIZE - 1).astype(np.int64), np.clip(c, 0, GRID_SIZE - 1).astype(np.int64))


def ego_collisions(traj: np.ndarray, occupancy: np.ndarray, yaw_aligned: bool = False,
                   raster: str = "uniad") -> np.ndarray:
    """Whether the ego box at each waypoint covers an occupied cell of the raster of that step.

    traj [B, T, 2] (forward, left); occupancy [B, T, 200, 200] (any non-zero cell is occupied, like the references'
    ``np.any``) in the layout of ``raster`` (``odvla`` reads a ``uniad`` raster) -> bool [B, T].
    """
    traj = np.asarray(traj, dtype=np.float64)
    B, T, _ = traj.shape
    r, c = ego_cells(traj, yaw_aligned, raster)
    b = np.arange(B)[:, None, None]
    t = np.arange(T)[None, :, None]
    return occupancy[b, t, r, c].astype(bool).any(-1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of BEV boxes. boxes [M, 5] (x, y, w, l, yaw; w across, l along heading) -> [M, 4, 2] (x, y)."""
    x, y, w, l, yaw = (boxes[:, i] for i in range(5))
    lf = np.array([1, -1, -1, 1])[None] * (l[:, None] / 2)  # along heading
    ls = np.array([1, 1, -1, -1])[None] * (w[:, None] / 2)  # across
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    return np.stack([x[:, None] + c * lf - s * ls, y[:, None] + s * lf + c * ls], -1)


def box_pixel_corners(boxes: np.ndarray, raster: str = "uniad") -> np.ndarray:
    """``cv2.fillPoly`` points of BEV boxes [M, 5] (forward, left, w, l, yaw): int32 [M, 4, 2] as (col, row).

    ``uniad``/``odvla``: col from right, row from forward; ``vad``: col from right, row from -forward (module
    docstring). ``(corner - bx + dx / 2) / dx`` then ``np.round`` and ``astype(np.int32)``, as the references.
    """
    _check_raster(raster)
    corners = box_corners(np.asarray(boxes, dtype=np.float64).reshape(-1, 5))
    fwd, right = corners[..., 0], -corners[..., 1]
    row_coord = -fwd if RASTER_SPECS[raster].rows_backward else fwd
    pix = np.stack([(right - CELL_CENTRE0 + CELL / 2.0) / CELL, (row_coord - CELL_CENTRE0 + CELL / 2.0) / CELL], -1)
    return np.round(pix).astype(np.int32)


def fill_boxes(grid: np.ndarray, pix: np.ndarray) -> None:
    """``cv2.fillPoly(grid, [pix[m]], 1)`` for each box, in place. grid uint8 [200, 200] C-contiguous; pix [M,4,2]."""
    for poly in pix:
        cv2.fillPoly(grid, [poly], 1)


def rasterize_boxes(occupancy: np.ndarray, sample_idx: np.ndarray, step: np.ndarray, boxes: np.ndarray,
                    raster: str = "uniad") -> None:
    """Fill boxes into ``occupancy`` (uint8 [B, T, 200, 200], C-contiguous) in place.

    sample_idx [M] (index into B), step [M] (0..T-1), boxes [M, 5] (forward, left, w, l, yaw) planning frame.
    """
    if len(boxes) == 0:
        return
    if occupancy.dtype != np.uint8 or not occupancy.flags.c_contiguous:
        raise ValueError("rasterize_boxes: occupancy must be a C-contiguous uint8 array (cv2.fillPoly draws into it)")
    pix = box_pixel_corners(boxes, boxes_layout(raster))
    order = np.lexsort((step, sample_idx))
    sample_idx, step, pix = np.asarray(sample_idx)[order], np.asarray(step)[order], pix[order]
    keys = sample_idx.astype(np.int64) * occupancy.shape[1] + step
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]])
    ends = np.r_[starts[1:], len(keys)]
    for a, b in zip(starts, ends):
        fill_boxes(occupancy[int(sample_idx[a]), int(step[a])], pix[a:b])


def occupancy_grids(n: int, steps: int) -> np.ndarray:
    """Empty rasters uint8 [n, steps, 200, 200]."""
    return np.zeros((n, steps, GRID_SIZE, GRID_SIZE), dtype=np.uint8)


def stack_boxes(per_sample: Sequence[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[(boxes [M_i,5], step [M_i]), ...] -> (sample_idx [M], step [M], boxes [M,5]) for ``rasterize_boxes``."""
    if not per_sample:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 5))
    sidx = np.concatenate([np.full(len(b), i, np.int64) for i, (b, _) in enumerate(per_sample)])
    step = np.concatenate([np.asarray(s, np.int64).reshape(-1) for _, s in per_sample])
    boxes = np.concatenate([np.asarray(b, np.float64).reshape(-1, 5) for b, _ in per_sample])
    return sidx, step, boxes
