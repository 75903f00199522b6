"""Agent QueryTransformer: DETR-style decoder over the BEV that detects, tracks and forecasts agents.

Each of ``Q = num_agent_queries`` query slots decodes into a class (``DETECTION_CLASSES`` + no-object), a 3D box
(x, y, z, w, l, h, yaw, vx, vy; ego frame, metres, rad, m/s) and the agent's future centres (``agent_future_steps``
x 0.5 s, ego frame). Tracking: a slot carried from the previous keyframe (``track_mask``) starts from its learned
query plus a projection of its previous output embedding, so the same slot keeps following the same agent.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .bev import BEVGrid
from .constants import DETECTION_CLASSES


class MLP(nn.Module):
    """``num_layers`` Linear layers with ReLU between them: [..., in_dim] -> [..., out_dim]."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.ReLU(inplace=True))
        self.net = nn.Sequential(*layers)

    @property
    def last(self) -> nn.Linear:
        return self.net[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_decoder(channels: int, heads: int, layers: int) -> nn.TransformerDecoder:
    """Pre-norm ``nn.TransformerDecoder`` (self-attention among queries, cross-attention to BEV tokens, FFN)."""
    layer = nn.TransformerDecoderLayer(channels, heads, dim_feedforward=4 * channels, dropout=0.0,
                                       batch_first=True, norm_first=True)
    return nn.TransformerDecoder(layer, layers, norm=nn.LayerNorm(channels))


class BoxCoder:
    """Boxes [..., 9] (x, y, z, w, l, h, yaw, vx, vy) <-> regression code [..., 10]
    (x01, y01, z01, log w, log l, log h, sin yaw, cos yaw, vx, vy); x01/y01/z01 normalised over the BEV ranges."""

    CODE_SIZE = 10
    CODE_WEIGHTS = (5.0, 5.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.2, 0.2)
    """Per-dimension L1 weights of matching cost and box loss (DETR-like weight 5 on the normalised centre)."""

    def __init__(self, grid: BEVGrid):
        self.grid = grid

    def _z(self):
        z0, z1 = self.grid.z_range
        return z0, z1 - z0

    def encode(self, boxes: torch.Tensor) -> torch.Tensor:
        b = boxes.float()
        xy = self.grid.normalise_xy(b[..., 0:2])
        z0, zs = self._z()
        z = (b[..., 2:3] - z0) / zs
        size = b[..., 3:6].clamp(min=1e-2).log()
        yaw = b[..., 6:7]
        return torch.cat([xy, z, size, yaw.sin(), yaw.cos(), b[..., 7:9]], dim=-1)

    @staticmethod
    def activate(raw: torch.Tensor, ref01: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Head output [..., 10] -> code: sigmoid on the normalised centre, identity elsewhere. With reference points
        ``ref01`` [..., 2] (normalised x, y), the head's x, y are offsets in logit space from them (Deformable DETR)."""
        raw = raw.float()
        xy = raw[..., 0:2]
        if ref01 is not None:
            xy = xy + torch.logit(ref01.float().clamp(1e-3, 1 - 1e-3))
        return torch.cat([xy.sigmoid(), raw[..., 2:3].sigmoid(), raw[..., 3:]], dim=-1)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        c = code.float()
        xy = self.grid.denormalise_xy(c[..., 0:2])
        z0, zs = self._z()
        z = c[..., 2:3] * zs + z0
        size = c[..., 3:6].clamp(max=10.0).exp()
        yaw = torch.atan2(c[..., 6:7], c[..., 7:8])
        return torch.cat([xy, z, size, yaw, c[..., 8:10]], dim=-1)

    def in_range(self, boxes: torch.Tensor) -> torch.Tensor:
        """[...] bool: the box centre lies inside the BEV grid (only those can be detected)."""
        (x0, x1), (y0, y1) = self.grid.x_range, self.grid.y_range
        x, y = boxes[..., 0], boxes[..., 1]
        return (x >= x0) & (x < x1) & (y >= y0) & (y < y1)


class AgentQueryTransformer(nn.Module):
    """forward(memory [B, N, C], track_embed [B, Q, C] | None, track_mask [B, Q] bool | None,
    proposal_embed [B, Q, C] | None, ref01 [B, Q, 2] | None) -> dict:

    ``proposal_embed`` is added to the slots' initial queries (heatmap proposals, ``agent_proposals``; zero rows
    on slots without one) and ``ref01`` makes each slot's centre an offset from its reference point.

    embed [B, Q, C] decoder outputs; cls_logits [B, Q, K+1] (last = no-object); box_code [B, Q, 10];
    boxes [B, Q, 9] metres/rad/(m/s); scores [B, Q] max foreground probability; labels [B, Q];
    motion_offsets [B, Q, T, 2] future centres relative to the current centre (metres);
    agent_future [B, Q, T, 2] absolute future centres, ego frame. Head outputs are float32.
    """

    def __init__(self, vcfg, channels: int, grid: BEVGrid):
        super().__init__()
        self.num_queries = int(vcfg.num_agent_queries)
        self.num_classes = len(DETECTION_CLASSES)
        self.future_steps = int(vcfg.agent_future_steps)
        self.coder = BoxCoder(grid)
        C = channels
        self.query_embed = nn.Embedding(self.num_queries, C)
        # previous output embedding -> query update; the last layer starts at zero so an untrained projection
        # leaves a carried slot as it would be without state (training without states never updates it)
        self.track_proj = nn.Sequential(nn.LayerNorm(C), MLP(C, C, C, 2))
        self.decoder = make_decoder(C, int(vcfg.decoder_heads), int(vcfg.decoder_layers))
        self.cls_head = nn.Linear(C, self.num_classes + 1)
        self.box_head = MLP(C, C, BoxCoder.CODE_SIZE, 3)
        self.motion_head = MLP(C, C, self.future_steps * 2, 3)
        with torch.no_grad():  # start at a typical car size (2 x 4.5 x 1.7 m) and yaw 0; no motion
            bias = self.box_head.last.bias
            bias.zero_()
            bias[3:6] = torch.tensor([math.log(2.0), math.log(4.5), math.log(1.7)])
            bias[7] = 1.0
            self.motion_head.last.weight.mul_(0.1)
            self.motion_head.last.bias.zero_()
            self.track_proj[1].last.weight.zero_()
            self.track_proj[1].last.bias.zero_()

    def head_modules(self) -> list[nn.Module]:
        return [self.cls_head, self.box_head, self.motion_head]

    def queries(self, batch_size: int, track_embed: Optional[torch.Tensor], track_mask: Optional[torch.Tensor],
                device: torch.device) -> torch.Tensor:
        """Initial query slots [B, Q, C]: the learned query, plus the projected previous embedding on carried slots."""
        idx = torch.arange(self.num_queries, device=device)
        q = self.query_embed(idx)[None].expand(batch_size, -1, -1)  # module call: ZeRO-3 gathers the weight
        if track_embed is None or track_mask is None or not bool(track_mask.any()):
            return q
        carried = self.track_proj(track_embed.to(q.dtype))
        return q + carried * track_mask[..., None].to(q.dtype)

    def forward(self, memory: torch.Tensor, track_embed: Optional[torch.Tensor] = None,
                track_mask: Optional[torch.Tensor] = None, proposal_embed: Optional[torch.Tensor] = None,
                ref01: Optional[torch.Tensor] = None) -> dict:
        B = memory.shape[0]
        tgt = self.queries(B, track_embed, track_mask, memory.device)
        if proposal_embed is not None:
            tgt = tgt + proposal_embed.to(tgt.dtype)
        embed = self.decoder(tgt, memory)  # [B, Q, C]
        cls_logits = self.cls_head(embed).float()
        box_code = self.coder.activate(self.box_head(embed), ref01)
        boxes = self.coder.decode(box_code)
        offsets = self.motion_head(embed).float().reshape(B, self.num_queries, self.future_steps, 2)
        prob = cls_logits.softmax(-1)
        scores, labels = prob[..., :-1].max(-1)
        return {"embed": embed, "cls_logits": cls_logits, "box_code": box_code, "boxes": boxes, "scores": scores,
                "labels": labels, "motion_offsets": offsets, "agent_future": boxes[..., None, 0:2] + offsets}
