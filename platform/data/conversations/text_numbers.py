"""Numbers in instruction text, written by the model's waypoint codec so every coordinate the model reads or writes
has one form: ``odvla.model.traj_codec.format_points`` (nuScenes ego frame in, text frame X right / Y forward out,
metres, fixed decimals, no spaces) and ``format_number`` for scalars (distances in m, speeds in m/s, times in s).
"""
from __future__ import annotations

import numpy as np

from odvla.model.config import TextConfig
from odvla.model.traj_codec import format_number, format_points

DECIMALS = TextConfig().traj_decimals
"""The codec's default decimals (``TextConfig.traj_decimals``)."""


def fmt_points(points_ego: np.ndarray) -> str:
    """[N,2] ego-frame points -> '[(X,Y),...]' in the text frame."""
    return format_points(np.asarray(points_ego, dtype=np.float64).reshape(-1, 2), DECIMALS)


def fmt_point(point_ego: np.ndarray) -> str:
    """One ego-frame point -> '(X,Y)' in the text frame."""
    return fmt_points(np.asarray(point_ego).reshape(1, 2))[1:-1]


def fmt_num(value: float) -> str:
    """A scalar with the codec's decimals ('-0.00' written as '0.00')."""
    return format_number(float(value), DECIMALS)
