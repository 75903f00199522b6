"""The Ray Data pipeline: Parquet shards -> a stream of training-ready rows for Ray Train.

The split's shard rows (paths and geometry, no images) are read on the driver and cut into blocks of
``data.decode_batch_size`` rows; one ``map_batches`` stage on a pool of decode actors (``decode_pool``) decodes +
resizes the six JPEGs of each sample (kept uint8: the vision encoder normalises them on its device), scales the
intrinsics and pads agents/map elements (``rows.build_rows``), and expands each sample into its examples when an
example table is given (images decoded once per sample).
Train workers take their part with ``ray.train.get_dataset_shard(name).iter_torch_batches(collate_fn=collate)``.
"""
from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from odvla.platform.data.errors import UnknownSampleError
from odvla.platform.data.rows import SHARD_COLUMNS, TEXT_FIELDS, RowSpec, build_rows
from odvla.platform.data.decode_pool import decode_map
from odvla.platform.data.shards import read_manifest, read_split

if TYPE_CHECKING:
    from odvla.model.config import VisionConfig
    from odvla.platform.config.schema import DataConfig

EXAMPLE_COLUMNS = ("sample_token", "task", "question", "answer")


def resolve_dataroot(data: DataConfig) -> str:
    """The dataroot the shards' image paths are relative to: ``data.dataroot`` or the manifest's of ``data.shards``."""
    if data.dataroot:
        return str(data.dataroot)
    return str(read_manifest(data.shards)["dataroot"])


def _examples_by_sample(data: DataConfig, split: str, examples: pa.Table) -> dict[str, list[tuple[str, str, str]]]:
    missing = [c for c in EXAMPLE_COLUMNS if c not in examples.column_names]
    if missing:
        raise ValueError(f"examples table lacks column(s) {', '.join(missing)}")
    cols = {c: examples.column(c).to_pylist() for c in EXAMPLE_COLUMNS}
    known: set[str] = set()
    here: set[str] = set()
    import pyarrow.parquet as pq
    from pathlib import Path

    for d in (Path(data.shards) / s for s in ("train", "val", "test")):
        for f in sorted(d.glob("*.parquet")) if d.is_dir() else []:
            toks = pq.read_table(f, columns=["sample_token"]).column(0).to_pylist()
            known.update(toks)
            if d.name == split:
                here.update(toks)
    by: dict[str, list] = defaultdict(list)
    for tok, task, q, a in zip(*(cols[c] for c in EXAMPLE_COLUMNS)):
        if tok not in known:
            raise UnknownSampleError("an example refers to a sample that no shard holds", sample_token=tok,
                                     path=str(data.shards))
        if tok in here:  # examples of the other splits belong to their own datasets
            by[tok].append((task, q or "", a or ""))
    return dict(by)


def _prepare_batch(batch: pa.Table, dataroot: str, spec: RowSpec, examples) -> pa.Table:
    """map_batches UDF: shard rows -> training rows (expanded into examples when given), as an Arrow block with
    tensor columns (also when no row of the batch has an example: an empty block of the same schema)."""
    from ray.data.block import BlockAccessor

    n = batch.num_rows
    if examples is None:
        reps = [[("planning", "", "")] for _ in range(n)]
    else:
        reps = [examples.get(t, []) for t in batch.column("sample_token").to_pylist()]
    take = [i for i, r in enumerate(reps) if r]
    if len(take) < n:
        batch = batch.take(pa.array(take, pa.int64()))
        reps = [reps[i] for i in take]
    batch = batch.append_column("task", pa.array([""] * batch.num_rows, pa.string()))
    batch = batch.append_column("question", pa.array([""] * batch.num_rows, pa.string()))
    batch = batch.append_column("answer", pa.array([""] * batch.num_rows, pa.string()))
    out = build_rows(batch, dataroot, spec)
    idx = np.array([i for i, r in enumerate(reps) for _ in r], dtype=np.int64)
    identity = len(idx) == batch.num_rows and bool((idx == np.arange(len(idx))).all())
    res = out if identity else {k: v[idx] for k, v in out.items()}  # one example per row: no 20 MB/row copy
    flat = [e for r in reps for e in r]
    for j, k in enumerate(("task", "question", "answer")):
        res[k] = np.array([e[j] for e in flat], dtype=object)
    if len(idx) == 0:  # Arrow cannot type an empty tensor column: build one row's schema, keep zero rows
        one = {k: (np.zeros((1,) + v.shape[1:], v.dtype) if v.dtype != object else np.array([""], object))
               for k, v in res.items()}
        return BlockAccessor.batch_to_block(one).slice(0, 0)
    return BlockAccessor.batch_to_block(res)


def build_dataset(data: DataConfig, vision: VisionConfig, split: str, examples: pa.Table | None = None):
    """A ``ray.data.Dataset`` of training-ready rows of ``split`` (see ``model/batch.py`` for the fields): the shards
    of ``data.shards``, images resized to ``vision``'s network size (``RowSpec.from_config(data, vision)``).

    ``examples`` (columns sample_token, task, question, answer) expands each sample into its examples (samples
    without examples are not part of this dataset); ``None`` gives one 'planning' row per sample with empty
    question and answer. Shards of another schema version or example tokens that no shard holds raise errors
    naming the file / token.
    """
    import ray

    if not data.shards:
        raise ValueError("data.shards is not set (run `odvla prepare` and pass --set data.shards=DIR)")
    dataroot = resolve_dataroot(data)
    spec = RowSpec.from_config(data, vision)
    by_sample = _examples_by_sample(data, split, examples) if examples is not None else None
    if int(data.clip_len) != 1:  # rows are scene clips (odvla.platform.data.clips)
        from odvla.platform.data.clips import build_clip_dataset

        return build_clip_dataset(data, spec, split, by_sample, dataroot)
    # the split's rows without images (paths and geometry, about 3 kB a sample) are read here and cut into blocks of
    # one decode batch, so the decode actors start on the first block at once and run in parallel
    bs = max(int(data.decode_batch_size), 1)
    table = read_split(data.shards, split, columns=SHARD_COLUMNS)
    blocks = [table.slice(i, bs) for i in range(0, table.num_rows, bs)] or [table]
    return decode_map(ray.data.from_arrow(blocks), _prepare_batch, data.decode_concurrency, bs,
                      dataroot=dataroot, spec=spec, examples=by_sample)


__all__ = ["build_dataset", "resolve_dataroot", "TEXT_FIELDS"]
