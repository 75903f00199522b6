"""Qwen2.5's vocabulary built offline from the dashscope package data: ids, added tokens, round trips, bad input."""
from __future__ import annotations

import json

import pytest

from odvla.model.config import ModelConfig
from odvla.model.prompt import PLACEHOLDERS
from odvla.model.prompt_released import RELEASED_ADDED_TOKENS
from odvla.model.tokenizer import (QWEN25_ADDED_TOKENS, QWEN25_BASE_VOCAB, TokenizerSourceError, build_tokenizer,
                                   qwen25_ranks_path, qwen25_tokenizer, read_bpe_ranks)

TEXTS = [
    "Hello world",
    "Planning trajectory: <trajectory>",
    "<traj_start>[(0.12,-3.40),(-0.00,7.25),(1.50,12.99)]<traj_end>",
    "Ego states: - Velocity (vx,vy): (0.00,3.73) - Heading Angular Velocity (v_yaw): (-0.01)",
    "  leading spaces,\ttabs\nand\r\nnewlines  ",
    "Ünïcödé – 自动驾驶 🚗 ¿qué? don't we'll I'm",
    "x" * 300 + " 1234567890 3.14159",
]


@pytest.fixture(scope="session")
def qwen():
    return qwen25_tokenizer()


def _released_cfg(**text) -> ModelConfig:
    cfg = ModelConfig()
    cfg.llm.tokenizer = "qwen2.5"
    cfg.llm.vocab_size = 151936
    cfg.text.prompt = "released"
    for k, v in text.items():
        setattr(cfg.text, k, v)
    return cfg


def test_known_strings_encode_to_qwen25_ids(qwen):
    ids = lambda s: qwen(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert ids("Hello world") == [9707, 1879]
    assert ids("123") == [16, 17, 18]  # every digit its own token, '0' is 15
    assert ids("<|endoftext|><|im_start|><|im_end|>") == [151643, 151644, 151645]
    for i, (t, _) in enumerate(QWEN25_ADDED_TOKENS):
        assert qwen.convert_tokens_to_ids(t) == 151643 + i
    assert len(qwen) == 151665
    assert (qwen.eos_token_id, qwen.pad_token_id) == (151645, 151643)
    chat = qwen.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                    tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    default = qwen.apply_chat_template([{"role": "user", "content": "U"}], tokenize=False)
    assert default.startswith("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud.")


def test_same_ids_as_tiktoken_on_the_same_ranks(qwen):
    """The BPE built with ``tokenizers`` merges exactly as tiktoken does on Qwen's ranks and split pattern."""
    import tiktoken  # the qwen extra (pyproject.toml)
    from odvla.model.tokenizer import QWEN2_SPLIT

    enc = tiktoken.Encoding("qwen", pat_str=QWEN2_SPLIT, mergeable_ranks=read_bpe_ranks(qwen25_ranks_path()),
                            special_tokens={})
    for text in TEXTS:
        assert qwen(text, add_special_tokens=False)["input_ids"] == enc.encode(text), text


@pytest.mark.parametrize("text", TEXTS)
def test_decode_encode_roundtrip(qwen, text):
    assert qwen.decode(qwen(text, add_special_tokens=False)["input_ids"]) == text


def test_model_tokens_come_after_qwen25_and_move_nothing(qwen):
    base = qwen.get_vocab()
    for cfg, first in ((_released_cfg(), RELEASED_ADDED_TOKENS + PLACEHOLDERS),
                       (_released_cfg(compact_tokens=True), RELEASED_ADDED_TOKENS + PLACEHOLDERS)):
        tok = build_tokenizer(cfg)
        vocab = tok.get_vocab()
        assert all(vocab[t] == i for t, i in base.items())  # no existing id moved
        added = sorted((i, t) for t, i in vocab.items() if t not in base)
        assert [i for i, _ in added] == list(range(151665, 151665 + len(added)))
        assert [t for _, t in added[:len(first)]] == list(first)
        assert tok.convert_tokens_to_ids("<trajectory>") == 151665
        assert tok.convert_tokens_to_ids("<traj_start>") == 151668
        text = "Planning trajectory: <trajectory>"
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(build_tokenizer(_released_cfg())) <= 151936  # fits Qwen2.5-0.5B/3B's embedding without resizing


def test_cache_file_keyed_by_ranks_hash(tmp_path, monkeypatch, qwen):
    from odvla.model.tokenizer import _qwen25_json

    monkeypatch.setenv("ODVLA_CACHE_DIR", str(tmp_path))
    built = _qwen25_json.__wrapped__(str(qwen25_ranks_path()))
    files = list((tmp_path / "tokenizers").glob("qwen2.5-*.json"))
    assert len(files) == 1 and files[0].read_text() == built
    assert _qwen25_json.__wrapped__(str(qwen25_ranks_path())) == built  # read back from the cache
    files[0].write_text(built[:1000])  # a truncated entry is rebuilt, not trusted
    assert _qwen25_json.__wrapped__(str(qwen25_ranks_path())) == built


def test_bad_llm_path_and_vocabulary_that_does_not_fit(tmp_path):
    cfg = _released_cfg()
    cfg.llm.path = str(tmp_path / "missing")
    with pytest.raises(TokenizerSourceError, match="model.llm.path .*missing.* not a directory"):
        build_tokenizer(cfg)
    llama = tmp_path / "llama"
    llama.mkdir()
    (llama / "config.json").write_text(json.dumps({"model_type": "llama"}))
    cfg.llm.path = str(llama)
    with pytest.raises(TokenizerSourceError, match="model.llm.path .*llama.* not a Qwen2 folder.*'llama'"):
        build_tokenizer(cfg)
    (llama / "config.json").write_text("{not json")
    with pytest.raises(TokenizerSourceError, match="model.llm.path .*cannot read config.json"):
        build_tokenizer(cfg)
    small = _released_cfg()
    small.llm.vocab_size = 1000
    with pytest.raises(ValueError, match="model.llm.vocab_size 1000 .*151665 ids"):
        build_tokenizer(small)
    bad = tmp_path / "bad.tiktoken"
    bad.write_bytes(b"IQ== 0\nnot-base64!! x\n")
    with pytest.raises(TokenizerSourceError, match="bad.tiktoken: line 2"):
        read_bpe_ranks(bad)


def test_ranks_file_is_package_data_without_importing_dashscope():
    import subprocess
    import sys

    code = ("import sys; from odvla.model.tokenizer import qwen25_ranks_path; p = qwen25_ranks_path(); "
            "assert p.name == 'qwen.tiktoken', p; assert 'dashscope' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)
    assert QWEN25_BASE_VOCAB == len(read_bpe_ranks(qwen25_ranks_path()))
