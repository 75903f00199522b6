"""Constrained decoding in a serving batch: rows in different states mask exactly as each row would alone.

The trajectory logits processor builds one mask for the whole batch (allowed ids gathered as tensors per grammar
state, scattered in one call); a batch must not change any row's answer. No Ray.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from odvla.model.config import ModelConfig
from odvla.model.constrained_decoding import TrajectoryGrammar, TrajectoryLogitsProcessor
from odvla.model.tokenizer import build_tokenizer
from odvla.model.traj_codec import TrajectoryCodec


@pytest.mark.parametrize("compact, choice", [(False, "argmax"), (True, "argmax"), (True, "median")])
def test_batched_masks_equal_per_row_masks(compact, choice):
    cfg = ModelConfig()
    cfg.text.compact_tokens = compact
    tk = build_tokenizer(cfg)
    g = TrajectoryGrammar(tk, TrajectoryCodec(cfg.text))
    vocab = len(tk)
    tasks = ["planning", "qa", "planning", "qa", "planning"]
    budget = g.min_to_finish(g.start()) + 4  # tight: the budget cut-off is exercised on the planning rows
    batch = TrajectoryLogitsProcessor(g, tasks, tk.eos_token_id, budget, number_choice=choice)
    alone = [TrajectoryLogitsProcessor(g, [t], tk.eos_token_id, budget, number_choice=choice) for t in tasks]
    r = np.random.default_rng(0)
    ids = torch.zeros((len(tasks), 0), dtype=torch.long)
    modes = set()
    for step in range(budget):
        scores = torch.tensor(r.normal(size=(len(tasks), vocab)), dtype=torch.float32)
        if step == 1:  # a qa row opens a trajectory of its own: it is constrained from there on
            scores[1, g.start_id] = 100.0
        out = batch(ids, scores.clone())
        for b, proc in enumerate(alone):
            torch.testing.assert_close(out[b:b + 1], proc(ids[b:b + 1], scores[b:b + 1].clone()), rtol=0, atol=0)
        modes.update(batch.mode)
        nxt = out.argmax(1, keepdim=True)
        ids = torch.cat([ids, nxt], 1)
    assert {"traj", "free"} <= modes  # both kinds of rows were in the batch
    for b, t in enumerate(tasks):
        if t == "planning":  # every planning row ended with a parsable trajectory inside the budget
            row = ids[b].tolist()
            row = row[:row.index(tk.eos_token_id)] if tk.eos_token_id in row else row  # <traj_end> may be last
            text = tk.decode(row, skip_special_tokens=True)
            assert TrajectoryCodec(cfg.text).decode(text).shape == (6, 2), text
