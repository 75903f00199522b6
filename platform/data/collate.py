"""Collate training-ready rows into the model's batch (``model/batch.py``): torch tensors + lists of text.

``collate`` accepts what each consumer has at hand: a numpy batch (``dict`` column -> array, as Ray Data's
``iter_batches(batch_format='numpy')`` and ``iter_torch_batches(collate_fn=collate)`` give), a pandas DataFrame,
or a list of per-sample dicts (``rows_from_table``).

Rows carry images channel-last, uint8 ``[6, H, W, 3]`` (``[T, 6, H, W, 3]`` in clip rows), as the decode workers
write them; the batch presents the model's ``[B, 6, 3, H, W]`` (``[B, T, 6, 3, H, W]``) as a view of the same
memory (``images_chw``: non-contiguous, channel-last strides). Elementwise ops keep those strides and conv2d takes
them (as channels_last); a consumer that needs contiguous memory calls ``.contiguous()`` on the tensor.
"""
from __future__ import annotations

import numpy as np
import torch
from ray.data.collate_fn import NumpyBatchCollateFn

from odvla.model.batch import OPTIONAL_TENSOR_KEYS, TENSOR_KEYS, TEXT_KEYS
from odvla.model.clip_batch import CLIP_KEY
from odvla.platform.data.rows import RowSpec, build_rows

INT_KEYS = {"command", "gt_labels", "gt_map_labels", "frame_index", "gt_instance"}
UINT8_KEYS = {"images"}
"""Kept as uint8 (raw RGB, ``model/batch.py``): the vision encoder normalises them on its device."""


def images_chw(images) -> torch.Tensor:
    """Channel-last uint8 images ``[..., H, W, 3]`` (numpy or torch) -> the batch's ``[..., 3, H, W]`` as a view of
    the same memory (no copy; ``torch.from_numpy`` shares a numpy array's buffer)."""
    t = images if torch.is_tensor(images) else torch.from_numpy(np.asarray(images))
    if t.dim() < 3 or t.shape[-1] != 3:
        raise ValueError(f"collate: images of shape {tuple(t.shape)} are not channel-last [..., H, W, 3] "
                         "(rows carry [6, H, W, 3], see odvla.platform.data.rows)")
    return t.movedim(-1, -3)


def _dtype(key: str, arr: np.ndarray) -> torch.dtype:
    if key in INT_KEYS:
        return torch.int64
    if key in UINT8_KEYS and arr.dtype == np.uint8:
        return torch.uint8
    return torch.float32


def _columns(rows) -> dict:
    if isinstance(rows, dict):
        return rows
    if isinstance(rows, list):
        if not rows:
            raise ValueError("collate: empty list of rows")
        return {k: [r[k] for r in rows] for k in rows[0]}
    if hasattr(rows, "columns") and hasattr(rows, "to_numpy"):  # pandas.DataFrame
        return {c: rows[c].to_numpy() for c in rows.columns}
    raise TypeError(f"collate: unsupported batch type {type(rows).__name__}")


class Collate(NumpyBatchCollateFn):
    """Callable collate (a ``NumpyBatchCollateFn`` so Ray Data hands it numpy batches)."""

    def __call__(self, rows) -> dict:
        cols = _columns(rows)
        missing = [k for k in TENSOR_KEYS + TEXT_KEYS if k not in cols]
        if missing:
            raise KeyError(f"collate: batch lacks field(s) {', '.join(missing)}")
        out = {}
        clip = CLIP_KEY in cols  # clip rows (odvla.model.clip_batch): tensors [T, ...], text [T] per row
        for k in TENSOR_KEYS + tuple(k for k in OPTIONAL_TENSOR_KEYS if k in cols):
            v = cols[k]
            if isinstance(v, np.ndarray) and v.dtype != object:
                arr = v
            else:
                arr = np.stack([np.asarray(x) for x in v])
            if arr.dtype == object:  # e.g. an object array of equal-shape per-row arrays
                arr = arr.astype(np.int64 if k in INT_KEYS else np.float32)
            if not arr.flags.writeable:
                arr = arr.copy()
            out[k] = torch.as_tensor(arr, dtype=_dtype(k, arr))
            if k == "images":
                out[k] = images_chw(out[k])
        for k in TEXT_KEYS:
            out[k] = [[str(y) for y in x] for x in cols[k]] if clip else [str(x) for x in cols[k]]
        if clip:
            out[CLIP_KEY] = torch.as_tensor(np.stack([np.asarray(x, dtype=bool) for x in cols[CLIP_KEY]]))
        return out


collate = Collate()
"""``collate(rows) -> dict``: the model batch (see ``Collate``)."""


def rows_from_table(table, dataroot, spec: RowSpec) -> list[dict]:
    """Single-process path (eval, serve, bench): shard rows -> training-ready per-sample dicts.

    ``table`` needs the shard columns used by the pipeline; rows without ``task``/``question``/``answer`` become
    'planning' rows. Images are decoded and resized exactly as in ``pipeline.build_dataset`` (``spec``:
    ``RowSpec.from_config(data, vision)``), channel-last uint8 ``[6, H, W, 3]`` per row like the pipeline's rows;
    ``collate`` turns them into the batch's ``[B, 6, 3, H, W]``.
    """
    import pyarrow as pa

    n = table.num_rows
    for k, default in (("task", "planning"), ("question", ""), ("answer", "")):
        if k not in table.column_names:
            table = table.append_column(k, pa.array([default] * n, pa.string()))
    cols = build_rows(table, str(dataroot), spec)
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]
