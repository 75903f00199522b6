"""Scene clips for temporal training: each training row is ``data.clip_len`` consecutive keyframes of one scene.

As in UniAD's track training (``queue_length``) and BEVFormer's previous BEV, the row of keyframe ``f`` is the clip
``[f-T+1, ..., f]`` of its scene (``T = data.clip_len``): the earlier frames only build the tracking state, the
last one is the sample (and, with instruction mixtures, carries the example's task / question / answer). Every
keyframe ends exactly one clip, so a stage has as many rows with clips as without, and the first keyframes of a
scene (fewer than ``T-1`` predecessors) are left-padded with copies of the scene's first keyframe in the clip:
a copy at ``frame_index`` 0 restarts the scene state, so the clip is in effect shorter, as UniAD's queue resets at
a scene start. A gap in the keyframe indices is treated like a scene start.

The clips are built from the shards by scene token and keyframe index: the driver reads only the shard columns
(no images), groups the rows by scene and orders them by ``frame_index``; Ray Data then decodes each scene in one
``map_batches`` call (one block per scene), so every image of a scene is decoded once even though overlapping
clips share frames. Shuffling happens downstream on clip rows (the train workers' local shuffle buffer).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from odvla.model.clip_batch import CLIP_KEY
from odvla.platform.data.rows import SHARD_COLUMNS, RowSpec, build_rows

if TYPE_CHECKING:
    from odvla.platform.config.schema import DataConfig

CLIP_LOSSES = ("last", "all")


def clip_windows(frame_index, T: int) -> np.ndarray:
    """[N, T] positions (into the scene's rows ordered by keyframe) of the clip ending at each keyframe.

    ``frame_index`` [N] ascending keyframe indices of one scene. A window only reaches back over consecutive
    indices; earlier slots repeat the first position reached (left padding)."""
    fi = [int(x) for x in frame_index]
    out = np.zeros((len(fi), T), dtype=np.int64)
    for p in range(len(fi)):
        first = p
        while first > 0 and p - first < T - 1 and fi[first - 1] == fi[first] - 1:
            first -= 1
        win = list(range(first, p + 1))
        out[p] = [win[0]] * (T - len(win)) + win
    return out


def supervision(T: int, clip_loss: str) -> np.ndarray:
    """[T] bool: the frames of a clip whose losses count."""
    if clip_loss not in CLIP_LOSSES:
        raise ValueError(f"data.clip_loss={clip_loss!r}: expected one of {', '.join(CLIP_LOSSES)}")
    sup = np.ones(T, dtype=bool) if clip_loss == "all" else np.zeros(T, dtype=bool)
    sup[-1] = True
    return sup


def scene_tables(table: pa.Table) -> list[pa.Table]:
    """Shard rows -> one table per scene (scenes in order of first appearance), rows by ascending ``frame_index``.
    Raises ValueError naming the scene and sample when a keyframe index repeats."""
    scenes = table.column("scene_token").to_pylist()
    frames = table.column("frame_index").to_pylist()
    samples = table.column("sample_token").to_pylist()
    by: dict[str, list[int]] = {}
    for i, s in enumerate(scenes):
        by.setdefault(s, []).append(i)
    out = []
    for scene, rows in by.items():
        rows.sort(key=lambda i: int(frames[i]))
        for a, b in zip(rows, rows[1:]):
            if int(frames[a]) == int(frames[b]):
                raise ValueError(f"scene {scene!r}: samples {samples[a]!r} and {samples[b]!r} share keyframe index "
                                 f"{frames[a]} (shards hold one row per keyframe)")
        out.append(table.take(pa.array(rows, pa.int64())))
    return out


def prepare_scene_clips(batch: pa.Table, dataroot: str, spec: RowSpec, clip_len: int, clip_loss: str,
                        examples) -> pa.Table:
    """map_batches UDF on one scene's shard rows (ascending keyframes): decode every keyframe once, then emit one
    clip row per keyframe (or per example of it, when ``examples`` maps sample tokens to examples). Tensor columns
    are [T, ...] per row, text columns lists of T strings, ``clip_supervised`` [T] bool."""
    from ray.data.block import BlockAccessor

    n = batch.num_rows
    batch = batch.append_column("task", pa.array(["planning"] * n, pa.string()))
    batch = batch.append_column("question", pa.array([""] * n, pa.string()))
    batch = batch.append_column("answer", pa.array([""] * n, pa.string()))
    frames = build_rows(batch, dataroot, spec)  # each keyframe decoded once: [N, ...]
    win = clip_windows(frames["frame_index"], clip_len)  # [N, T]
    tokens = [str(t) for t in frames["sample_token"]]
    reps = ([[("planning", "", "")] for _ in tokens] if examples is None
            else [examples.get(t, []) for t in tokens])
    ends = np.array([p for p, r in enumerate(reps) for _ in r], dtype=np.int64)
    flat = [e for r in reps for e in r]
    sup = supervision(clip_len, clip_loss)
    if len(ends) == 0:  # no example on this scene: an empty block of the clip schema
        ends, flat, empty = np.zeros(1, np.int64), [("planning", "", "")], True
    else:
        empty = False
    idx = win[ends]  # [R, T]
    res = {}
    for k, v in frames.items():
        if v.dtype == object:
            continue
        res[k] = v[idx]  # [R, T, ...]
    for k in ("sample_token", "scene_token"):
        res[k] = np.array([[str(x) for x in frames[k][row]] for row in idx] + [[]], dtype=object)[:-1]
    for j, k in enumerate(("task", "question", "answer")):
        cols = [["planning" if j == 0 else ""] * (clip_len - 1) + [e[j]] for e in flat]
        res[k] = np.array(cols + [[]], dtype=object)[:-1]
    res[CLIP_KEY] = np.broadcast_to(sup, (len(ends), clip_len)).copy()
    block = BlockAccessor.batch_to_block(res)
    return block.slice(0, 0) if empty else block


def build_clip_dataset(data: DataConfig, spec: RowSpec, split: str, by_sample, dataroot: str):
    """A ``ray.data.Dataset`` of clip rows of ``split`` (one block per scene, in shard order of the scenes): clips of
    ``data.clip_len`` keyframes from ``data.shards``, rows sized by ``spec``."""
    import ray

    from odvla.platform.data.decode_pool import decode_map
    from odvla.platform.data.shards import read_split

    T = int(data.clip_len)
    if T < 1:
        raise ValueError(f"data.clip_len={T}: must be >= 1 (1 = single keyframes)")
    supervision(T, data.clip_loss)  # a bad clip_loss fails on the driver, naming the key
    table = read_split(data.shards, split, columns=SHARD_COLUMNS)
    if by_sample is not None:  # scenes without any example of the mixture contribute no rows
        keep = set(by_sample)
        scenes = [t for t in scene_tables(table) if keep & set(t.column("sample_token").to_pylist())]
    else:
        scenes = scene_tables(table)
    if not scenes:
        raise ValueError(f"data.clip_len={T}: no {split} scene in {data.shards}")
    ds = ray.data.from_arrow(scenes)
    return decode_map(ds, prepare_scene_clips, data.decode_concurrency, None, dataroot=dataroot, spec=spec,
                      clip_len=T, clip_loss=str(data.clip_loss), examples=by_sample)
