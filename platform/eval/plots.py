"""Pictures of a prediction: a BEV plot (map polylines, GT boxes, GT and predicted trajectories, ego box) and the
front camera with both trajectories projected onto the ground plane. PNG files, matplotlib's Agg backend.

Inputs are shard rows (``platform/data/shard_schema.py``; a dict of one row) and waypoints [6, 2] in the nuScenes
ego frame (x forward, y left, metres). BEV axes: right of the ego to the right, forward up.
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np

from odvla.model.constants import CAMERAS, MAP_CLASSES
from odvla.platform.eval.occupancy import EGO_FORWARD_SHIFT, EGO_LENGTH, EGO_WIDTH, box_corners

MAP_COLOURS = {"divider": "#f0a030", "boundary": "#505050", "crossing": "#4080d0"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _bev(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ego (x forward, y left) -> plot (right, forward)."""
    xy = np.asarray(xy, dtype=float).reshape(-1, 2)
    return -xy[:, 1], xy[:, 0]


def bev_plot(row: Mapping, pred: np.ndarray | None, out_path: str | Path, extent: float = 40.0,
             title: str | None = None) -> Path:
    """Draw the BEV picture of one sample and save it as PNG. Returns the path."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    pts = np.asarray(row.get("map_points") or [], float).reshape(-1, 2)
    lengths = list(row.get("map_lengths") or [])
    classes = list(row.get("map_class") or [])
    start = 0
    for n, c in zip(lengths, classes):
        name = MAP_CLASSES[c] if 0 <= c < len(MAP_CLASSES) else "other"
        ax.plot(*_bev(pts[start:start + n]), color=MAP_COLOURS.get(name, "#999999"), lw=1.2)
        start += n
    agents = np.asarray(row.get("agent_boxes") or [], float).reshape(-1, 9)
    if len(agents):
        corners = box_corners(agents[:, [0, 1, 3, 4, 6]])
        for cs in corners:
            x, y = _bev(np.vstack([cs, cs[:1]]))
            ax.plot(x, y, color="#2a9d8f", lw=1.0)
    ego = box_corners(np.array([[EGO_FORWARD_SHIFT, 0.0, EGO_WIDTH, EGO_LENGTH, 0.0]]))[0]
    ax.fill(*_bev(ego), color="#264653", alpha=0.8, label="ego")
    gt = np.asarray(row["future_traj"], float).reshape(-1, 2)
    mask = np.asarray(row.get("future_mask") or np.ones(len(gt)), float).reshape(-1) > 0.5
    ax.plot(*_bev(np.vstack([[0, 0], gt[mask]])), "-o", color="#2a7f2a", ms=3, label="ground truth")
    if pred is not None and np.isfinite(pred).all():
        ax.plot(*_bev(np.vstack([[0, 0], np.asarray(pred, float).reshape(-1, 2)])), "-o", color="#d62828", ms=3,
                label="prediction")
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent / 2, extent * 1.5)
    ax.set_aspect("equal")
    ax.set_xlabel("right (m)")
    ax.set_ylabel("forward (m)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(title or str(row.get("sample_token", ""))[:16], fontsize=9)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def project_to_image(points_ego: np.ndarray, sensor2ego: np.ndarray, intrinsics: np.ndarray) -> tuple[np.ndarray,
                                                                                                      np.ndarray]:
    """Ground points (ego frame, z = 0) -> pixels [P, 2] and a mask of points in front of the camera [P]."""
    p = np.asarray(points_ego, float).reshape(-1, 2)
    homo = np.concatenate([p, np.zeros((len(p), 1)), np.ones((len(p), 1))], 1)  # [P,4]
    cam = (np.linalg.inv(np.asarray(sensor2ego, float).reshape(4, 4)) @ homo.T).T[:, :3]
    front = cam[:, 2] > 0.5
    uvw = (np.asarray(intrinsics, float).reshape(3, 3) @ cam.T).T
    uv = uvw[:, :2] / np.clip(uvw[:, 2:3], 1e-6, None)
    return uv, front


def camera_plot(row: Mapping, pred: np.ndarray | None, dataroot: str | Path, out_path: str | Path,
                camera: str = "CAM_FRONT") -> Path:
    """The camera image (full size, from the dataroot) with GT and predicted trajectories drawn on the ground."""
    from PIL import Image

    plt = _plt()
    k = CAMERAS.index(camera)
    path = Path(dataroot) / row["cam_paths"][k]
    try:
        img = np.asarray(Image.open(path).convert("RGB"))
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"sample {row.get('sample_token')}: cannot read {camera} image {path}: {e}") from e
    s2e = np.asarray(row["cam_sensor2ego"], float).reshape(-1, 4, 4)[k]
    K = np.asarray(row["cam_intrinsics"], float).reshape(-1, 3, 3)[k]
    scale = max(1.0, 800 / img.shape[1])  # small (synthetic / resized) images are drawn at >= 800 px wide
    fig, ax = plt.subplots(figsize=(img.shape[1] * scale / 100, img.shape[0] * scale / 100), dpi=100)
    ax.imshow(img)
    gt = np.asarray(row["future_traj"], float).reshape(-1, 2)
    for traj, colour, label in ((gt, "#2a7f2a", "ground truth"), (pred, "#d62828", "prediction")):
        if traj is None or not np.isfinite(traj).all():
            continue
        dense = _densify(np.vstack([[EGO_LENGTH / 2, 0.0], np.asarray(traj, float).reshape(-1, 2)]))
        uv, front = project_to_image(dense, s2e, K)
        ax.plot(uv[front, 0], uv[front, 1], color=colour, lw=2, label=label)
    ax.set_xlim(0, img.shape[1])
    ax.set_ylim(img.shape[0], 0)
    ax.axis("off")
    ax.legend(loc="upper right", fontsize=8)
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", pad_inches=0)
    plt.close(fig)
    return out


def _densify(traj: np.ndarray, per_segment: int = 10) -> np.ndarray:
    a, b = traj[:-1], traj[1:]
    s = np.linspace(0, 1, per_segment, endpoint=False)[None, :, None]
    return np.concatenate([(a[:, None] + (b - a)[:, None] * s).reshape(-1, 2), traj[-1:]], 0)
