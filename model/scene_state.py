"""Explicit per-scene tracking state of the vision encoder.

The agent queries of OpenDriveVLA track across the keyframes of a scene: the confident queries of frame t become
track queries of frame t+1, and the BEV of frame t is fused into frame t+1. That memory lives here, one object per
scene (one per sample of a batch), never in module attributes, so that it can be tested, reset, serialised
(``to_dict`` / ``from_dict`` hold plain tensors and python scalars) and moved between processes (a serve replica
holds the states of the scenes routed to it).

Shapes (``Q`` agent queries, ``C`` the encoder width ``out_channels``, ``nx, ny`` the BEV grid):
    track_embed  [Q, C]      decoder output embedding of each carried query slot (detached; zeros where not carried)
    track_mask   [Q] bool    slot carries a track into the next frame
    track_ids    [Q] int64   persistent track id per slot (-1: no track)
    track_boxes  [Q, 9]      last box of each slot (x, y, z, w, l, h, yaw, vx, vy; ego frame of ``sample_token``)
    track_scores [Q]         last confidence of each slot
    track_labels [Q] int64   last detection class of each slot (index into ``constants.DETECTION_CLASSES``)
    track_misses [Q] int64   consecutive frames a tracked slot scored below ``track_keep_score`` (inference tracker)
    track_gt     [Q] int64   ground-truth instance id each carried slot follows (training with ``gt_instance``;
                             -1 elsewhere, None at inference)
    prev_bev     [C, nx, ny] lifted (pre-fusion) BEV of the frame this state was made from (detached), or None
    ego2global   [4, 4]      ego pose of that frame (when the batch carried ``ego2global``): the next frame warps
                             ``prev_bev`` by the ego motion; None = fused unaligned
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

STATE_VERSION = 1
_TENSOR_FIELDS = ("track_embed", "track_mask", "track_ids", "track_boxes", "track_scores", "prev_bev",
                  "ego2global", "track_misses", "track_gt", "track_labels")


@dataclass
class SceneState:
    """Tracking memory of one scene after the keyframe ``frame_index`` (``sample_token``) was encoded."""

    scene_token: str
    frame_index: int = -1
    sample_token: str = ""
    track_embed: Optional[torch.Tensor] = None
    track_mask: Optional[torch.Tensor] = None
    track_ids: Optional[torch.Tensor] = None
    track_boxes: Optional[torch.Tensor] = None
    track_scores: Optional[torch.Tensor] = None
    prev_bev: Optional[torch.Tensor] = None
    ego2global: Optional[torch.Tensor] = None
    next_track_id: int = 0
    track_misses: Optional[torch.Tensor] = None
    track_gt: Optional[torch.Tensor] = None
    track_labels: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ lifecycle
    @classmethod
    def empty(cls, scene_token: str) -> "SceneState":
        """A state with no tracks and no previous BEV (the start of a scene)."""
        return cls(scene_token=scene_token)

    def reset(self, scene_token: Optional[str] = None) -> "SceneState":
        """A fresh empty state (for ``scene_token``, default this state's scene); ``self`` is left untouched."""
        return SceneState.empty(self.scene_token if scene_token is None else scene_token)

    def continues(self, scene_token: str, frame_index: int) -> bool:
        """True when a frame (``scene_token``, ``frame_index``) may use this state: same scene and not the scene's
        first keyframe. Otherwise the encoder starts from an empty state (reset)."""
        return bool(scene_token == self.scene_token and int(frame_index) != 0 and self.has_memory)

    @property
    def has_memory(self) -> bool:
        return self.track_embed is not None or self.prev_bev is not None

    @property
    def num_tracks(self) -> int:
        return 0 if self.track_mask is None else int(self.track_mask.sum())

    def to(self, device=None, dtype: Optional[torch.dtype] = None) -> "SceneState":
        """Copy with tensors moved to ``device``; floating tensors cast to ``dtype`` when given (the ego pose stays
        float32)."""
        kw = {}
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            if t is not None:
                cast = dtype is not None and t.is_floating_point() and name != "ego2global"
                t = t.to(device=device, dtype=dtype if cast else None)
            kw[name] = t
        return SceneState(scene_token=self.scene_token, frame_index=self.frame_index, sample_token=self.sample_token,
                          next_track_id=self.next_track_id, **kw)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict:
        """Plain dict: strings, ints and detached CPU tensors (``torch.save`` / pickling / Ray object store safe)."""
        d = {"version": STATE_VERSION, "scene_token": self.scene_token, "frame_index": int(self.frame_index),
             "sample_token": self.sample_token, "next_track_id": int(self.next_track_id)}
        for name in _TENSOR_FIELDS:
            t = getattr(self, name)
            d[name] = None if t is None else t.detach().to("cpu").clone()
        return d

    @classmethod
    def from_dict(cls, d: dict, device=None) -> "SceneState":
        """Inverse of ``to_dict``; tensors go to ``device`` when given. Raises ValueError on an unknown layout."""
        if not isinstance(d, dict) or "scene_token" not in d:
            raise ValueError(f"SceneState.from_dict: expected a dict made by SceneState.to_dict, got {type(d)!r}")
        version = d.get("version", STATE_VERSION)
        if version != STATE_VERSION:
            raise ValueError(f"SceneState.from_dict: state version {version} for scene {d['scene_token']!r}, "
                             f"this code reads version {STATE_VERSION}")
        kw = {}
        for name in _TENSOR_FIELDS:
            t = d.get(name)
            if t is not None and not isinstance(t, torch.Tensor):
                t = torch.as_tensor(t)
            kw[name] = None if t is None else (t.to(device) if device is not None else t)
        return cls(scene_token=str(d["scene_token"]), frame_index=int(d.get("frame_index", -1)),
                   sample_token=str(d.get("sample_token", "")), next_track_id=int(d.get("next_track_id", 0)), **kw)

    def __repr__(self) -> str:  # compact: tensors by shape
        return (f"SceneState(scene_token={self.scene_token!r}, frame_index={self.frame_index}, "
                f"tracks={self.num_tracks}, prev_bev={None if self.prev_bev is None else tuple(self.prev_bev.shape)})")
