"""Offline tokenizer, chat inputs and the constrained-decoding grammar (no network, tiny preset)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from odvla.model.config import ModelConfig, TextConfig
from odvla.model.constrained_decoding import DONE, TrajectoryGrammar, TrajectoryLogitsProcessor
from odvla.model.text_inputs import IGNORE_INDEX, ChatEncoder
from odvla.model.tokenizer import IM_END, build_tokenizer
from odvla.model.traj_codec import TrajectoryCodec


def _cfg(**text) -> ModelConfig:
    cfg = ModelConfig()
    for k, v in text.items():
        setattr(cfg.text, k, v)
    return cfg


def _batch(cfg, B=2, tasks=None, seed=0):
    rng = np.random.default_rng(seed)
    tasks = tasks or ["planning"] * B
    speed = rng.uniform(2, 10, B)
    steps = np.arange(1, 7) * 0.5
    fut = np.stack([speed[:, None] * steps, rng.normal(0, 0.3, (B, 1)) * steps ** 2], -1)
    return {
        "ego_state": torch.tensor(np.stack([speed, 0 * speed, 0 * speed, 0 * speed, 0 * speed, speed, 0 * speed], 1),
                                  dtype=torch.float32),
        "command": torch.full((B,), 2), "past_traj": torch.zeros(B, 4, 2), "past_mask": torch.ones(B, 4),
        "future_traj": torch.tensor(fut, dtype=torch.float32), "future_mask": torch.ones(B, 6),
        "sample_token": [f"s{i}" for i in range(B)], "task": tasks,
        "question": ["" if t == "planning" else "How many cars are there?" for t in tasks],
        "answer": ["" if t == "planning" else "There are 3 cars." for t in tasks],
    }


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(ModelConfig())


def test_digits_split_and_special_tokens(tok):
    ids = tok("speed 123.45", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert [p for p in pieces if p.isdigit()] == ["1", "2", "3", "4", "5"]
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<SCENE>", "<TRACK>", "<MAP>", "<scene_start>",
              "<map_end>", "<traj_start>", "<traj_end>"):
        assert tok(t, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(t)], t
    assert tok.eos_token == IM_END and tok.pad_token == "<|endoftext|>" and tok.padding_side == "left"
    chat = tok.apply_chat_template([{"role": "system", "content": "S"}, {"role": "user", "content": "U"}],
                                   tokenize=False, add_generation_prompt=True)
    assert chat == "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU<|im_end|>\n<|im_start|>assistant\n"
    # trajectory markers survive decoding of answers
    s = TrajectoryCodec(TextConfig()).encode(np.ones((6, 2)))
    assert tok.decode(tok(s + IM_END, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == s


def test_deterministic_and_save_roundtrip(tok, tmp_path):
    from odvla.model.tokenizer import _trained_bpe_json, train_offline_bpe
    from transformers import AutoTokenizer

    _trained_bpe_json.cache_clear()
    again = build_tokenizer(ModelConfig())
    assert again.get_vocab() == tok.get_vocab()
    assert len(train_offline_bpe(400)) < len(tok)
    tok.save_pretrained(tmp_path / "tok")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    text = "<traj_start>[(0.12,-3.40)]<traj_end> <SCENE><SCENE> How many cars?"
    assert loaded(text)["input_ids"] == tok(text)["input_ids"]
    assert loaded.chat_template == tok.chat_template
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast.from_pretrained(tmp_path / "tok")  # how an export is loaded back
    assert (fast.padding_side, fast.eos_token, fast.pad_token) == ("left", "<|im_end|>", "<|endoftext|>")
    assert fast.get_added_vocab() == tok.get_added_vocab()


def test_compact_tokens_cut_decode_steps_by_half():
    rng = np.random.default_rng(0)
    counts = {}
    for compact in (False, True):
        cfg = _cfg(compact_tokens=compact)
        tk, codec = build_tokenizer(cfg), TrajectoryCodec(cfg.text)
        n = [len(tk(codec.encode(np.cumsum(rng.normal([2.5, 0], [1.5, 0.4], (6, 2)), 0)),
                    add_special_tokens=False)["input_ids"]) for _ in range(50)]
        counts[compact] = float(np.mean(n))
    assert counts[True] == 26
    assert counts[False] >= 2 * counts[True]


def test_chat_inputs_labels_only_on_answer(tok):
    cfg = ModelConfig()
    enc = ChatEncoder(tok, cfg)
    batch = _batch(cfg, 3, tasks=["planning", "qa", "planning"])
    tb = enc.encode(batch, with_answers=True)
    B, L = tb.input_ids.shape
    assert tb.labels.shape == (B, L) and tb.attention_mask.shape == (B, L)
    for b in range(B):
        ids = tb.input_ids[b][tb.attention_mask[b].bool()].tolist()
        # placeholders expanded to the configured numbers of visual tokens
        for ph, n in (("<SCENE>", cfg.vision.num_scene_queries), ("<TRACK>", cfg.vision.num_agent_tokens),
                      ("<MAP>", cfg.vision.num_map_queries)):
            assert ids.count(tok.convert_tokens_to_ids(ph)) == n
        sup = tb.labels[b] != IGNORE_INDEX
        assert int(sup.sum()) == tb.answer_lengths[b]
        target = tok.decode(tb.labels[b][sup].tolist())
        assert target == enc.answer_text(batch, b) + IM_END
        # left padding, positions count real tokens only
        assert int(tb.position_ids[b, -1]) == int(tb.attention_mask[b].sum()) - 1
    assert enc.answer_text(batch, 0) == TrajectoryCodec(cfg.text).encode(batch["future_traj"][0].numpy())
    assert enc.answer_text(batch, 1) == "There are 3 cars."


def test_chat_inputs_mask_invalid_waypoints_and_errors(tok):
    cfg = ModelConfig()
    enc = ChatEncoder(tok, cfg)
    batch = _batch(cfg, 1)
    full = int((enc.encode(batch, True).labels != IGNORE_INDEX).sum())
    batch["future_mask"][0, 4:] = 0  # scene ends after 2 s: the last two waypoints are padding
    part = enc.encode(batch, True).labels[0]
    kept = tok.decode([t for t in part.tolist() if t != IGNORE_INDEX])
    assert int((part != IGNORE_INDEX).sum()) < full - 8
    pts = TrajectoryCodec(cfg.text).point_spans(enc.answer_text(batch, 0))
    text = enc.answer_text(batch, 0)
    # a token shared with a masked waypoint ("),(") is masked too
    assert text[pts[3][0]:pts[3][1] - 1] in kept and text[pts[5][0]:pts[5][1]] not in kept
    bad = _batch(cfg, 2, tasks=["planning", "qa"])
    bad["answer"][1] = ""
    with pytest.raises(ValueError, match="sample 's1'.*empty answer"):
        enc.encode(bad, True)
    cfg.text.max_prompt_tokens = 50
    with pytest.raises(ValueError, match="sample 's0': prompt has .* tokens"):
        ChatEncoder(tok, cfg).encode(_batch(cfg, 1), False)


@pytest.mark.parametrize("text", [dict(), dict(traj_encoding="delta", traj_decimals=1), dict(compact_tokens=True)])
def test_grammar_accepts_encodings_and_finishes_within_budget(text):
    cfg = _cfg(**text)
    tk = build_tokenizer(cfg)
    codec = TrajectoryCodec(cfg.text)
    g = TrajectoryGrammar(tk, codec)
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = codec.encode(np.cumsum(rng.normal([3, 0], [2, 1], (6, 2)), 0))
        st = g.start()
        for tid in tk(s, add_special_tokens=False)["input_ids"]:
            st = g.advance(st, tid)
            assert st is not None, s
        assert st == DONE
    # a token outside the grammar is rejected
    assert g.advance(g.advance(g.start(), g.start_id), tk.convert_tokens_to_ids("<SCENE>")) is None
    # random walks through the allowed tokens under a tight budget always end in a parsable trajectory
    budget = g.min_to_finish(g.start()) + 3
    for seed in range(30):
        r = np.random.default_rng(seed)
        proc = TrajectoryLogitsProcessor(g, ["planning"], tk.eos_token_id, budget)
        ids = torch.zeros((1, 0), dtype=torch.long)
        vocab = len(tk)
        for _ in range(budget):
            scores = proc(ids, torch.tensor(r.normal(size=(1, vocab)), dtype=torch.float32))
            nxt = int(scores.argmax())
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
            if nxt == tk.eos_token_id:
                break
        out = tk.decode(ids[0].tolist(), skip_special_tokens=True)
        assert codec.decode(out).shape == (6, 2), out
    with pytest.raises(ValueError, match="max_new_tokens"):
        TrajectoryLogitsProcessor(g, ["planning"], tk.eos_token_id, 5)


def test_median_number_choice_picks_the_median_not_the_spike():
    """A slot with 40 % on <+0> and 60 % spread evenly over <-1>..<-6>: the arg-max writes <+0>, the median <-2>
    (in value order <-6> .. <-1>, <+0> the cumulative probability reaches 1/2 at <-2>)."""
    cfg = _cfg(compact_tokens=True)
    tk = build_tokenizer(cfg)
    g = TrajectoryGrammar(tk, TrajectoryCodec(cfg.text))
    tid = tk.convert_tokens_to_ids
    assert g.int_ids_by_value[:2] == [tid("<-99>"), tid("<-98>")]
    assert g.int_ids_by_value[98:102] == [tid("<-1>"), tid("<-0>"), tid("<+0>"), tid("<+1>")]
    vocab = len(tk)
    probs = torch.full((vocab,), 1e-9)
    probs[tid("<+0>")] = 0.4
    for k in range(1, 7):
        probs[tid(f"<-{k}>")] = 0.1
    scores = probs.log()[None]
    ids = torch.tensor([[g.start_id]])
    picked = {}
    for choice in ("argmax", "median"):
        proc = TrajectoryLogitsProcessor(g, ["planning"], tk.eos_token_id, 40, number_choice=choice)
        out = proc(ids, scores.clone())
        picked[choice] = tk.convert_ids_to_tokens(int(out.argmax()))
        assert (out > -1e30).sum() == (1 if choice == "median" else len(g.int_ids))
    assert picked == {"argmax": "<+0>", "median": "<-2>"}
    # a whole generation under 'median' still parses
    proc = TrajectoryLogitsProcessor(g, ["planning"], tk.eos_token_id, 40, number_choice="median")
    gen = torch.zeros((1, 0), dtype=torch.long)
    r = np.random.default_rng(0)
    for _ in range(40):
        nxt = int(proc(gen, torch.tensor(r.normal(size=(1, vocab)), dtype=torch.float32)).argmax())
        gen = torch.cat([gen, torch.tensor([[nxt]])], 1)
        if nxt == tk.eos_token_id:
            break
    assert TrajectoryCodec(cfg.text).decode(tk.decode(gen[0].tolist(), skip_special_tokens=True)).shape == (6, 2)
    with pytest.raises(ValueError, match="compact_tokens"):
        TrajectoryLogitsProcessor(TrajectoryGrammar(tk, TrajectoryCodec(_cfg().text)), ["planning"],
                                  tk.eos_token_id, 100, number_choice="median")
    with pytest.raises(ValueError, match="number_choice"):
        TrajectoryLogitsProcessor(g, ["planning"], tk.eos_token_id, 40, number_choice="mean")
