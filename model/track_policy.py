"""Track life cycle of the agent query slots across keyframes: which slot carries which track id into the next frame.

Two policies, as in UniAD's track training and test:

- ``training_update`` (MOTR / UniAD ``ClipMatcher``): a carried slot keeps following the ground-truth instance it
  was matched to; the instance keeps the slot as long as it is annotated in the frame, new instances are matched by
  Hungarian among the free slots, and a track whose instance left the frame ends. Only matched slots are carried.
- ``runtime_update`` (UniAD ``RuntimeTrackerBase.update``; thresholds ``model.vision.track_*``): an untracked slot
  scoring >= ``birth`` is born with a new id; a tracked slot scoring >= ``birth`` resets its miss count, one scoring
  < ``keep`` counts a miss, and after ``miss_tolerance`` consecutive misses the track ends and the slot is freed.

All tensors are per sample: ``Q`` slots, int64 ids (-1 = no track), int64 miss counts.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrackPolicy:
    """Thresholds of the inference tracker (``model.vision.track_birth_score`` / ``track_keep_score`` /
    ``track_miss_tolerance``)."""

    birth: float = 0.4
    keep: float = 0.35
    miss_tolerance: int = 5

    @classmethod
    def from_config(cls, vcfg) -> "TrackPolicy":
        p = cls(float(vcfg.track_birth_score), float(vcfg.track_keep_score), int(vcfg.track_miss_tolerance))
        if not (0.0 <= p.keep <= p.birth <= 1.0) or p.miss_tolerance < 1:
            raise ValueError(f"model.vision.track_keep_score={p.keep} <= track_birth_score={p.birth} must lie in "
                             f"[0, 1] and track_miss_tolerance={p.miss_tolerance} must be >= 1")
        return p


def runtime_update(prev_ids: torch.Tensor, prev_misses: torch.Tensor, scores: torch.Tensor, next_id: int,
                   policy: TrackPolicy) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Inference tracker step. prev_ids [Q] int64 (-1 untracked), prev_misses [Q] int64, scores [Q] float.

    Returns (ids [Q], misses [Q], next_id): carried slots are ``ids >= 0``; born slots get ``next_id, next_id+1, ...``
    in slot order.
    """
    ids, misses = prev_ids.clone(), prev_misses.clone()
    confident = scores >= policy.birth
    misses[confident] = 0
    tracked = ids >= 0
    born = ~tracked & confident
    n = int(born.sum())
    ids[born] = torch.arange(next_id, next_id + n, dtype=ids.dtype, device=ids.device)
    low = tracked & (scores < policy.keep)
    misses[low] += 1
    died = low & (misses >= policy.miss_tolerance)
    ids[died] = -1
    misses[ids < 0] = 0
    return ids, misses, next_id + n


def training_update(prev_ids: torch.Tensor, rows: torch.Tensor, gt_ids: torch.Tensor, num_slots: int, next_id: int
                    ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Training tracker step. prev_ids [Q] int64; rows [M] slots matched this frame; gt_ids [M] int64 instance id
    of each matched target (-1 when the batch carries no ``gt_instance``).

    Returns (ids [Q], track_gt [Q] (instance id each carried slot follows, -1 elsewhere), next_id): a matched slot
    that was tracked keeps its id, a newly matched one is born; unmatched slots end.
    """
    ids = torch.full((num_slots,), -1, dtype=torch.long, device=prev_ids.device)
    track_gt = torch.full((num_slots,), -1, dtype=torch.long, device=prev_ids.device)
    rows = rows.to(prev_ids.device)
    kept = prev_ids[rows]
    fresh = kept < 0
    n = int(fresh.sum())
    kept = kept.clone()
    kept[fresh] = torch.arange(next_id, next_id + n, dtype=kept.dtype, device=kept.device)
    ids[rows] = kept
    track_gt[rows] = gt_ids.to(prev_ids.device).long()
    return ids, track_gt, next_id + n


def fixed_assignments(track_gt: torch.Tensor, gt_ids: torch.Tensor, gt_valid: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slots bound to their instance in this frame (identity kept), and the slots whose instance left.

    track_gt [Q] int64 (instance followed by each carried slot, -1 none); gt_ids [Na] int64 instance id of each
    target; gt_valid [Na] bool (a real, in-range target). Returns (slots [F], cols [F], ended [Q] bool): slot
    ``slots[i]`` is assigned target ``cols[i]``; ``ended`` marks carried slots whose instance is not in the frame
    (their target is no-object and they take no new instance this frame, as in MOTR).
    """
    Q = track_gt.shape[0]
    ended = torch.zeros(Q, dtype=torch.bool, device=track_gt.device)
    slots, cols = [], []
    col_of = {int(g): j for j, g in enumerate(gt_ids.tolist()) if bool(gt_valid[j]) and int(g) >= 0}
    for q in (track_gt >= 0).nonzero(as_tuple=True)[0].tolist():
        j = col_of.pop(int(track_gt[q]), None)  # pop: one slot per instance
        if j is None:
            ended[q] = True
        else:
            slots.append(q)
            cols.append(j)
    as_t = lambda v: torch.as_tensor(v, dtype=torch.long, device=track_gt.device)  # noqa: E731
    return as_t(slots), as_t(cols), ended
