"""Map QueryTransformer: queries decode into vectorised map elements (MapTR style).

Each of ``Qm = num_map_queries`` queries gives a polyline of ``P = map_points`` points (ego frame x, y, metres;
bounded to the BEV grid) and a class among ``MAP_CLASSES`` (divider, boundary, crossing) + no-object.
"""
from __future__ import annotations

import torch
from torch import nn

from .agent_queries import MLP, make_decoder
from .bev import BEVGrid
from .constants import MAP_CLASSES


class MapQueryTransformer(nn.Module):
    """forward(memory [B, N, C]) -> dict:

    embed [B, Qm, C]; cls_logits [B, Qm, 4] (last = no-object); pts01 [B, Qm, P, 2] normalised over the grid;
    map_pts [B, Qm, P, 2] ego metres; scores [B, Qm] max class probability; labels [B, Qm]. Heads in float32.
    """

    def __init__(self, vcfg, channels: int, grid: BEVGrid):
        super().__init__()
        self.grid = grid
        self.num_queries = int(vcfg.num_map_queries)
        self.num_points = int(vcfg.map_points)
        self.num_classes = len(MAP_CLASSES)
        C = channels
        self.query_embed = nn.Embedding(self.num_queries, C)
        self.decoder = make_decoder(C, int(vcfg.decoder_heads), int(vcfg.decoder_layers))
        self.cls_head = nn.Linear(C, self.num_classes + 1)
        self.pts_head = MLP(C, C, self.num_points * 2, 3)

    def forward(self, memory: torch.Tensor) -> dict:
        B = memory.shape[0]
        idx = torch.arange(self.num_queries, device=memory.device)
        tgt = self.query_embed(idx)[None].expand(B, -1, -1)
        embed = self.decoder(tgt, memory)
        cls_logits = self.cls_head(embed).float()
        pts01 = self.pts_head(embed).float().sigmoid().reshape(B, self.num_queries, self.num_points, 2)
        scores, labels = cls_logits.softmax(-1)[..., :-1].max(-1)
        return {"embed": embed, "cls_logits": cls_logits, "pts01": pts01,
                "map_pts": self.grid.denormalise_xy(pts01), "scores": scores, "labels": labels}
