"""What the planner sees at a tick: six cameras re-rendered from the simulated pose, ego state, history, command.

The observation carries what a training row (``platform/data/records.py``) or a Serve request
(``serve/schemas.py``) carries, derived from the simulation only:

- ``jpegs``: six JPEGs (``CAMERAS`` order) drawn by the renderer that drew the training data
  (``platform/world/render.py``, quality 85) at ``image_hw`` = (H, W), with the agents within ``ANNOTATION_RANGE``
  m of the ego (the synthetic data draws the agents annotated there). Each camera is rendered from the ego pose at
  its trigger time, as the dataset has one ego pose per camera: the rig's offset after the LiDAR (4.5..46 ms) at
  the current speed and yaw rate. ``intrinsics`` [6, 3, 3] are for ``image_hw`` (``render.intrinsics``),
  ``sensor2ego`` [6, 4, 4] the rig. :meth:`Observation.model_cameras` decodes and resizes the JPEGs to a model's
  input size with the training pipeline's functions (``platform/data/image_ops.py``: ``decode_resize``,
  ``scale_intrinsics``), what ``serve/preprocess.py`` does to a request; rendering at the dataset's image size
  (``odvla synth --image-size``, default 400x225) and resizing gives the model the pixels it was trained on.
- ``ego_state`` [7] (``EGO_STATE_FIELDS``) as the synthetic CAN bus defines it (``platform/data/synth_canbus.py``):
  ``vx`` = speed, ``vy`` = 0 (the rear axle moves along the heading), ``ax`` = the longitudinal acceleration of the
  last physics step, ``ay`` = ``v * yaw_rate``, ``yaw_rate`` = ``v tan(steer) / WHEELBASE``, ``speed``,
  ``steering`` = ``STEERING_RATIO * steer`` (steering-wheel angle, rad).
- ``vad_ego`` [7] (``VAD_EGO_FIELDS``) as ``records.vad_ego_states`` computes it from poses and CAN messages:
  ``(vx, vy) = v * (cos(pi/2), sin(pi/2))`` with VAD's yaw (the roll, 0 for a planar pose), ``v`` the displacement
  over the last 0.5 s / 0.5 s; ``can_ax, can_ay`` = ``ax, ay``; ``yaw_rate`` 0 (VAD differentiates the roll);
  ``v0`` = speed; ``kappa`` = ``2 * steering / 2.588``.
- ``past_traj`` [4, 2] / ``past_mask`` [4]: the ego's positions 2.0, 1.5, 1.0, 0.5 s ago, in the current ego frame
  (x forward, y left; the logged ego before the simulation's start, which is where it was).
- ``command``: from the route ahead, never from a logged future. The point of the lane route
  ``speed * 3 s`` ahead of the ego's projection on it, in the ego frame, read with the rule that labels the
  training data (``records.command_from_future``: ``y > 2 m`` turn left, ``y < -2 m`` turn right, else forward).

An image size or camera set the renderer cannot produce is a ValueError naming it (:func:`check_cameras`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from odvla.model.constants import CAMERAS, COMMANDS, FUTURE_STEPS, PAST_STEPS, STEP_SECONDS
from odvla.platform.data.image_ops import decode_resize, scale_intrinsics
from odvla.platform.data.records import command_from_future
from odvla.platform.data.synth import ANNOTATION_RANGE
from odvla.platform.sim.vehicle import STEERING_RATIO, WHEELBASE
from odvla.platform.world import render

MIN_IMAGE_PX = 16
MAX_IMAGE_HW = (900, 1600)  # the nuScenes cameras the rig's intrinsics come from
ASPECT = 16 / 9
ASPECT_TOLERANCE = 0.05


def check_cameras(image_hw, cameras=CAMERAS) -> tuple[int, int]:
    """(H, W) as ints after checking that the renderer can draw ``cameras`` at ``image_hw``: the six nuScenes
    cameras in ``CAMERAS`` order, ``MIN_IMAGE_PX`` <= H, W and at most 1600x900, and the rig's 16:9 aspect ratio
    within 5 % (its intrinsics are the nuScenes 1600x900 ones scaled to the width). ValueError otherwise."""
    cams = tuple(cameras)
    unknown = [c for c in cams if c not in render.RIG]
    if unknown:
        raise ValueError(f"cameras {unknown} are not in the renderer's rig {list(render.RIG)}")
    if cams != tuple(CAMERAS):
        raise ValueError(f"cameras {list(cams)}: the renderer draws the six cameras in the order {list(CAMERAS)}")
    try:
        h, w = (int(v) for v in image_hw)
    except (TypeError, ValueError):
        raise ValueError(f"image size {image_hw!r} must be (height, width) in pixels") from None
    if (h, w) != tuple(image_hw):
        raise ValueError(f"image size {image_hw!r} must be whole pixels")
    if not (MIN_IMAGE_PX <= h <= MAX_IMAGE_HW[0] and MIN_IMAGE_PX <= w <= MAX_IMAGE_HW[1]):
        raise ValueError(f"image size {h}x{w} (HxW) is outside {MIN_IMAGE_PX}..{MAX_IMAGE_HW[0]} x "
                         f"{MIN_IMAGE_PX}..{MAX_IMAGE_HW[1]} px, what the renderer's nuScenes rig can draw")
    if abs((w / h) / ASPECT - 1.0) > ASPECT_TOLERANCE:
        raise ValueError(f"image size {h}x{w} (HxW) has aspect {w / h:.3f}; the renderer's rig is "
                         f"{ASPECT:.3f} (16:9) within {ASPECT_TOLERANCE:.0%}")
    return h, w


@dataclass
class Observation:
    """The planner's input at one tick (module docstring). Frames: ego frame x forward, y left, m."""

    time_s: float
    frame_index: int
    scene_token: str
    jpegs: list
    """six JPEG ``bytes``, ``CAMERAS`` order"""
    image_hw: tuple
    intrinsics: np.ndarray
    """[6, 3, 3] float32, pixels of ``image_hw``"""
    sensor2ego: np.ndarray
    """[6, 4, 4] float32"""
    ego_state: np.ndarray
    """[7] float32, ``EGO_STATE_FIELDS``"""
    vad_ego: np.ndarray
    """[7] float32, ``VAD_EGO_FIELDS``"""
    past_traj: np.ndarray
    """[4, 2] float32"""
    past_mask: np.ndarray
    """[4] float32"""
    command: int
    """index into ``COMMANDS``"""
    ego_pose: np.ndarray
    """[3] x, y, yaw (global m, rad; rear axle): for planners that replay logs, never sent to a model"""

    @property
    def command_text(self) -> str:
        return COMMANDS[self.command]

    def model_cameras(self, out_hw) -> dict:
        """``images`` uint8 [6, H, W, 3] and ``intrinsics`` float32 [6, 3, 3] at ``out_hw`` (the model's input
        size), decoded and resized as training and Serve do, and ``sensor2ego`` float32 [6, 4, 4]."""
        out_hw = (int(out_hw[0]), int(out_hw[1]))
        return {"images": np.stack([decode_resize(j, out_hw) for j in self.jpegs]).astype(np.uint8),
                "intrinsics": scale_intrinsics(self.intrinsics, self.image_hw, out_hw).astype(np.float32),
                "sensor2ego": self.sensor2ego.astype(np.float32)}


class Sensors:
    """Renders observations of one scenario at ``image_hw`` (checked by :func:`check_cameras`)."""

    def __init__(self, scenario, image_hw=(225, 400), cameras=CAMERAS):
        self.h, self.w = check_cameras(image_hw, cameras)
        self.scenario = scenario
        self.renderer = render.Renderer(self.w, self.h, scenario.grid.divider_polylines())
        self.K = np.stack([render.intrinsics(c, self.w, self.h) for c in CAMERAS])
        self.s2e = np.stack([render.camera_sensor2ego(c) for c in CAMERAS])
        self.offsets = np.array([render.RIG[c][3] * 1e-6 for c in CAMERAS])

    def render(self, pose: np.ndarray, speed: float, yaw_rate: float, boxes: np.ndarray, categories, heights
               ) -> list[bytes]:
        """Six JPEGs from rear-axle ``pose`` [3] moving at ``speed`` (m/s) and ``yaw_rate`` (rad/s), with the
        actors ``boxes`` [N, 5] (x, y, yaw, length, width; NaN rows absent) of ``categories`` and ``heights`` [N]."""
        near = np.isfinite(boxes).all(1) & (np.linalg.norm(boxes[:, :2] - pose[:2], axis=1) < ANNOTATION_RANGE)
        drawn = [(np.array([b[0], b[1], h / 2]), (b[4], b[3], h), float(b[2]), c)
                 for b, c, h, ok in zip(boxes, categories, heights, near) if ok]
        out = []
        for i in range(len(CAMERAS)):
            dt = self.offsets[i]
            yaw = pose[2] + yaw_rate * dt
            E = np.eye(4)
            E[:3, :3] = render.rot_z(np.rad2deg(yaw))
            E[:3, 3] = [pose[0] + speed * dt * np.cos(pose[2]), pose[1] + speed * dt * np.sin(pose[2]), 0.0]
            out.append(self.renderer.render(E @ self.s2e[i], self.K[i], drawn))
        return out


def ego_state(speed: float, accel: float, steer: float) -> np.ndarray:
    """``ego_state`` [7] float32 of the simulated ego (module docstring)."""
    yaw_rate = speed * np.tan(steer) / WHEELBASE
    return np.array([speed, 0.0, accel, speed * yaw_rate, yaw_rate, speed, STEERING_RATIO * steer], np.float32)


def vad_ego(state: np.ndarray, speed_05s: float) -> np.ndarray:
    """``vad_ego`` [7] float32 from ``ego_state`` [7] and the speed over the last 0.5 s (module docstring)."""
    return np.array([speed_05s * np.cos(np.pi / 2), speed_05s * np.sin(np.pi / 2), state[2], state[3], 0.0,
                     state[5], 2.0 * state[6] / 2.588], np.float32)


def to_ego(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Global points [N, 2] into the ego frame of rear-axle ``pose`` [3] (x forward, y left)."""
    c, s = np.cos(pose[2]), np.sin(pose[2])
    d = np.asarray(points, np.float64) - pose[:2]
    return np.stack([c * d[..., 0] + s * d[..., 1], -s * d[..., 0] + c * d[..., 1]], -1)


def to_global(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """Ego-frame points [N, 2] of rear-axle ``pose`` [3] into the global frame."""
    c, s = np.cos(pose[2]), np.sin(pose[2])
    p = np.asarray(points, np.float64)
    return np.stack([pose[0] + c * p[..., 0] - s * p[..., 1], pose[1] + s * p[..., 0] + c * p[..., 1]], -1)


def past_trajectory(past_xy: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``past_traj`` [4, 2] float32 and ``past_mask`` [4] from the global positions [4, 2] 2.0 .. 0.5 s ago (NaN
    rows: no position)."""
    past_xy = np.asarray(past_xy, np.float64).reshape(PAST_STEPS, 2)
    mask = np.isfinite(past_xy).all(1)
    traj = np.where(mask[:, None], to_ego(np.nan_to_num(past_xy), pose), 0.0)
    return traj.astype(np.float32), mask.astype(np.float32)


def route_command(route: np.ndarray, pose: np.ndarray, speed: float) -> int:
    """COMMANDS index from the lane route [M, 2] ahead: the route point ``speed * 3 s`` beyond the ego's projection
    on it, in the ego frame, labelled as the training data labels a 3-s future (module docstring)."""
    horizon = speed * FUTURE_STEPS * STEP_SECONDS
    seg = np.linalg.norm(np.diff(route, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    i = int(np.argmin(np.linalg.norm(route - pose[:2], axis=1)))
    s = min(arc[i] + horizon, arc[-1])
    p = np.array([[np.interp(s, arc, route[:, 0]), np.interp(s, arc, route[:, 1])]])
    fut = np.zeros((FUTURE_STEPS, 2))
    fut[-1] = to_ego(p, pose)[0]
    mask = np.zeros(FUTURE_STEPS)
    mask[-1] = 1.0
    return command_from_future(fut, mask)
