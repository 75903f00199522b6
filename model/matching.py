"""Hungarian matching (scipy ``linear_sum_assignment``) and the cost matrices of the agent and map queries.

Costs are computed in float32 without gradients; the assignment runs on the CPU per sample.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def hungarian(cost: torch.Tensor, what: str = "cost") -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost one-to-one assignment of a cost matrix [Q, G] (Q predictions, G targets).

    Returns (pred_idx [M], gt_idx [M]) int64 on ``cost.device``, M = min(Q, G), sorted by pred_idx.
    Raises ValueError naming ``what`` when the matrix holds NaN or inf (a diverged prediction).
    """
    if cost.dim() != 2:
        raise ValueError(f"{what}: expected a [Q, G] cost matrix, got shape {tuple(cost.shape)}")
    Q, G = cost.shape
    if Q == 0 or G == 0:
        empty = torch.zeros(0, dtype=torch.long, device=cost.device)
        return empty, empty.clone()
    c = cost.detach().float().cpu().numpy()
    if not np.isfinite(c).all():
        raise ValueError(f"{what}: the matching cost holds NaN/inf ({int((~np.isfinite(c)).sum())} entries); "
                         "the predictions or the targets are not finite")
    rows, cols = linear_sum_assignment(c)
    return (torch.as_tensor(rows, dtype=torch.long, device=cost.device),
            torch.as_tensor(cols, dtype=torch.long, device=cost.device))


def classification_cost(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """-p(class of target) for logits [Q, K+1] and labels [G] -> [Q, G] (DETR)."""
    prob = logits.float().softmax(-1)
    return -prob[:, labels]


def weighted_l1_cost(pred: torch.Tensor, target: torch.Tensor, weights: Optional[torch.Tensor] = None
                     ) -> torch.Tensor:
    """Sum over the last dim of weighted |pred - target| for pred [Q, D], target [G, D] -> [Q, G]."""
    diff = (pred.float()[:, None, :] - target.float()[None, :, :]).abs()
    if weights is not None:
        diff = diff * weights.float()
    return diff.sum(-1)


def polyline_l1_cost(pred: torch.Tensor, target: torch.Tensor, direction_invariant: bool = True
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Point-wise L1 between polylines, mean over points and coordinates.

    pred [Q, P, 2], target [G, P, 2] -> (cost [Q, G], reversed [Q, G] bool). With ``direction_invariant`` the cost
    is the minimum over the target in forward and in reversed point order, and ``reversed`` says which order won
    (a lane divider drawn either way is the same divider).
    """
    p = pred.float()[:, None]  # [Q, 1, P, 2]
    fwd = (p - target.float()[None]).abs().mean(dim=(-1, -2))
    if not direction_invariant:
        return fwd, torch.zeros_like(fwd, dtype=torch.bool)
    rev = (p - target.float().flip(1)[None]).abs().mean(dim=(-1, -2))
    reversed_ = rev < fwd
    return torch.where(reversed_, rev, fwd), reversed_
