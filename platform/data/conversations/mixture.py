"""A stage's training examples: conversations expanded into single-turn (question, answer) rows and sampled by
the stage's mixture weights (``StageConfig.mixture``).

Weight semantics: for a task with ``n`` available examples, weight ``w`` selects ``round(w * n)`` of them --
``w = 1`` each example once, ``0.3`` a random 30 %, ``2.5`` every example twice plus a random half. Tasks:
``caption_scene``, ``caption_agent``, ``caption_map``, ``qa``, ``interaction``, ``planning`` (one row per shard
sample of the split, question and answer '' -- the model builds the prompt and encodes the recorded future) and
``external`` (all imported public sets). Planning records in the store (GPT-Driver, LLaVA placeholders) keep the
reference targets for users and are not extra planning rows.

The effective mixture is in the table's schema metadata under ``odvla.mixture`` (``mixture_counts(table)``):
{task: {"weight", "available", "selected"}}; the caller logs it.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from odvla.model.tasks import TASKS

from .generate import generate_from_table, read_shard_split
from .schema import conversations_dir, read_split_conversations

if TYPE_CHECKING:
    from odvla.platform.config.schema import DataConfig, StageConfig

log = logging.getLogger(__name__)

EXAMPLE_SCHEMA = pa.schema([("sample_token", pa.string()), ("task", pa.string()), ("question", pa.string()),
                            ("answer", pa.string())])
MIXTURE_META_KEY = b"odvla.mixture"
_IMAGE_TAG = re.compile(r"\s*<image>\s*")


def strip_image_tag(text: str) -> str:
    """Remove LLaVA's '<image>' placeholders (the model inserts its own visual tokens)."""
    return _IMAGE_TAG.sub(" ", text).strip()


def expand_turns(conv: pa.Table) -> dict[str, list[dict]]:
    """Conversation rows -> single-turn examples per task: each (human, gpt) pair is one example."""
    pools: dict[str, list[dict]] = {t: [] for t in TASKS}
    for tok, task, turns in zip(conv.column("sample_token").to_pylist(), conv.column("task").to_pylist(),
                                conv.column("turns").to_pylist()):
        if task == "planning":
            continue
        for h, g in zip(turns[0::2], turns[1::2]):
            pools[task].append({"sample_token": tok, "task": task, "question": strip_image_tag(h["value"]),
                                "answer": g["value"].strip()})
    return pools


def _split_tokens(shards_dir: Path, split: str) -> list[str]:
    return read_shard_split(shards_dir, split, columns=["sample_token"]).column(0).to_pylist()


def _check_mixture(mixture: dict) -> dict[str, float]:
    unknown = sorted(set(mixture) - set(TASKS))
    if unknown:
        raise ValueError(f"stage.mixture names unknown tasks {unknown}; known tasks: {list(TASKS)}")
    out = {}
    for task, w in mixture.items():
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not np.isfinite(w) or w < 0:
            raise ValueError(f"stage.mixture.{task} = {w!r}: expected a finite number >= 0")
        out[task] = float(w)
    return out


def build_examples(shards_dir: str | Path, split: str, mixture: dict[str, float], seed: int = 0,
                   conversations: str | Path | None = None) -> pa.Table:
    """Examples (columns ``sample_token, task, question, answer``) of ``split`` sampled by ``mixture``.

    Reads ``<conversations or shards_dir/conversations>/<split>/*.parquet``; when no generated file is there the
    generated tasks are built in memory from the shards (same records as ``odvla instructions`` writes).
    Deterministic for ``seed``. The effective counts are in the metadata (``mixture_counts``).
    """
    weights = _check_mixture(mixture)
    shards_dir = Path(shards_dir)
    conv_dir = Path(conversations) if conversations else conversations_dir(shards_dir)
    conv = read_split_conversations(conv_dir, split)
    generated_needed = any(w > 0 for t, w in weights.items() if t not in ("planning", "external"))
    if generated_needed and not (conv_dir / split / "generated.parquet").is_file():
        log.info("no generated conversations under %s; generating them from the %s shards", conv_dir, split)
        conv = pa.concat_tables([conv, generate_from_table(read_shard_split(shards_dir, split), seed)])
    tokens = _split_tokens(shards_dir, split)
    stale = sorted(set(conv.column("sample_token").to_pylist()) - set(tokens))
    if stale:
        raise ValueError(f"{conv_dir / split}: {len(stale)} conversation samples are not in the {split!r} shards "
                         f"of {shards_dir} (e.g. {', '.join(stale[:3])}); the shards were re-prepared -- "
                         "re-run `odvla instructions`")
    pools = expand_turns(conv)
    if weights.get("planning", 0) > 0:
        pools["planning"] = [{"sample_token": t, "task": "planning", "question": "", "answer": ""} for t in tokens]
    rng = np.random.default_rng(seed)
    rows, counts = [], {}
    for task in TASKS:
        w = weights.get(task, 0.0)
        pool = pools[task]
        n = len(pool)
        k = int(round(w * n))
        if w > 0 and n == 0:
            log.warning("mixture task %r has weight %s but no examples in split %r", task, w, split)
        idx = np.concatenate([np.tile(np.arange(n), k // n) if n else np.zeros(0, int),
                              np.sort(rng.choice(n, k % n, replace=False)) if n else np.zeros(0, int)])
        rows += [pool[i] for i in idx]
        if task in weights:
            counts[task] = {"weight": w, "available": n, "selected": int(len(idx))}
    order = rng.permutation(len(rows))
    table = pa.Table.from_pylist([rows[i] for i in order], schema=EXAMPLE_SCHEMA)
    meta = {MIXTURE_META_KEY: json.dumps({"split": split, "seed": seed, "tasks": counts}, sort_keys=True).encode()}
    return table.replace_schema_metadata(meta)


def mixture_counts(table: pa.Table) -> dict[str, dict]:
    """{task: {"weight", "available", "selected"}} recorded by ``build_examples``."""
    raw = (table.schema.metadata or {}).get(MIXTURE_META_KEY)
    if raw is None:
        raise ValueError("table carries no mixture metadata (not built by build_examples)")
    return json.loads(raw)["tasks"]


def examples_for_stage(data: DataConfig, stage: StageConfig, seed: int, split: str) -> pa.Table:
    """``build_examples`` of a stage: shards ``data.shards``, store ``data.instructions`` (default beside the
    shards), weights ``stage.mixture``, ``seed`` (``train.seed``)."""
    if not data.shards:
        raise ValueError("data.shards is not set: examples are built from prepared shards")
    return build_examples(data.shards, split, dict(stage.mixture), seed=seed, conversations=data.instructions)
