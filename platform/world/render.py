"""Camera rig and JPEG rendering of the synthetic scenes.

The rig follows the nuScenes layout (six cameras around the roof, 1600x900 intrinsics scaled to the written image
size, LIDAR_TOP rotated -90 deg about z). Camera frame: x right, y down, z forward (OpenCV / nuScenes).

Rendering is a pinhole projection of (a) painted road lines on the ground plane and (b) shaded 3D boxes of every
annotated agent, drawn far-to-near (painter's algorithm) over a sky/ground background, so a vision model sees the
objects and lane geometry where the calibration says they are.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

from odvla.model.constants import CAMERAS

# channel: (translation in ego m, yaw deg, focal length as a fraction of the image width, timestamp offset us)
RIG = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, 1266.4 / 1600, 12_500),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -55.0, 1260.8 / 1600, 20_500),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 55.0, 1272.6 / 1600, 4_500),
    "CAM_BACK": ((0.03, 0.0, 1.57), 180.0, 809.2 / 1600, 37_500),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.56), 110.0, 1256.7 / 1600, 46_000),
    "CAM_BACK_RIGHT": ((1.04, -0.48, 1.56), -110.0, 1259.5 / 1600, 29_000),
}
LIDAR = ((0.94, 0.0, 1.84), -90.0)
assert tuple(RIG) == tuple(sorted(RIG, key=CAMERAS.index))

# camera axes (x right, y down, z forward) expressed in a forward-looking ego frame
_CAM_TO_FWD = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])

COLORS = {
    "vehicle.car": (50, 80, 200),
    "vehicle.truck": (200, 120, 40),
    "vehicle.bus.rigid": (225, 185, 40),
    "vehicle.motorcycle": (170, 40, 170),
    "vehicle.bicycle": (40, 170, 170),
    "human.pedestrian.adult": (220, 45, 45),
    "movable_object.trafficcone": (255, 140, 0),
    "movable_object.barrier": (215, 215, 215),
}
LINE_COLORS = {"road_divider": (230, 200, 40), "lane_divider": (235, 235, 235), "boundary": (160, 160, 150)}
_LIGHT = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
# box corners in the box frame (x along length, y along width, z up), faces as corner quads with outward normals
_CORNERS = np.array([[sx, sy, sz] for sx in (0.5, -0.5) for sy in (0.5, -0.5) for sz in (0.5, -0.5)])
_FACES = np.array([[0, 1, 3, 2], [4, 6, 7, 5], [0, 4, 5, 1], [2, 3, 7, 6], [0, 2, 6, 4], [1, 5, 7, 3]])
_NORMALS = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, 1], [0, 0, -1], [0, 1, 0], [0, -1, 0]], dtype=float)


def rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def camera_sensor2ego(channel: str) -> np.ndarray:
    """4x4 camera -> ego transform of ``channel``."""
    t, yaw, _, _ = RIG[channel]
    T = np.eye(4)
    T[:3, :3] = rot_z(yaw) @ _CAM_TO_FWD
    T[:3, 3] = t
    return T


def lidar_sensor2ego() -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = rot_z(LIDAR[1])
    T[:3, 3] = LIDAR[0]
    return T


def intrinsics(channel: str, width: int, height: int) -> np.ndarray:
    """3x3 pinhole matrix for an image of ``width`` x ``height`` px (nuScenes principal point placement)."""
    f = RIG[channel][2] * width
    return np.array([[f, 0.0, 0.51 * width], [0.0, f, 0.5456 * height], [0.0, 0.0, 1.0]])


class Renderer:
    """Renders one camera image from global-frame geometry. Backgrounds are cached per image size."""

    def __init__(self, width: int, height: int, lines: list[tuple[str, np.ndarray]]):
        self.w, self.h = width, height
        rows = np.arange(height)[:, None, None].astype(np.float32)
        horizon = 0.5456 * height
        sky = np.array([120, 160, 205], np.float32) + (rows / max(horizon, 1)) * np.array([70, 55, 30], np.float32)
        ground = np.array([105, 105, 108], np.float32) - ((rows - horizon) / height) * 30
        bg = np.where(rows < horizon, sky, ground)
        self.background = np.broadcast_to(bg, (height, width, 3)).clip(0, 255).astype(np.uint8).copy()
        pts = np.concatenate([p for _, p in lines])
        self.line_pts = np.concatenate([pts, np.zeros((len(pts), 1))], 1)
        self.line_id = np.concatenate([np.full(len(p), i) for i, (_, p) in enumerate(lines)])
        self.line_kind = [k for k, _ in lines]

    def render(self, cam2global: np.ndarray, K: np.ndarray, boxes: list[tuple[np.ndarray, tuple, float, str]],
               quality: int = 85) -> bytes:
        """JPEG bytes of the view of camera ``cam2global`` (4x4) with intrinsics ``K``.

        ``boxes``: (centre xyz global, wlh, yaw rad, category) of each agent.
        """
        img = Image.fromarray(self.background)
        draw = ImageDraw.Draw(img)
        R, t = cam2global[:3, :3], cam2global[:3, 3]
        # painted lines: near points only, drawn as segments between consecutive visible points
        near = np.linalg.norm(self.line_pts[:, :2] - t[:2], axis=1) < 70.0
        if near.any():
            pc = (self.line_pts[near] - t) @ R
            ids = self.line_id[near]
            ok = pc[:, 2] > 0.5
            uv = (pc @ K.T)[:, :2] / np.maximum(pc[:, 2:3], 1e-6)
            seg = ok[:-1] & ok[1:] & (ids[:-1] == ids[1:])
            for i in np.nonzero(seg)[0]:
                color = LINE_COLORS[self.line_kind[ids[i]]]
                draw.line([tuple(uv[i]), tuple(uv[i + 1])], fill=color, width=2)
        if boxes:
            centres = np.array([b[0] for b in boxes], float)
            depth = (centres - t) @ R[:, 2]
            for bi in np.argsort(-depth):
                centre, wlh, yaw, cat = boxes[bi]
                if depth[bi] < 0.5:
                    continue
                Rb = rot_z(np.rad2deg(yaw))
                scale = np.array([wlh[1], wlh[0], wlh[2]])
                corners = (_CORNERS * scale) @ Rb.T + centre  # [8,3] global
                pc = (corners - t) @ R
                if (pc[:, 2] < 0.3).any():
                    continue
                uv = (pc @ K.T)[:, :2] / pc[:, 2:3]
                if (uv[:, 0].max() < 0 or uv[:, 0].min() > self.w or uv[:, 1].max() < 0
                        or uv[:, 1].min() > self.h):
                    continue
                normals = _NORMALS @ Rb.T
                fc = corners[_FACES].mean(1)
                visible = ((t - fc) * normals).sum(1) > 0
                base = np.array(COLORS.get(cat, (128, 128, 128)), float)
                for f in np.nonzero(visible)[0]:
                    shade = 0.45 + 0.55 * max(0.0, float(normals[f] @ _LIGHT))
                    col = tuple(int(c) for c in np.clip(base * shade, 0, 255))
                    draw.polygon([tuple(p) for p in uv[_FACES[f]]], fill=col, outline=(20, 20, 20))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=quality)
        return buf.getvalue()
