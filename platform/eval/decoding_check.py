"""Constrained decoding against the model's own greedy answers: how often the model writes a parsable trajectory by
itself, and whether the grammar changes anything where it does.

``OpenDriveVLA.generate`` keeps planning answers inside the trajectory grammar (``model/constrained_decoding.py``),
so with it every answer parses by construction: a parse rate of 100 % says nothing about the model. These figures
say what the constraint adds: the unconstrained parse rate (the same greedy decoding without the logits processor)
and, for the rows whose unconstrained answer parses, the share whose constrained answer is the same text (with
``number_choice='argmax'`` the grammar only removes continuations the model did not take, so it should be 1).
"""
from __future__ import annotations

from typing import Optional


def decoding_comparison(model, rows: list[dict], max_new_tokens: Optional[int] = None, batch_size: int = 8,
                        prefix: str = "decoding/", collate_fn=None) -> dict:
    """``rows``: planning rows batched by ``collate_fn`` (default ``collate.collate`` of training-ready rows from
    ``collate.rows_from_table``; ``serve.deployment.collate_items`` for ``serve.preprocess.scene_item`` items). Returns ``{prefix}rows``, ``{prefix}parse_rate_constrained``,
    ``{prefix}parse_rate_unconstrained`` (0..1) and ``{prefix}same_where_unconstrained_parses`` (share of those rows
    whose two answers are the same text; NaN when none parses), plus the answers under ``{prefix}answers`` (list of
    (constrained, unconstrained) pairs)."""
    import torch

    from odvla.platform.data.collate import collate

    collate_fn = collate_fn or collate
    pairs, ok_c, ok_u = [], [], []
    for i in range(0, len(rows), batch_size):
        batch = collate_fn(rows[i:i + batch_size])
        with torch.no_grad():
            con = model.generate(batch, max_new_tokens=max_new_tokens, constrained=True)
            unc = model.generate(batch, max_new_tokens=max_new_tokens, constrained=False)
        pairs += list(zip(con.answers, unc.answers))
        ok_c += [bool(p) for p in con.parsed]
        ok_u += [bool(p) for p in unc.parsed]
    n = len(pairs)
    same = [a == b for (a, b), u in zip(pairs, ok_u) if u]
    return {f"{prefix}rows": float(n),
            f"{prefix}parse_rate_constrained": sum(ok_c) / n if n else float("nan"),
            f"{prefix}parse_rate_unconstrained": sum(ok_u) / n if n else float("nan"),
            f"{prefix}same_where_unconstrained_parses": sum(same) / len(same) if same else float("nan"),
            f"{prefix}answers": pairs}
