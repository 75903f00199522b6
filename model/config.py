"""Model configuration: the dataclasses the network is built from (``OpenDriveVLA(ModelConfig)``).

They live in ``model/`` because model code never imports ``platform/``; ``odvla.platform.config`` embeds them in
the job config tree. Units: metres, seconds; frames: nuScenes ego frame (x forward, y left).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class LLMConfig:
    """Qwen2 decoder dimensions. ``path`` set: load weights + tokenizer from that local HF directory."""

    path: Optional[str] = None
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    rope_theta: float = 1_000_000.0
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    vocab_size: int = 0
    """0: take it from the tokenizer (tiny); real presets use 151936 (Qwen2.5)."""
    tokenizer_vocab_size: int = 1024
    """Size of the BPE trained offline for presets without a ``path`` (tiny)."""
    tokenizer: str = "bpe"
    """Vocabulary when ``path`` is unset: 'bpe' (small BPE trained offline, tiny) or 'qwen2.5' (Qwen2.5's real
    151,643-token BPE built offline from the ``dashscope`` package data; the 0.5b / 3b / 7b presets)."""


@dataclass
class VisionConfig:
    backbone: str = "resnet18"
    """Image trunk by name (``odvla.model.backbone.BACKBONES``: resnet18, resnet34, resnet50, resnet101; resnet101
    for the real presets). The backbone owns its input normalisation."""
    backbone_weights: Optional[str] = None
    """Local file with torchvision ResNet weights (state dict); None = random init."""
    frozen_stages: int = -1
    """ResNet stages that never train, as mmdet counts them: -1 none, 0 the stem, k the stem and stages 1..k (UniAD
    and BEVFormer use 1 for their ResNet-101). Frozen stages keep their BatchNorm statistics and cost no backward."""
    fpn_channels: int = 32
    image_height: int = 64
    image_width: int = 112
    """Network input size; shards keep full-size images, the data pipeline resizes."""
    bev_x_range: tuple = (-51.2, 51.2)
    bev_y_range: tuple = (-51.2, 51.2)
    bev_z_range: tuple = (-3.0, 3.0)
    bev_resolution: float = 3.2
    """Metres per BEV cell, same in x and y."""
    bev_z_points: int = 4
    bev_channels: int = 32
    num_scene_queries: int = 4
    num_agent_queries: int = 16
    num_agent_tokens: int = 4
    """Top-k confident agent queries that become LLM tokens."""
    num_map_queries: int = 8
    map_points: int = 10
    decoder_layers: int = 1
    decoder_heads: int = 4
    fuse_prev_bev: bool = True
    agent_future_steps: int = 6
    agent_query_init: str = "learned"
    """Where the agent query slots start: 'learned' (DETR / UniAD: learned embeddings, absolute box centres) or
    'heatmap' (TransFusion: free slots start at the top peaks of a dense BEV centre heatmap, trained with
    CenterNet's focal loss inside ``det``, and predict centres as offsets from them; a tracked slot takes the peak
    nearest to its last centre moved by its velocity and the ego motion). See ``odvla.model.agent_proposals``."""
    track_birth_score: float = 0.4
    """Inference tracker (UniAD ``RuntimeTrackerBase`` ``score_thresh``): an untracked slot scoring at least this
    starts a new track (new id) that is carried to the next keyframe; a tracked slot scoring at least this is
    confirmed (its miss count resets)."""
    track_keep_score: float = 0.35
    """UniAD's ``filter_score_thresh``: a tracked slot scoring below this counts one miss."""
    track_miss_tolerance: int = 5
    """UniAD's ``miss_tolerance``: a track with this many consecutive misses ends (its slot is freed)."""


@dataclass
class TextConfig:
    traj_encoding: str = "absolute"
    """'absolute' (released OpenDriveVLA form), 'delta' (per-step displacements), 'residual' (per-step
    displacements minus the constant-velocity step; see ``odvla.model.traj_codec``) or 'action' (one token per
    0.5-s step naming an entry of a learned motion codebook; ``odvla.model.action_codebook``)."""
    action_codebook: Optional[str] = None
    """'action': the codebook file. None: ``<data.shards>/action_codebook.json`` (``odvla codebook fit`` writes it;
    training fills the path in, an export carries its own copy in its tokenizer folder)."""
    action_codebook_size: int = 2048
    """'action': entries of the codebook, so action tokens ``<act_0>`` .. added to the vocabulary."""
    traj_decimals: int = 2
    compact_tokens: bool = False
    """Add dedicated number tokens to the vocabulary (fewer decode steps per trajectory)."""
    number_choice: str = "argmax"
    """How constrained decoding picks each number token: 'argmax' (greedy) or 'median' of the slot's distribution
    in value order (compact tokens only; ``odvla.model.constrained_decoding``)."""
    ego_token: bool = False
    """Planning prompts carry an ``<EGO>`` embedding of the numeric ego state (``odvla.model.ego_token``)."""
    prompt: str = "reference"
    """Prompt layout: 'released' (the released OpenDriveVLA system text, one-line ego state, ``<trajectory>`` token
    and added-token order; ``odvla.model.prompt_released``; default of the real presets) or 'reference' (this
    project's multi-line layout, ``odvla.model.prompt``)."""
    ego_text: bool = True
    """The 'reference' planning prompt writes the ego state as six text lines. False (needs ``ego_token``): the
    ``<EGO>`` embedding alone carries it (``tiny``: the lines were a third of its prompt)."""
    system: str = "full"
    """System text of the 'reference' layout: 'full' (what the model sees, the frame, the answer format and its
    encoding) or 'short' (one sentence; ``tiny``'s, where the constant full text was most of each prompt's tokens).
    The 'released' layout always uses the released text."""
    max_prompt_tokens: int = 1024
    max_answer_tokens: int = 384
    """Longest target answer (tokens); generated captions run to ~180 tokens with the offline BPE."""


@dataclass
class ModelConfig:
    preset: str = "tiny"
    llm: LLMConfig = field(default_factory=LLMConfig)
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    gradient_checkpointing: bool = False
    dtype: str = "float32"
    """float32 or bfloat16 (weights of an export and of a serve replica)."""
