"""Clip batches: ``T`` consecutive keyframes of one scene per row, for temporal training (UniAD's ``queue_length``).

A clip batch is the frame batch of ``model/batch.py`` with a time axis after the batch axis, plus one key:

    every tensor key      [B, T, ...]        frame t of each row's clip (oldest first)
    every text key        list (B) of list (T) of str
    clip_supervised       bool [B, T]        frames whose losses count (``data.clip_loss``: 'last' -> only t = T-1,
                                             'all' -> every frame); the other frames run without gradients and
                                             only produce the tracking state (previous BEV, tracked queries)

``clip_frames`` splits it into ``T`` frame batches in time order.
"""
from __future__ import annotations

import torch

CLIP_KEY = "clip_supervised"


def is_clip(batch: dict) -> bool:
    return CLIP_KEY in batch


def clip_length(batch: dict) -> int:
    sup = batch[CLIP_KEY]
    if sup.dim() != 2:
        raise ValueError(f"clip batch: {CLIP_KEY} has shape {tuple(sup.shape)}, expected [B, T]")
    return int(sup.shape[1])


def clip_frames(batch: dict) -> list[dict]:
    """-> ``T`` frame batches (``model/batch.py`` layout), oldest first. Raises ValueError naming a key whose time
    axis disagrees with ``clip_supervised``."""
    T = clip_length(batch)
    B = int(batch[CLIP_KEY].shape[0])
    frames: list[dict] = [{} for _ in range(T)]
    for k, v in batch.items():
        if k == CLIP_KEY:
            continue
        if torch.is_tensor(v):
            if v.dim() < 2 or tuple(v.shape[:2]) != (B, T):
                raise ValueError(f"clip batch: {k!r} has shape {tuple(v.shape)}, expected [B={B}, T={T}, ...]")
            for t in range(T):
                frames[t][k] = v[:, t]
        elif isinstance(v, (list, tuple)):
            if len(v) != B or any(len(row) != T for row in v):
                raise ValueError(f"clip batch: text key {k!r} must be {B} lists of {T} strings")
            for t in range(T):
                frames[t][k] = [row[t] for row in v]
        else:
            for t in range(T):
                frames[t][k] = v
    return frames


def supervised_frames(batch: dict) -> list[bool]:
    """[T] whether any row supervises frame t."""
    sup = batch[CLIP_KEY].bool().any(dim=0).tolist()
    if not any(sup):
        raise ValueError(f"clip batch: {CLIP_KEY} marks no frame for the loss")
    return [bool(x) for x in sup]
