"""Ego-status baselines scored in the same table as the model, so a user sees what the cameras and the LLM add.

* ``constant_velocity(ego_state)``: the ego keeps its current velocity (``vx, vy`` of ``ego_state``, ego frame,
  m/s) for 3 s: waypoint k (k = 1..6) = (vx, vy) * 0.5 k.
* ``EgoMLP``: an MLP on ego state, command and past trajectory only (no perception), the "Ego-MLP" of
  AD-MLP / "Is Ego Status All You Need" (Li et al. 2024), trained on the train split with a masked L1 loss on the
  future waypoints. Small (2 x 128 hidden), full-batch Adam: it trains in seconds on CPU.

Inputs are the shard / batch fields (``model/batch.py``): ego_state [N,7], command [N] (index into COMMANDS),
past_traj [N,4,2], past_mask [N,4], future_traj [N,6,2], future_mask [N,6]; outputs [N,6,2] ego frame, metres.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from odvla.model.constants import EGO_STATE_FIELDS, FUTURE_STEPS, STEP_SECONDS
from odvla.model.ego_token import ego_features  # the features the Ego-MLP reads, as the <EGO> token

_VX, _VY = EGO_STATE_FIELDS.index("vx"), EGO_STATE_FIELDS.index("vy")


def constant_velocity(ego_state: np.ndarray) -> np.ndarray:
    """ego_state [N, 7] -> [N, 6, 2] waypoints at t+0.5 .. t+3.0 s, ego frame."""
    ego_state = np.asarray(ego_state, dtype=np.float64).reshape(-1, len(EGO_STATE_FIELDS))
    t = STEP_SECONDS * np.arange(1, FUTURE_STEPS + 1)
    v = ego_state[:, [_VX, _VY]]
    return v[:, None, :] * t[None, :, None]


class EgoMLP(nn.Module):
    """features [N, F] (normalised inside) -> waypoints [N, 6, 2]."""

    def __init__(self, in_features: int, hidden: int = 128):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                                 nn.Linear(hidden, FUTURE_STEPS * 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std).view(-1, FUTURE_STEPS, 2)


@dataclass
class EgoMLPBaseline:
    model: EgoMLP
    train_loss: float
    train_samples: int

    def predict(self, ego_state, command, past_traj, past_mask) -> np.ndarray:
        x = torch.from_numpy(ego_features(ego_state, command, past_traj, past_mask))
        with torch.no_grad():
            return self.model(x).numpy().astype(np.float64)


def train_ego_mlp(ego_state, command, past_traj, past_mask, future_traj, future_mask, epochs: int = 200,
                  lr: float = 3e-3, seed: int = 0) -> EgoMLPBaseline:
    """Fit the Ego-MLP on the train split (full batch). Raises ValueError when there is nothing to train on."""
    x = ego_features(ego_state, command, past_traj, past_mask)
    y = np.asarray(future_traj, np.float32).reshape(len(x), FUTURE_STEPS, 2)
    m = np.asarray(future_mask, np.float32).reshape(len(x), FUTURE_STEPS)
    if len(x) == 0 or m.sum() == 0:
        raise ValueError("ego MLP baseline: the train split has no sample with a valid future trajectory")
    torch.manual_seed(seed)
    model = EgoMLP(x.shape[1])
    xt, yt, mt = torch.from_numpy(x), torch.from_numpy(np.nan_to_num(y)), torch.from_numpy(m)
    model.mean.copy_(xt.mean(0))
    model.std.copy_(xt.std(0).clamp_min(1e-3) if len(xt) > 1 else torch.ones(x.shape[1]))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss = torch.tensor(0.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a 22-in MLP: thread start-up costs more than the math, badly so on a busy host
    try:
        for _ in range(max(1, epochs)):
            opt.zero_grad()
            loss = ((model(xt) - yt).abs().sum(-1) * mt).sum() / mt.sum()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    model.eval()
    return EgoMLPBaseline(model, float(loss.detach()), len(x))
