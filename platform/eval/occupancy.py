"""Per-step BEV occupancy of the ground-truth future boxes and the ego-box collision test, on UniAD's grid.

Every constant below is UniAD's planning metric
(``projects/mmdet3d_plugin/uniad/dense_heads/planning_head_plugin/planning_metrics.py``, OpenDriveLab/UniAD), which
VAD (``VAD/planner/metric_stp3.py``), OmniDrive and OpenDriveVLA's evaluation reuse:

* grid: x and y in [-50, 50] m at 0.5 m -> 200 x 200 cells (``gen_dx_bx([-50, 50, 0.5], ...)``);
  ``bx = -49.75`` (centre of the first cell).
* ego box: 4.084 m long, 1.85 m wide (``self.H = 4.084``, ``self.W = 1.85``), centre shifted 0.5 m forward of the
  trajectory point (``-H/2 + 0.5 .. H/2 + 0.5``), axis-aligned (no yaw), rasterised once at the origin as the cells
  whose index lies inside it (``skimage.draw.polygon`` on ``(pts - bx) / dx``: 8 x 4 = 32 cells), then translated by
  ``waypoint / dx`` and truncated to int (``astype(np.int32)``), clipped to the grid (``np.clip``).
* occupancy: box corners mapped to pixels as ``(corner - bx + dx / 2) / dx`` and rounded, the polygon filled
  (FIERY / UniAD / VAD ``cv2.fillPoly``). Here the filled set is the integer cells inside or on the rounded-corner
  quadrilateral (vectorised); on convex boxes this equals ``fillPoly`` up to its edge rasterisation.

Frames. Inputs are in the nuScenes ego frame of the keyframe (x forward, y left, metres). The grid is indexed like
UniAD's LiDAR-frame grid: row from the forward coordinate, column from the rightward one (``right = -y``), so the
truncation of cell indices matches UniAD's exactly (its trajectories are x right, y forward).
"""
from __future__ import annotations

import numpy as np

GRID_MIN = -50.0  # m, UniAD X_BOUND / Y_BOUND lower edge
GRID_MAX = 50.0  # m
CELL = 0.5  # m per cell (UniAD dx)
GRID_SIZE = int(round((GRID_MAX - GRID_MIN) / CELL))  # 200
CELL_CENTRE0 = GRID_MIN + CELL / 2.0  # -49.75 m, UniAD bx
EGO_LENGTH = 4.084  # m, UniAD self.H (nuScenes Renault Zoe)
EGO_WIDTH = 1.85  # m, UniAD self.W
EGO_FORWARD_SHIFT = 0.5  # m, UniAD's "+ 0.5" on the box's longitudinal corners


def _ego_footprint_cells() -> np.ndarray:
    """Integer (row, col) cells of the ego box placed at the origin, UniAD style. Returns int64 [K, 2] (K = 32)."""
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


def trajectory_yaw(traj: np.ndarray) -> np.ndarray:
    """Heading (rad, counter-clockwise from x) of each waypoint from the displacement to it, ego frame.

    traj [..., T, 2] -> [..., T]. The first step's displacement is from the origin (the ego now); where a step moves
    less than 1 cm the previous heading is kept (0 at the start), so a stopped car keeps its orientation.
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


def ego_cells(traj: np.ndarray, yaw_aligned: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Grid cells (row, col) covered by the ego box at each waypoint: two int64 arrays [B, T, K].

    traj [B, T, 2] ego frame (x forward, y left), m. ``yaw_aligned=False``: UniAD's axis-aligned box (footprint
    translated by the waypoint, indices truncated and clipped; K = 32). ``True``: the box is rotated to the
    trajectory heading (VAD / OmniDrive option), sampled every 0.25 m, and the samples mapped to cells with the
    same truncation and clipping.
    """
    fwd, right = traj[..., 0], -traj[..., 1]
    if not yaw_aligned:
        r = (fwd[..., None] / CELL + EGO_FOOTPRINT[:, 0]).astype(np.int32)  # truncation like astype(int32)
        c = (right[..., None] / CELL + EGO_FOOTPRINT[:, 1]).astype(np.int32)
    else:
        yaw = trajectory_yaw(traj)  # [B,T]
        cos, sin = np.cos(yaw)[..., None], np.sin(yaw)[..., None]
        pf, pl = EGO_BOX_POINTS[:, 0], EGO_BOX_POINTS[:, 1]
        x = traj[..., 0:1] + cos * pf - sin * pl  # ego frame points [B,T,P]
        y = traj[..., 1:2] + sin * pf + cos * pl
        r = ((x - CELL_CENTRE0) / CELL).astype(np.int32)
        c = ((-y - CELL_CENTRE0) / CELL).astype(np.int32)
    return (np.clip(r, 0, GRID_SIZE - 1).astype(np.int64), np.clip(c, 0, GRID_SIZE - 1).astype(np.int64))


def ego_collisions(traj: np.ndarray, occupancy: np.ndarray, yaw_aligned: bool = False) -> np.ndarray:
    """Whether the ego box at each waypoint overlaps an occupied cell of a raster at that step.

    traj [B, T, 2]; occupancy bool [B, T, 200, 200] -> bool [B, T]. (The metrics use ``ego_box_collisions``, the
    same test evaluated on the ego's cells only; this raster form is for pictures and cross-checks.)
    """
    B, T, _ = traj.shape
    r, c = ego_cells(traj, yaw_aligned)
    b = np.arange(B)[:, None, None]
    t = np.arange(T)[None, :, None]
    return occupancy[b, t, r, c].any(-1)


def box_pixel_corners(boxes: np.ndarray) -> np.ndarray:
    """Rounded pixel corners (row, col) of BEV boxes [M, 5] -> float [M, 4, 2] (FIERY/UniAD rasterisation)."""
    corners = box_corners(np.asarray(boxes, dtype=np.float64).reshape(-1, 5))
    pix = np.stack([(corners[..., 0] - GRID_MIN) / CELL, (-corners[..., 1] - GRID_MIN) / CELL], -1)
    return np.round(pix)


def cells_in_boxes(r: np.ndarray, c: np.ndarray, pix: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Whether cells lie in any box: the raster predicate of ``rasterize_boxes`` evaluated at given cells only.

    r, c int [B, T, K]; pix float [B, T, M, 4, 2] rounded pixel corners; valid bool [B, T, M] -> bool [B, T, K].
    """
    out = np.zeros(r.shape, dtype=bool)
    if pix.shape[2] == 0:
        return out
    # cheap pre-filter: only boxes whose pixel bounding box meets the cells' bounding box are tested in detail
    lo, hi = pix.min(-2), pix.max(-2)  # [B,T,M,2]
    near = valid & (lo[..., 0] <= r.max(-1)[..., None]) & (hi[..., 0] >= r.min(-1)[..., None]) \
        & (lo[..., 1] <= c.max(-1)[..., None]) & (hi[..., 1] >= c.min(-1)[..., None])
    b, t, m = np.nonzero(near)
    if len(b) == 0:
        return out
    rr, cc = r[b, t].astype(np.float64), c[b, t].astype(np.float64)  # [P,K]
    p = pix[b, t, m]  # [P,4,2]
    plo, phi = lo[b, t, m][:, None], hi[b, t, m][:, None]  # [P,1,2]
    inside = (rr >= plo[..., 0]) & (rr <= phi[..., 0]) & (cc >= plo[..., 1]) & (cc <= phi[..., 1])
    pos = np.ones(inside.shape, bool)
    neg = np.ones(inside.shape, bool)
    for k in range(4):  # inside or on the (convex, possibly degenerate) quadrilateral: one sign for all edges
        p0, p1 = p[:, None, k], p[:, None, (k + 1) % 4]
        cross = (p1[..., 0] - p0[..., 0]) * (cc - p0[..., 1]) - (p1[..., 1] - p0[..., 1]) * (rr - p0[..., 0])
        pos &= cross >= -1e-9
        neg &= cross <= 1e-9
    inside &= pos | neg
    np.logical_or.at(out, (b, t), inside)
    return out


def ego_box_collisions(traj: np.ndarray, pix: np.ndarray, valid: np.ndarray, yaw_aligned: bool = False) -> np.ndarray:
    """``ego_collisions`` without building the raster: traj [B, T, 2], boxes as ``cells_in_boxes`` -> bool [B, T]."""
    r, c = ego_cells(traj, yaw_aligned)
    return cells_in_boxes(r, c, pix, valid).any(-1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """Corners of BEV boxes. boxes [M, 5] (x, y, w, l, yaw; w across, l along heading; ego frame) -> [M, 4, 2]."""
    x, y, w, l, yaw = (boxes[:, i] for i in range(5))
    lf = np.array([1, -1, -1, 1])[None] * (l[:, None] / 2)  # along heading
    ls = np.array([1, 1, -1, -1])[None] * (w[:, None] / 2)  # across
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    return np.stack([x[:, None] + c * lf - s * ls, y[:, None] + s * lf + c * ls], -1)


def rasterize_boxes(occupancy: np.ndarray, sample_idx: np.ndarray, step: np.ndarray, boxes: np.ndarray) -> None:
    """Fill boxes into ``occupancy`` (bool [B, T, 200, 200]) in place, vectorised over boxes.

    sample_idx [M] (index into B), step [M] (0..T-1), boxes [M, 5] x, y, w, l, yaw in the ego frame.
    """
    if len(boxes) == 0:
        return
    # pixel coords: row from forward (x), column from right (-y); (corner - bx + dx/2) / dx, rounded (FIERY/UniAD)
    pix = box_pixel_corners(boxes)
    lo = pix.min(1)  # [M,2]
    hi = pix.max(1)
    keep = (hi >= 0).all(1) & (lo <= GRID_SIZE - 1).all(1)
    pix, lo, hi, sample_idx, step = pix[keep], lo[keep], hi[keep], sample_idx[keep], step[keep]
    extent = (hi - lo).max(1) + 1  # cells per box side (window)
    sizes = np.array([4, 8, 16, 32, 64, max(128, int(extent.max()) if len(extent) else 128)])
    bucket = np.searchsorted(sizes, extent)  # smallest dense window that holds the box
    for k, size in enumerate(sizes):  # size buckets keep the dense window small for most boxes
        sel = bucket == k
        if sel.any():
            _fill_bucket(occupancy, sample_idx[sel], step[sel], pix[sel], lo[sel], hi[sel], int(size))


def _fill_bucket(occ, sample_idx, step, pix, lo, hi, size):
    off = np.arange(size)
    rr = lo[:, 0, None, None] + off[None, :, None]  # [M,S,1]
    cc = lo[:, 1, None, None] + off[None, None, :]  # [M,1,S]
    rr, cc = np.broadcast_arrays(rr, cc)  # [M,S,S]
    inside = (rr <= hi[:, 0, None, None]) & (cc <= hi[:, 1, None, None])
    p0 = pix  # [M,4,2]
    p1 = np.roll(pix, -1, axis=1)
    sign = []
    for k in range(4):  # edge k: p0[k] -> p1[k]; cross product sign of the cell relative to the edge
        ex = (p1[:, k, 0] - p0[:, k, 0])[:, None, None]
        ey = (p1[:, k, 1] - p0[:, k, 1])[:, None, None]
        sign.append(ex * (cc - p0[:, k, 1, None, None]) - ey * (rr - p0[:, k, 0, None, None]))
    sign = np.stack(sign, 0)
    inside &= (sign >= -1e-9).all(0) | (sign <= 1e-9).all(0)
    inside &= (rr >= 0) & (rr < GRID_SIZE) & (cc >= 0) & (cc < GRID_SIZE)
    m, i, j = np.nonzero(inside)
    occ[sample_idx[m], step[m], rr[m, i, j].astype(np.int64), cc[m, i, j].astype(np.int64)] = True
