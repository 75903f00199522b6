"""Rigid transforms shared by the synthetic generator and ``prepare``.

Conventions (nuScenes): quaternions are ``[w, x, y, z]``; a pose ``(R, t)`` maps points of the child frame into the
parent frame, ``p_parent = R @ p_child + t``. Yaw is counter-clockwise about +z, radians.
"""
from __future__ import annotations

import numpy as np
from pyquaternion import Quaternion


def yaw_quat(yaw: float) -> list[float]:
    """Quaternion ``[w, x, y, z]`` of a rotation by ``yaw`` radians about +z."""
    return [float(np.cos(yaw / 2)), 0.0, 0.0, float(np.sin(yaw / 2))]


def quat_yaw(q) -> float:
    """Yaw (rad) of a quaternion ``[w, x, y, z]`` (rotation of the x axis projected onto the xy plane)."""
    R = Quaternion(q).rotation_matrix
    return float(np.arctan2(R[1, 0], R[0, 0]))


def pose_matrix(rotation, translation) -> np.ndarray:
    """4x4 homogeneous matrix of a nuScenes pose (``rotation`` quaternion [w,x,y,z], ``translation`` [3])."""
    T = np.eye(4)
    T[:3, :3] = Quaternion(rotation).rotation_matrix
    T[:3, 3] = np.asarray(translation, dtype=float)
    return T


def invert(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform."""
    Ti = np.eye(4)
    R = T[:3, :3]
    Ti[:3, :3] = R.T
    Ti[:3, 3] = -R.T @ T[:3, 3]
    return Ti


def apply(T: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points ``[..., 3]``."""
    pts = np.asarray(pts, dtype=float)
    return pts @ T[:3, :3].T + T[:3, 3]


def global_to_ego_xy(xy: np.ndarray, ego2global: np.ndarray) -> np.ndarray:
    """Global xy points ``[..., 2]`` -> ego-frame xy (x forward, y left, metres); z of the points taken as ego z."""
    xy = np.asarray(xy, dtype=float)
    pts = np.concatenate([xy, np.full(xy.shape[:-1] + (1,), ego2global[2, 3])], axis=-1)
    return apply(invert(ego2global), pts)[..., :2]


def wrap_angle(a):
    """Wrap radians into [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2 * np.pi) - np.pi
