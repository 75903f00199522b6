"""Token-specific projectors: visual tokens (``Cv`` channels) -> LLM hidden size, one MLP per token kind.

OpenDriveVLA keeps separate projectors for scene, agent and map tokens because the three come from different query
decoders with different statistics; stage1 (vision-language alignment) trains only these.
"""
from __future__ import annotations

import torch
from torch import nn


class TokenProjector(nn.Module):
    """2-layer MLP ``[..., Cv] -> [..., H]`` (Linear, GELU, Linear), as LLaVA's ``mlp2x_gelu``."""

    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.fc1 = nn.Linear(in_channels, hidden_size)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_size, hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class VisualProjectors(nn.Module):
    """``scene`` [B, Ns, Cv] -> [B, Ns, H]; ``agent`` [B, Ka, Cv] -> [B, Ka, H]; ``map`` [B, Km, Cv] -> [B, Km, H]."""

    def __init__(self, in_channels: int, hidden_size: int):
        super().__init__()
        self.scene = TokenProjector(in_channels, hidden_size)
        self.agent = TokenProjector(in_channels, hidden_size)
        self.map = TokenProjector(in_channels, hidden_size)

    def forward(self, scene: torch.Tensor, agent: torch.Tensor, map_tokens: torch.Tensor):
        return self.scene(scene), self.agent(agent), self.map(map_tokens)
