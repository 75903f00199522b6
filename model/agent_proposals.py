"""Agent query proposals from a dense BEV centre heatmap (``model.vision.agent_query_init: heatmap``).

A DETR-style decoder whose queries start as learned embeddings has to learn where to look before it can learn what
it sees; on a small budget it does not get there. TransFusion (Bai et al., CVPR 2022) and CenterFormer start the
queries at the peaks of a class-agnostic centre heatmap instead, and the heatmap itself trains densely (every BEV
cell gets a target), so it converges in far fewer steps:

- ``CentreHeatmap``: a small conv head on the BEV, [B, C, nx, ny] -> [B, nx, ny] logits of "an agent's centre lies
  in this cell" (bias set to a 0.1 prior, as CenterNet).
- ``centre_targets``: CenterNet's Gaussian targets, 1 at the cell holding each in-range centre, ``exp(-d^2 / 2s^2)``
  around it (d in cells, ``s = SIGMA_CELLS``), max over agents.
- ``focal_loss``: CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the number of centres.
- ``peaks``: the top-k local maxima (3 x 3 max-pool) of the heatmap, as cell indices and normalised [0, 1] centres.

The agent decoder then adds each proposal's BEV token (feature + position) to a slot's query and predicts the box
centre as an offset from the proposal (``AgentQueryTransformer``): a tracked slot takes the peak nearest to where
it predicts its agent (within ``SNAP_CELLS``), free slots the remaining peaks (``VisionEncoder._proposals``).
Cells follow ``bev.BEVGrid``: i along x (forward), j along y (left); token index ``i * ny + j`` of the flattened
BEV.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .bev import BEVGrid

SIGMA_CELLS = 1.0
"""Standard deviation of a centre's Gaussian target, in BEV cells (``model.vision.bev_resolution`` metres each)."""
SNAP_CELLS = 1.5
"""A tracked slot takes a heatmap peak within this many BEV cells of where it predicts its agent."""
PRIOR = 0.1
"""Initial probability of every cell (CenterNet's bias init, -log((1 - p) / p))."""


class CentreHeatmap(nn.Module):
    """forward(bev [B, C, nx, ny]) -> logits [B, nx, ny] (float32)."""

    def __init__(self, channels: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels, 1, 1))
        with torch.no_grad():
            self.net[-1].bias.fill_(-math.log((1 - PRIOR) / PRIOR))

    def forward(self, bev: torch.Tensor) -> torch.Tensor:
        return self.net(bev)[:, 0].float()


def centre_targets(grid: BEVGrid, centres: list[torch.Tensor], device) -> torch.Tensor:
    """Gaussian targets [B, nx, ny] from per-sample centres [N_b, 2] (ego x, y metres, already in range)."""
    cells = grid.cell_centres().to(device)  # [nx, ny, 2]
    out = torch.zeros(len(centres), grid.nx, grid.ny, device=device)
    for b, xy in enumerate(centres):
        if not len(xy):
            continue
        xy = xy.to(device).float()
        d2 = ((cells[None] - xy[:, None, None]) ** 2).sum(-1) / grid.resolution ** 2  # [N, nx, ny] cells^2
        g = torch.exp(-d2 / (2 * SIGMA_CELLS ** 2))
        i = ((xy[:, 0] - grid.x_range[0]) / grid.resolution).floor().long().clamp(0, grid.nx - 1)
        j = ((xy[:, 1] - grid.y_range[0]) / grid.resolution).floor().long().clamp(0, grid.ny - 1)
        g[torch.arange(len(xy), device=device), i, j] = 1.0
        out[b] = g.amax(0)
    return out


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss of logits [B, nx, ny] against Gaussian targets, summed over cells and
    divided by the number of centres (at least 1)."""
    p = logits.sigmoid().clamp(1e-4, 1 - 1e-4)
    pos = target.eq(1.0).float()
    pos_loss = -(1 - p) ** 2 * p.log() * pos
    neg_loss = -(1 - target) ** 4 * p ** 2 * (1 - p).log() * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / pos.sum().clamp(min=1.0)


def peaks(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` highest local maxima of logits [B, nx, ny]: (token index [B, k] int64 into the flattened BEV,
    centre [B, k, 2] normalised [0, 1] over the grid), by descending score. No gradient flows through the choice."""
    with torch.no_grad():
        B, nx, ny = logits.shape
        h = logits.detach()
        keep = F.max_pool2d(h[:, None], 3, stride=1, padding=1)[:, 0] == h
        h = torch.where(keep, h, torch.full_like(h, -1e4))
        idx = h.flatten(1).topk(min(k, nx * ny), dim=1).indices  # [B, k]
        i, j = idx // ny, idx % ny
        centre = torch.stack([(i.float() + 0.5) / nx, (j.float() + 0.5) / ny], dim=-1)
    return idx, centre


__all__ = ["CentreHeatmap", "centre_targets", "focal_loss", "peaks", "SIGMA_CELLS", "SNAP_CELLS"]
