"""The ego token: the ego's numeric state as one LLM input embedding (``text.ego_token``).

The released prompt gives the ego state only as text digits (``Velocity (vx,vy): (0.00,3.73)``). A small LLM learns
to read numbers out of digits slowly, so with ``text.ego_token: true`` the planning prompt also carries one
``<EGO>`` placeholder (``Ego states: <EGO>``) whose embedding is an MLP of the same numbers, like the ego query of
UniAD / VAD or the ego-status input of AD-MLP. The text lines stay, so the prompt reads the same to a person.

Features (:func:`ego_features`, [N, 22], float32, in the nuScenes ego frame, x forward / y left):
``ego_state`` [7] (vx, vy m/s, ax, ay m/s^2, yaw_rate rad/s, speed m/s, steering rad), the command one-hot [3],
the past positions [4, 2] m (oldest first, zero where ``past_mask`` is 0) and ``past_mask`` [4]. :data:`FEATURE_SCALE`
brings each to about unit size before the MLP (fixed, so a checkpoint does not depend on dataset statistics).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from odvla.model.constants import COMMANDS, EGO_STATE_FIELDS, PAST_STEPS

EGO_TOKEN = "<EGO>"
_STATE_SCALE = {"vx": 10.0, "vy": 10.0, "ax": 2.0, "ay": 2.0, "yaw_rate": 0.5, "speed": 10.0, "steering": 0.5}
FEATURE_SCALE = np.array([_STATE_SCALE[f] for f in EGO_STATE_FIELDS] + [1.0] * len(COMMANDS)
                         + [20.0] * (2 * PAST_STEPS) + [1.0] * PAST_STEPS, dtype=np.float32)
"""Divisors of the 22 features (units above): typical magnitudes on nuScenes."""
NUM_FEATURES = len(FEATURE_SCALE)


def ego_features(ego_state, command, past_traj, past_mask) -> np.ndarray:
    """[N, 22] float32, unscaled: ego state [N,7], command one-hot [N,3], masked past positions [N,8], mask [N,4]."""
    ego_state = np.asarray(ego_state, dtype=np.float32).reshape(-1, len(EGO_STATE_FIELDS))
    n = len(ego_state)
    command = np.asarray(command, dtype=np.int64).reshape(n)
    if n and (command.min() < 0 or command.max() >= len(COMMANDS)):
        raise ValueError(f"command index must be in 0..{len(COMMANDS) - 1} {COMMANDS}, got {command.tolist()}")
    onehot = np.eye(len(COMMANDS), dtype=np.float32)[command]
    pm = np.asarray(past_mask, dtype=np.float32).reshape(n, PAST_STEPS)
    past = np.asarray(past_traj, dtype=np.float32).reshape(n, PAST_STEPS, 2) * pm[..., None]
    return np.concatenate([ego_state, onehot, past.reshape(n, -1), pm], axis=1)


class EgoProjector(nn.Module):
    """Ego features -> one LLM embedding: ``[B, 22]`` scaled by :data:`FEATURE_SCALE` -> MLP -> ``[B, H]``."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.register_buffer("scale", torch.from_numpy(FEATURE_SCALE), persistent=False)
        self.fc1 = nn.Linear(NUM_FEATURES, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = features.to(self.fc1.weight.dtype) / self.scale.to(self.fc1.weight.dtype)
        return self.fc2(self.act(self.fc1(x)))

    def from_batch(self, batch: dict) -> torch.Tensor:
        """Batch fields (``model/batch.py``) -> ``[B, H]`` on this module's device."""
        from odvla.model.text_inputs import to_numpy

        f = ego_features(*(to_numpy(batch[k]) for k in ("ego_state", "command", "past_traj", "past_mask")))
        return self(torch.from_numpy(f).to(self.fc1.weight.device))
