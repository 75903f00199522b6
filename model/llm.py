"""The language model: Qwen2 (Qwen2.5-Instruct) through ``transformers``' ``Qwen2ForCausalLM``.

``llm.path`` set: weights from that local HF directory. Otherwise random init with the preset's dimensions (tiny).
The embedding matrix grows when the tokenizer has more entries than the model (added placeholder / trajectory /
compact number tokens); new rows start at the mean of the old ones (``mean_resizing``).
"""
from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

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
        model = Qwen2ForCausalLM(qwen2_config(model_cfg, tokenizer))
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64, mean_resizing=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
