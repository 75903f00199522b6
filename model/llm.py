"""The language model: Qwen2 (Qwen2.5-Instruct) through ``transformers``' ``Qwen2ForCausalLM``.

``llm.path`` set: weights from that local HF directory. Otherwise random init with the preset's dimensions (tiny).
The embedding matrix grows when the tokenizer has more entries than the model (added placeholder / trajectory /
compact number tokens); new rows start at the mean of the old ones (``mean_resizing``).
"""
from __future__ import annotations

import warnings

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

QWEN25_OFFICIAL = {
    "0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
                 rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", params=494_032_768),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
               num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1_000_000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu", params=3_085_938_688),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=152064, max_position_embeddings=32768, rope_theta=1_000_000.0,
               rms_norm_eps=1e-6, tie_word_embeddings=False, hidden_act="silu", params=7_615_616_512),
}
"""Qwen2.5-{0.5B,3B,7B}-Instruct as released. Source: ``config.json`` of Qwen/Qwen2.5-0.5B-Instruct,
Qwen/Qwen2.5-3B-Instruct and Qwen/Qwen2.5-7B-Instruct on the Hugging Face hub (the model cards: 0.49B / 3.09B /
7.61B parameters, 0.36B / 2.77B / 6.53B non-embedding). ``params`` = the exact total of those configs with Qwen2's
q/k/v biases, the count of the released safetensors."""

_RANDOM_INIT_WARNED: set = set()

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
"""``model.dtype`` name -> torch dtype (the export's weight dtype)."""


def qwen2_config(model_cfg, tokenizer) -> Qwen2Config:
    """Qwen2Config from ``model_cfg.llm``; ``vocab_size`` 0 = the tokenizer's size rounded up to a multiple of 64."""
    llm = model_cfg.llm
    vocab = int(llm.vocab_size) or -(-len(tokenizer) // 64) * 64
    if vocab < len(tokenizer):
        vocab = -(-len(tokenizer) // 64) * 64
    return Qwen2Config(
        vocab_size=vocab, hidden_size=llm.hidden_size, intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers, num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads, max_position_embeddings=llm.max_position_embeddings,
        rope_theta=llm.rope_theta, rms_norm_eps=llm.rms_norm_eps, tie_word_embeddings=llm.tie_word_embeddings,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
        use_cache=True,
    )


def build_llm(model_cfg, tokenizer) -> Qwen2ForCausalLM:
    """Qwen2ForCausalLM for ``model_cfg`` (float32 weights; the caller casts for bf16), vocabulary >= tokenizer."""
    if model_cfg.llm.path:
        model = Qwen2ForCausalLM.from_pretrained(model_cfg.llm.path, dtype=torch.float32)
    else:
        preset = getattr(model_cfg, "preset", "")
        if preset in QWEN25_OFFICIAL and preset not in _RANDOM_INIT_WARNED:
            _RANDOM_INIT_WARNED.add(preset)
            warnings.warn(f"model preset {preset!r} has no model.llm.path: its Qwen2.5 LLM starts from RANDOM "
                          f"weights (set model.llm.path to a local Qwen2.5-{preset.upper()}-Instruct folder to "
                          f"start from the released weights)", UserWarning, stacklevel=2)
        model = Qwen2ForCausalLM(qwen2_config(model_cfg, tokenizer))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
