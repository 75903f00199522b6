"""Global Scene Sampler: a few learned queries attend to the whole BEV and summarise the scene for the LLM."""
from __future__ import annotations

import torch
from torch import nn

from .agent_queries import make_decoder


class GlobalSceneSampler(nn.Module):
    """forward(memory [B, N, C] BEV tokens with positions) -> scene tokens [B, Ns, C], Ns = ``num_queries``."""

    def __init__(self, channels: int, num_queries: int, heads: int, layers: int):
        super().__init__()
        self.num_queries = int(num_queries)
        self.query_embed = nn.Embedding(self.num_queries, channels)
        self.decoder = make_decoder(channels, heads, layers)

    def forward(self, memory: torch.Tensor) -> torch.Tensor:
        idx = torch.arange(self.num_queries, device=memory.device)
        tgt = self.query_embed(idx)[None].expand(memory.shape[0], -1, -1)
        return self.decoder(tgt, memory)
