"""Set-prediction losses of the agent and map queries (Hungarian matching, then per-pair losses).

- det: cross-entropy over ``DETECTION_CLASSES`` + no-object (no-object weight ``eos_coef``) on every query, plus the
  weighted L1 of the box code (``BoxCoder.CODE_WEIGHTS``) on matched queries, averaged over the batch's targets.
  Targets whose centre lies outside the BEV grid cannot be seen and are left out of matching.
- motion: masked L1 (metres) between the predicted future offsets of matched queries and the targets' future
  centres relative to their current centre; averaged over valid (step, coordinate) entries.
- map: cross-entropy over ``MAP_CLASSES`` + no-object, plus ``pts_weight`` x point-wise L1 of normalised polylines
  (direction-invariant: the better of forward / reversed target order), averaged over the batch's targets.

With no target at all in a batch the classification terms still teach "no object"; the regression terms are
exact zeros that stay connected to the graph (every parameter receives a gradient, as distributed engines expect).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from .agent_queries import BoxCoder
from .bev import BEVGrid
from .matching import classification_cost, hungarian, polyline_l1_cost, weighted_l1_cost


def _check_labels(labels: torch.Tensor, num_classes: int, field: str, name: str) -> None:
    bad = (labels >= num_classes) | (labels < -1)
    if bool(bad.any()):
        raise ValueError(f"{field} of sample {name!r} holds class ids {labels[bad].unique().tolist()}; "
                         f"expected -1 (padding) or 0..{num_classes - 1}")


def _check_finite(x: torch.Tensor, field: str, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{field} of sample {name!r} holds NaN/inf for a valid (label >= 0) entry")



def matched_classification_loss(logits: torch.Tensor, gt_labels: torch.Tensor, matches: list,
                                eos_coef: float) -> torch.Tensor:
    """DETR classification loss: ``logits`` [B, Q, K+1] (last = no object), ``gt_labels`` [B, G], ``matches``
    one ``(query_rows, gt_cols)`` pair per sample; unmatched queries target no-object, weighted ``eos_coef``."""
    B, Q, K1 = logits.shape
    target_cls = torch.full((B, Q), K1 - 1, dtype=torch.long, device=logits.device)
    for b, (rows, cols) in enumerate(matches):
        target_cls[b, rows] = gt_labels[b, cols]
    cls_w = torch.ones(K1, device=logits.device)
    cls_w[-1] = eos_coef
    return F.cross_entropy(logits.reshape(-1, K1), target_cls.reshape(-1), weight=cls_w)

class AgentCriterion:
    """Matching + det / motion losses of ``AgentQueryTransformer`` outputs."""

    def __init__(self, coder: BoxCoder, num_classes: int, eos_coef: float = 0.1, cls_cost: float = 2.0):
        self.coder = coder
        self.num_classes = num_classes
        self.eos_coef = eos_coef
        self.cls_cost = cls_cost

    def valid_targets(self, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, b: int, name: str) -> torch.Tensor:
        """[Na] bool: real targets (label >= 0) of sample ``b`` whose centre lies inside the BEV grid."""
        _check_labels(gt_labels[b], self.num_classes, "gt_labels", name)
        valid = gt_labels[b] >= 0
        _check_finite(gt_boxes[b][valid], "gt_boxes", name)
        return valid & self.coder.in_range(gt_boxes[b])

    def match(self, out: dict, gt_boxes: torch.Tensor, gt_labels: torch.Tensor, names: Sequence[str],
              fixed: Optional[Sequence] = None) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per sample (pred_idx [M], gt_idx [M]) with gt_idx indexing the padded target axis Na, sorted by pred_idx.

        ``fixed``: None or per sample None | (slots [F], cols [F], ended [Q] bool) from
        ``track_policy.fixed_assignments``: tracked slots keep their instance, ended slots take none, and Hungarian
        matches the remaining targets to the remaining slots (MOTR / UniAD track training)."""
        matches = []
        with torch.no_grad():
            for b, name in enumerate(names):
                valid = self.valid_targets(gt_boxes, gt_labels, b, name)
                Q = out["cls_logits"].shape[1]
                free_q = torch.ones(Q, dtype=torch.bool, device=valid.device)
                pre_rows = pre_cols = torch.zeros(0, dtype=torch.long, device=valid.device)
                if fixed is not None and fixed[b] is not None:
                    pre_rows, pre_cols, ended = (t.to(valid.device) for t in fixed[b])
                    free_q[pre_rows] = False
                    free_q &= ~ended
                    valid = valid.clone()
                    valid[pre_cols] = False
                idx = valid.nonzero(as_tuple=True)[0]
                qidx = free_q.nonzero(as_tuple=True)[0]
                weights = torch.tensor(BoxCoder.CODE_WEIGHTS, device=gt_boxes.device)
                cost = self.cls_cost * classification_cost(out["cls_logits"][b, qidx], gt_labels[b, idx]) \
                    + weighted_l1_cost(out["box_code"][b, qidx], self.coder.encode(gt_boxes[b, idx]), weights)
                rows, cols = hungarian(cost, what=f"agent matching of sample {name!r}")
                rows = torch.cat([pre_rows, qidx[rows]])
                cols = torch.cat([pre_cols, idx[cols]])
                order = rows.argsort()
                matches.append((rows[order], cols[order]))
        return matches

    def __call__(self, out: dict, gt_boxes: torch.Tensor, gt_labels: torch.Tensor,
                 gt_future: Optional[torch.Tensor], gt_future_mask: Optional[torch.Tensor], names: Sequence[str],
                 fixed: Optional[Sequence] = None) -> tuple[dict, list]:
        matches = self.match(out, gt_boxes, gt_labels, names, fixed)
        logits, code, offsets = out["cls_logits"], out["box_code"], out["motion_offsets"]
        loss_cls = matched_classification_loss(logits, gt_labels, matches, self.eos_coef)

        weights = torch.tensor(BoxCoder.CODE_WEIGHTS, device=code.device)
        num_gt = sum(len(r) for r, _ in matches)
        box_terms = [(code[b, rows] - self.coder.encode(gt_boxes[b, cols])).abs().mul(weights).sum()
                     for b, (rows, cols) in enumerate(matches) if len(rows)]
        loss_box = (torch.stack(box_terms).sum() / num_gt) if box_terms else code.sum() * 0.0

        motion_num, motion_den = offsets.sum() * 0.0, 0.0
        if gt_future is not None:
            for b, (rows, cols) in enumerate(matches):
                if not len(rows):
                    continue
                rel = gt_future[b, cols].float() - gt_boxes[b, cols, None, 0:2].float()  # [M, T, 2]
                mask = (gt_future_mask[b, cols].float() if gt_future_mask is not None
                        else torch.ones(rel.shape[:2], device=rel.device))
                mask = mask * torch.isfinite(rel).all(-1).float()
                rel = torch.nan_to_num(rel)
                err = (offsets[b, rows] - rel).abs() * mask[..., None]
                motion_num = motion_num + err.sum()
                motion_den += float(mask.sum()) * 2
        loss_motion = motion_num / max(motion_den, 1.0)
        return {"det": loss_cls + loss_box, "motion": loss_motion}, matches


class MapCriterion:
    """Matching + map loss of ``MapQueryTransformer`` outputs."""

    def __init__(self, grid: BEVGrid, num_classes: int, eos_coef: float = 0.1, pts_weight: float = 5.0,
                 cls_cost: float = 2.0, direction_invariant: bool = True):
        self.grid = grid
        self.num_classes = num_classes
        self.eos_coef = eos_coef
        self.pts_weight = pts_weight
        self.cls_cost = cls_cost
        self.direction_invariant = direction_invariant

    def __call__(self, out: dict, gt_pts: torch.Tensor, gt_labels: torch.Tensor, names: Sequence[str]
                 ) -> tuple[dict, list]:
        logits, pts01 = out["cls_logits"], out["pts01"]
        B, Q, K1 = logits.shape
        if gt_pts.shape[-2] != pts01.shape[-2]:
            raise ValueError(f"gt_map_pts has {gt_pts.shape[-2]} points per element, the model predicts "
                             f"{pts01.shape[-2]} (rows are resampled to model.vision.map_points: the batch was "
                             "built with another config)")
        matches, targets = [], []
        with torch.no_grad():
            for b, name in enumerate(names):
                _check_labels(gt_labels[b], self.num_classes, "gt_map_labels", name)
                idx = (gt_labels[b] >= 0).nonzero(as_tuple=True)[0]
                _check_finite(gt_pts[b, idx], "gt_map_pts", name)
                gt01 = self.grid.normalise_xy(gt_pts[b, idx].float()).clamp(0.0, 1.0)  # [G, P, 2]
                pcost, rev = polyline_l1_cost(pts01[b], gt01, self.direction_invariant)
                cost = self.cls_cost * classification_cost(logits[b], gt_labels[b, idx]) + self.pts_weight * pcost
                rows, cols = hungarian(cost, what=f"map matching of sample {name!r}")
                flip = rev[rows, cols]
                tgt = gt01[cols]
                targets.append(torch.where(flip[:, None, None], tgt.flip(1), tgt))
                matches.append((rows, idx[cols]))
        loss_cls = matched_classification_loss(logits, gt_labels, matches, self.eos_coef)
        num_gt = sum(len(r) for r, _ in matches)
        terms = [(pts01[b, rows] - tgt).abs().mean(dim=(-1, -2)).sum()
                 for b, ((rows, _), tgt) in enumerate(zip(matches, targets)) if len(rows)]
        loss_pts = (self.pts_weight * torch.stack(terms).sum() / num_gt) if terms else pts01.sum() * 0.0
        return {"map": loss_cls + loss_pts}, matches
