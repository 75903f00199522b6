"""VisionEncoder: six cameras -> BEV -> scene / agent / map tokens for the LLM, with detection, motion and map
losses, and explicit per-scene tracking state.

    images [B, 6, 3, H, W] --ImageBackbone--> FPN levels [B*6, Cf, h, w]
        --BEVEncoder (intrinsics, sensor2ego; previous BEV from the state)--> bev [B, C, nx, ny]
        --+ sine positions--> memory [B, nx*ny, C]
            --GlobalSceneSampler-->   scene_tokens [B, Ns, C]
            --AgentQueryTransformer--> boxes / classes / futures of Q slots; top-k confident -> agent_tokens [B, K, C]
            --MapQueryTransformer-->   polylines / classes of Qm queries; all of them -> map_tokens [B, Qm, C]

``C = out_channels = model.vision.bev_channels``; ``Ns = num_scene_queries``, ``K = num_agent_tokens``,
``Q = num_agent_queries``, ``Qm = num_map_queries``. Geometry in the nuScenes ego frame (x forward, y left, metres).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import nn

from .agent_proposals import SNAP_CELLS, CentreHeatmap, centre_targets, focal_loss, peaks
from .agent_queries import AgentQueryTransformer
from .backbone import ImageBackbone, backbone_spec
from .bev import BEVEncoder, align_prev_bev, rigid_inverse, sine_positional_encoding
from .config import ModelConfig
from .constants import CAMERAS, DETECTION_CLASSES, MAP_CLASSES
from .map_queries import MapQueryTransformer
from .matching import hungarian
from .scene_sampler import GlobalSceneSampler
from .scene_state import SceneState
from .profiling import scope
from .track_policy import TrackPolicy, fixed_assignments, runtime_update, training_update
from .vision_losses import AgentCriterion, MapCriterion

LOSS_KEYS = ("det", "map", "motion")
_AGENT_GT = ("gt_boxes", "gt_labels")
_MAP_GT = ("gt_map_pts", "gt_map_labels")


@dataclass
class VisionOutput:
    """What ``VisionEncoder.forward`` returns (B = batch, C = ``out_channels``).

    scene_tokens [B, Ns, C]; agent_tokens [B, K, C] (the K most confident agent slots, by descending score);
    map_tokens [B, Qm, C]; losses {'det', 'map', 'motion'} float32 scalars (zeros, still attached to the graph, when
    the batch has no targets or ``compute_losses=False``); states: one new ``SceneState`` per sample;
    predictions (float32 unless noted):
        boxes [B, Q, 9] (x, y, z, w, l, h, yaw, vx, vy; metres, rad, m/s), scores [B, Q], labels [B, Q] int64
        (``DETECTION_CLASSES``), agent_future [B, Q, 6, 2] absolute future centres (ego frame, metres),
        track_ids [B, Q] int64 (-1: slot not tracked), agent_token_index [B, K] int64 (slot of each agent token),
        map_pts [B, Qm, P, 2] metres, map_scores [B, Qm], map_labels [B, Qm] int64 (``MAP_CLASSES``),
        bev [B, C, nx, ny] (i along x, j along y).
    """

    scene_tokens: torch.Tensor
    agent_tokens: torch.Tensor
    map_tokens: torch.Tensor
    losses: dict = field(default_factory=dict)
    states: list = field(default_factory=list)
    predictions: dict = field(default_factory=dict)


def _opt(batch: dict, key: str, device) -> Optional[torch.Tensor]:
    t = batch.get(key)
    return None if t is None else t.to(device)


class VisionEncoder(nn.Module):
    """The visual side of OpenDriveVLA, built from ``ModelConfig`` (``cfg.vision`` + ``cfg.gradient_checkpointing``).

    forward(batch, states=None, compute_losses=True) -> VisionOutput. ``batch`` follows ``odvla.model.batch``:
    needs images [B, 6, 3, H, W] (H, W = ``vision.image_height/width``), intrinsics [B, 6, 3, 3], sensor2ego
    [B, 6, 4, 4]; the gt_* tensors for losses; scene_token (list) and frame_index [B] for tracking; optional
    ego2global [B, 4, 4] (keyframe ego pose) to warp the previous BEV by the ego motion before fusing it; optional
    gt_instance [B, Na] (instance ids of the targets): in training a tracked slot stays bound to its instance.
    ``states`` is None or a list of B ``SceneState | None``: a state continues only when its scene_token equals the
    sample's and frame_index != 0, otherwise the sample starts fresh (reset).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        v = cfg.vision
        if not 0 < v.num_agent_tokens <= v.num_agent_queries:
            raise ValueError(f"model.vision.num_agent_tokens={v.num_agent_tokens} must be in "
                             f"1..num_agent_queries={v.num_agent_queries}")
        self.config = cfg
        self.backbone = ImageBackbone(v.backbone, v.fpn_channels, v.backbone_weights,
                                      cfg.gradient_checkpointing, v.frozen_stages)
        self.bev_encoder = BEVEncoder(v, v.fpn_channels)
        self.grid = self.bev_encoder.grid
        C = int(v.bev_channels)
        self.out_channels = C
        self.register_buffer("bev_pos", sine_positional_encoding(self.grid, C), persistent=False)  # [nx*ny, C]
        self.scene_sampler = GlobalSceneSampler(C, v.num_scene_queries, v.decoder_heads, v.decoder_layers)
        self.agent_queries = AgentQueryTransformer(v, C, self.grid)
        if v.agent_query_init not in ("learned", "heatmap"):
            raise ValueError(f"model.vision.agent_query_init={v.agent_query_init!r}: expected 'learned' or 'heatmap'")
        self.centre_heatmap = CentreHeatmap(C) if v.agent_query_init == "heatmap" else None
        self.proposal_proj = nn.Sequential(nn.LayerNorm(C), nn.Linear(C, C)) if self.centre_heatmap else None
        self.map_queries = MapQueryTransformer(v, C, self.grid)
        self.agent_criterion = AgentCriterion(self.agent_queries.coder, len(DETECTION_CLASSES))
        self.map_criterion = MapCriterion(self.grid, len(MAP_CLASSES))
        self.num_agent_tokens = int(v.num_agent_tokens)
        self.track_policy = TrackPolicy.from_config(v)

    # ------------------------------------------------------------------ parameter groups
    def agent_motion_parameters(self) -> list[nn.Parameter]:
        """Parameters of the agent class / box / motion heads (the ``agent_heads`` trainable part)."""
        return [p for m in self.agent_queries.head_modules() for p in m.parameters()]

    # ------------------------------------------------------------------ helpers
    def _check_batch(self, batch: dict) -> torch.Tensor:
        v = self.config.vision
        for key in ("images", "intrinsics", "sensor2ego"):
            if key not in batch:
                raise KeyError(f"VisionEncoder: batch has no {key!r} (see odvla.model.batch)")
        images = batch["images"]
        want = (len(CAMERAS), 3, v.image_height, v.image_width)
        if images.dim() != 5 or tuple(images.shape[1:]) != want:
            raise ValueError(f"VisionEncoder: batch['images'] has shape {tuple(images.shape)}, expected "
                             f"[B, {', '.join(map(str, want))}] (model.vision.image_height/width)")
        B = images.shape[0]
        for key, tail in (("intrinsics", (len(CAMERAS), 3, 3)), ("sensor2ego", (len(CAMERAS), 4, 4))):
            if tuple(batch[key].shape) != (B, *tail):
                raise ValueError(f"VisionEncoder: batch[{key!r}] has shape {tuple(batch[key].shape)}, "
                                 f"expected {(B, *tail)}")
        return images

    def _active_states(self, batch: dict, states: Optional[Sequence[Optional[SceneState]]], B: int
                       ) -> tuple[list[Optional[SceneState]], list[str], list[int]]:
        scenes = list(batch.get("scene_token") or [""] * B)
        fi = batch.get("frame_index")
        frames = [0] * B if fi is None else [int(x) for x in torch.as_tensor(fi).reshape(-1).tolist()]
        if states is None:
            return [None] * B, scenes, frames
        if len(states) != B:
            raise ValueError(f"VisionEncoder: got {len(states)} scene states for a batch of {B}")
        if "scene_token" not in batch or fi is None:
            raise KeyError("VisionEncoder: tracking states need batch['scene_token'] and batch['frame_index']")
        active = []
        for s, scene, frame in zip(states, scenes, frames):
            if s is not None and not isinstance(s, SceneState):
                raise TypeError(f"VisionEncoder: states must hold SceneState or None, got {type(s)!r} "
                                "(use SceneState.from_dict on serialised states)")
            active.append(s if (s is not None and s.continues(scene, frame)) else None)
        return active, scenes, frames

    def _track_inputs(self, active: list[Optional[SceneState]], device, dtype
                      ) -> tuple[Optional[torch.Tensor], Optional[torch.Tensor]]:
        if all(s is None or s.track_embed is None for s in active):
            return None, None
        Q, C = self.agent_queries.num_queries, self.out_channels
        embed = torch.zeros(len(active), Q, C, device=device, dtype=dtype)
        mask = torch.zeros(len(active), Q, dtype=torch.bool, device=device)
        for b, s in enumerate(active):
            if s is None or s.track_embed is None:
                continue
            if tuple(s.track_embed.shape) != (Q, C):
                raise ValueError(f"scene state of scene {s.scene_token!r} holds track_embed "
                                 f"{tuple(s.track_embed.shape)}, this model uses {(Q, C)} (state from another config?)")
            embed[b] = s.track_embed.to(device=device, dtype=dtype)
            mask[b] = s.track_mask.to(device=device, dtype=torch.bool)
        return embed, mask

    def _new_states(self, active, scenes, frames, samples, agent, matches, gt_instance, lifted, ego2global
                    ) -> tuple[list, torch.Tensor]:
        """One new SceneState per sample (``track_policy``). ``matches``: per sample (slots, target columns) in
        training with targets — the matched slots carry, following their instance (``gt_instance`` [B, Na] or None);
        None at inference — the runtime tracker carries confident slots (births) until they miss too often."""
        B, Q = agent["scores"].shape
        dev = lifted.device
        states, all_ids = [], []
        for b in range(B):
            prev = active[b]
            prev_ids = (prev.track_ids.to(dev).long() if prev is not None and prev.track_ids is not None
                        else torch.full((Q,), -1, dtype=torch.long, device=dev))
            next_id = 0 if prev is None else prev.next_track_id
            track_gt = None
            if matches is not None:
                rows, cols = matches[b]
                gt_ids = (gt_instance[b, cols.to(gt_instance.device)].to(dev) if gt_instance is not None
                          else torch.full((len(rows),), -1, dtype=torch.long, device=dev))
                ids, track_gt, next_id = training_update(prev_ids, rows, gt_ids, Q, next_id)
                misses = torch.zeros(Q, dtype=torch.long, device=dev)
            else:
                prev_m = (prev.track_misses.to(dev).long() if prev is not None and prev.track_misses is not None
                          else torch.zeros(Q, dtype=torch.long, device=dev))
                ids, misses, next_id = runtime_update(prev_ids, prev_m, agent["scores"][b].detach().to(dev),
                                                      next_id, self.track_policy)
            carry = ids >= 0
            all_ids.append(ids)
            embed = agent["embed"][b].detach() * carry[:, None].to(agent["embed"].dtype)
            states.append(SceneState(
                scene_token=scenes[b], frame_index=frames[b], sample_token=samples[b], track_embed=embed,
                track_mask=carry, track_ids=ids, track_boxes=agent["boxes"][b].detach(),
                track_scores=agent["scores"][b].detach(),
                track_labels=agent["labels"][b].detach(), prev_bev=lifted[b].detach(), next_track_id=next_id,
                ego2global=None if ego2global is None else ego2global[b].detach().float(), track_misses=misses,
                track_gt=track_gt))
        return states, torch.stack(all_ids)

    def _fixed_assignments(self, active, batch: dict, samples: list, device) -> Optional[list]:
        """Training with tracks: per sample the slots bound to their instance in this frame (or None)."""
        gi = batch.get("gt_instance")
        if gi is None or all(s is None or s.track_gt is None for s in active):
            return None
        gt_boxes, gt_labels, gi = batch["gt_boxes"].to(device), batch["gt_labels"].to(device), gi.to(device)
        out = []
        for b, s in enumerate(active):
            if s is None or s.track_gt is None:
                out.append(None)
                continue
            valid = self.agent_criterion.valid_targets(gt_boxes, gt_labels, b, samples[b])
            out.append(fixed_assignments(s.track_gt.to(device), gi[b], valid))
        return out

    @staticmethod
    def _cur2prev(s: SceneState, ego2global: Optional[torch.Tensor], b: int) -> Optional[torch.Tensor]:
        """[4, 4] float32 map from sample ``b``'s current ego frame to the ego frame of its state's keyframe
        (``inv(prev ego2global) @ ego2global``); None unless both poses are known."""
        if ego2global is None or s.ego2global is None:
            return None
        cur = ego2global[b].float()
        return rigid_inverse(s.ego2global.to(cur.device).float()) @ cur

    def _prev_bev(self, active: list[Optional[SceneState]], ego2global: Optional[torch.Tensor]
                  ) -> list[Optional[torch.Tensor]]:
        """Previous BEV of each sample, warped into the current ego frame when both poses are known."""
        out = []
        for b, s in enumerate(active):
            if s is None or s.prev_bev is None:
                out.append(None)
                continue
            cur2prev = self._cur2prev(s, ego2global, b)
            out.append(s.prev_bev if cur2prev is None
                       else align_prev_bev(s.prev_bev.to(cur2prev.device), cur2prev, self.grid))
        return out

    def _proposals(self, heat: torch.Tensor, memory: torch.Tensor, track_mask: Optional[torch.Tensor],
                   active: list, ego2global: Optional[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap proposals of the agent slots: (proposal_embed [B, Q, C], ref01 [B, Q, 2]).

        A tracked slot predicts where its agent is now: its last centre moved 0.5 s by its velocity, then by the ego
        motion into the current frame. It takes the nearest of the heatmap's top ``2Q`` peaks within
        ``SNAP_CELLS`` of that (one-to-one, Hungarian on the distance; CenterPoint's tracking by closest centre):
        the peak's cell centre becomes its reference and the peak's BEV token, projected, is added to its query.
        Without a peak there, the predicted centre is its reference. Free slots take the remaining peaks by
        descending score."""
        B, Q = memory.shape[0], self.agent_queries.num_queries
        nx, ny = self.grid.shape
        idx, centre = peaks(heat, 2 * Q)  # [B, K], [B, K, 2]
        feats = self.proposal_proj(torch.gather(memory, 1, idx[..., None].expand(-1, -1, memory.shape[-1])))
        embed = feats.new_zeros(B, Q, feats.shape[-1])
        ref = centre.new_zeros(B, Q, 2)
        cells = centre.new_tensor([nx, ny])
        for b in range(B):
            carried = (track_mask[b] if track_mask is not None
                       else torch.zeros(Q, dtype=torch.bool, device=memory.device))
            used = torch.zeros(centre.shape[1], dtype=torch.bool, device=memory.device)
            s = active[b]
            if bool(carried.any()) and s is not None and s.track_boxes is not None:
                box = s.track_boxes.to(memory.device).float()
                xy = box[:, 0:2] + 0.5 * box[:, 7:9]  # previous ego frame, keyframes 0.5 s apart
                cur2prev = self._cur2prev(s, ego2global, b)
                if cur2prev is not None:
                    prev2cur = rigid_inverse(cur2prev).to(memory.device)
                    xy = xy @ prev2cur[:2, :2].T + prev2cur[:2, 3]
                slots = carried.nonzero(as_tuple=True)[0]
                pred = self.grid.normalise_xy(xy[slots]).clamp(0.0, 1.0)  # [T, 2]
                ref[b, slots] = pred
                dist = ((pred[:, None] - centre[b][None]) * cells).norm(dim=-1)  # [T, K] cells
                rows, cols = hungarian(dist, what="heatmap peaks of tracked slots")
                near = dist[rows, cols] <= SNAP_CELLS
                rows, cols = slots[rows[near]], cols[near].to(memory.device)
                ref[b, rows], embed[b, rows], used[cols] = centre[b, cols], feats[b, cols], True
            free = (~carried).nonzero(as_tuple=True)[0]
            avail = (~used).nonzero(as_tuple=True)[0][:len(free)]
            free = free[:len(avail)]
            ref[b, free], embed[b, free] = centre[b, avail], feats[b, avail]
        return embed, ref

    def _heatmap_loss(self, heat: torch.Tensor, batch: dict, samples: list) -> torch.Tensor:
        gt_boxes, gt_labels = batch["gt_boxes"].to(heat.device), batch["gt_labels"].to(heat.device)
        centres = [gt_boxes[b, self.agent_criterion.valid_targets(gt_boxes, gt_labels, b, samples[b]), 0:2]
                   for b in range(heat.shape[0])]
        return focal_loss(heat, centre_targets(self.grid, centres, heat.device))

    # ------------------------------------------------------------------ forward
    def forward(self, batch: dict, states: Optional[Sequence[Optional[SceneState]]] = None,
                compute_losses: bool = True) -> VisionOutput:
        images = self._check_batch(batch)
        B = images.shape[0]
        active, scenes, frames = self._active_states(batch, states, B)
        samples = list(batch.get("sample_token") or [f"#{b}" for b in range(B)])

        param_dtype = next(self.backbone.parameters()).dtype
        with scope("vision.backbone"):
            if images.dtype == torch.uint8:  # raw RGB from the data pipeline / server: the backbone's normalisation
                images = backbone_spec(self.config.vision.backbone).normalize(images)
            if not torch.is_autocast_enabled(images.device.type):
                images = images.to(param_dtype)
            feats = self.backbone(images.flatten(0, 1))  # levels [B*6, Cf, h, w]
        with scope("vision.bev"):
            ego2global = _opt(batch, "ego2global", images.device)
            prev_bev = self._prev_bev(active, ego2global)
            dev = feats[0].device
            bev, lifted = self.bev_encoder(feats, batch["intrinsics"].to(dev), batch["sensor2ego"].to(dev), prev_bev)
            # bev [B, C, nx, ny] -> BEV tokens with positions, memory [B, nx*ny, C]
            memory = bev.flatten(2).transpose(1, 2) + self.bev_pos.to(bev.dtype)

        with scope("vision.scene"):
            scene_tokens = self.scene_sampler(memory)
        track_embed, track_mask = self._track_inputs(active, memory.device, memory.dtype)
        heat = proposal_embed = ref01 = None
        if self.centre_heatmap is not None:
            with scope("vision.heatmap"):
                heat = self.centre_heatmap(bev)  # [B, nx, ny]
                proposal_embed, ref01 = self._proposals(heat, memory, track_mask, active, ego2global)
        with scope("vision.agents"):
            agent = self.agent_queries(memory, track_embed, track_mask, proposal_embed, ref01)
        with scope("vision.map"):
            mp = self.map_queries(memory)

        token_idx = agent["scores"].topk(self.num_agent_tokens, dim=1).indices  # [B, K] by descending score
        agent_tokens = torch.gather(agent["embed"], 1, token_idx[..., None].expand(-1, -1, agent["embed"].shape[-1]))
        map_tokens = mp["embed"]

        zero = (agent["box_code"].sum() + agent["motion_offsets"].sum() + mp["pts01"].sum()
                + agent["cls_logits"].sum() + mp["cls_logits"].sum() + (0.0 if heat is None else heat.sum())) * 0.0
        losses = {k: zero for k in LOSS_KEYS}
        matches = None
        if compute_losses and all(k in batch for k in _AGENT_GT):
            with scope("vision.agent_losses"):
                fixed = self._fixed_assignments(active, batch, samples, memory.device) if self.training else None
                agent_losses, matches = self.agent_criterion(
                    agent, batch["gt_boxes"].to(memory.device), batch["gt_labels"].to(memory.device),
                    _opt(batch, "gt_agent_future", memory.device),
                    _opt(batch, "gt_agent_future_mask", memory.device), samples, fixed)
                if heat is not None:
                    agent_losses["det"] = agent_losses["det"] + self._heatmap_loss(heat, batch, samples)
                losses.update({k: l + zero for k, l in agent_losses.items()})
        if compute_losses and all(k in batch for k in _MAP_GT):
            with scope("vision.map_losses"):
                map_losses, _ = self.map_criterion(mp, batch["gt_map_pts"].to(memory.device),
                                                   batch["gt_map_labels"].to(memory.device), samples)
                losses.update({k: l + zero for k, l in map_losses.items()})

        with scope("vision.states"):
            new_states, track_ids = self._new_states(active, scenes, frames, samples, agent,
                                                     matches if self.training else None,
                                                     _opt(batch, "gt_instance", memory.device), lifted, ego2global)
        predictions = {
            "boxes": agent["boxes"], "scores": agent["scores"], "labels": agent["labels"],
            "agent_future": agent["agent_future"], "track_ids": track_ids, "agent_token_index": token_idx,
            "map_pts": mp["map_pts"], "map_scores": mp["scores"], "map_labels": mp["labels"], "bev": bev,
        }
        return VisionOutput(scene_tokens=scene_tokens, agent_tokens=agent_tokens, map_tokens=map_tokens,
                            losses=losses, states=new_states, predictions=predictions)
