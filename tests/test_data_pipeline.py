"""The Ray Data pipeline and collate: batch contract, equality with the single-process path, worker shards,
example expansion, image ops."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from odvla.model.batch import TENSOR_KEYS, TEXT_KEYS
from odvla.platform.data.collate import collate, images_chw, rows_from_table
from odvla.platform.data.rows import RowSpec
from odvla.platform.data.image_ops import decode_resize, scale_intrinsics
from odvla.platform.data.rows import resample_polyline
from odvla.platform.data.shards import read_split


@pytest.fixture(scope="module")
def cfg(shards_dir):
    from odvla.platform.config import load_config

    return load_config(model="tiny", overrides=[f"data.shards={shards_dir}", "data.decode_batch_size=8"])


@pytest.fixture(scope="module")
def val_rows(cfg, ray_session):
    from odvla.platform.data.pipeline import build_dataset

    return build_dataset(cfg.data, cfg.model.vision, "val").take_all()


def test_worker_shards_follow_the_contract(cfg, ray_session):
    """As Ray Train's get_dataset_shard: each of 2 workers takes a streaming_split part with
    iter_torch_batches(collate_fn=collate); batches follow model/batch.py and the parts cover every row once."""
    import threading

    from odvla.platform.data.pipeline import build_dataset

    H, W = cfg.model.vision.image_height, cfg.model.vision.image_width
    Na, Nm, P = cfg.data.max_agents, cfg.data.max_map_elements, cfg.model.vision.map_points
    parts = build_dataset(cfg.data, cfg.model.vision, "train").streaming_split(2, equal=False)
    got, batches, errors = [[], []], [], []

    def consume(i):
        try:
            for b in parts[i].iter_torch_batches(batch_size=16, collate_fn=collate):
                got[i] += b["sample_token"]
                batches.append(b)
        except Exception as e:  # surfaced below
            errors.append(e)

    th = [threading.Thread(target=consume, args=(i,)) for i in range(2)]
    [t.start() for t in th]
    [t.join() for t in th]
    assert not errors, errors
    assert not set(got[0]) & set(got[1])
    assert sorted(got[0] + got[1]) == sorted(read_split(cfg.data.shards, "train")["sample_token"].to_pylist())
    for b in batches:
        B = len(b["sample_token"])
        assert set(b) == set(TENSOR_KEYS) | set(TEXT_KEYS) | {"ego2global", "gt_instance", "vad_ego"}
        shapes = {"images": (B, 6, 3, H, W), "intrinsics": (B, 6, 3, 3), "sensor2ego": (B, 6, 4, 4),
                  "ego_state": (B, 7), "command": (B,), "past_traj": (B, 4, 2), "past_mask": (B, 4),
                  "future_traj": (B, 6, 2), "future_mask": (B, 6), "gt_boxes": (B, Na, 9), "gt_labels": (B, Na),
                  "gt_agent_future": (B, Na, 6, 2), "gt_agent_future_mask": (B, Na, 6),
                  "gt_map_pts": (B, Nm, P, 2), "gt_map_labels": (B, Nm), "frame_index": (B,)}
        for k, shp in shapes.items():
            assert tuple(b[k].shape) == shp, k
            want = torch.int64 if k in ("command", "gt_labels", "gt_map_labels", "frame_index") else \
                torch.uint8 if k == "images" else torch.float32
            assert b[k].dtype == want, k
        assert b["task"] == ["planning"] * B and b["question"] == [""] * B and b["answer"] == [""] * B
        assert float(b["images"].float().std()) > 1.0  # raw RGB (the encoder normalises), not blank
        assert ((b["gt_labels"] >= 0).sum(1) > 0).all() and ((b["gt_map_labels"] >= 0).sum(1) > 0).all()


def test_pipeline_equals_single_process_path(cfg, shards_dir, val_rows):
    from odvla.platform.data.pipeline import resolve_dataroot

    table = read_split(shards_dir, "val").slice(0, 3)
    spec = RowSpec.from_config(cfg.data, cfg.model.vision)
    ref = rows_from_table(table, resolve_dataroot(cfg.data), spec)
    by_tok = {r["sample_token"]: r for r in val_rows}
    assert len(val_rows) == 20
    for r in ref:
        got = by_tok[r["sample_token"]]
        for k in TENSOR_KEYS:
            np.testing.assert_allclose(np.asarray(got[k]), np.asarray(r[k]), atol=1e-6, err_msg=k)
    # the batch of the single-process path collates the same way
    b = collate(ref)
    assert b["images"].shape[0] == 3 and b["sample_token"] == [r["sample_token"] for r in ref]


def test_rows_carry_channel_last_images_and_batches_view_them_channel_first(cfg, shards_dir, synth_root, val_rows):
    """A pipeline row's images are uint8 [6, H, W, 3], as decoded; the collated batch is uint8 [B, 6, 3, H, W] (a
    view of those rows) equal to each camera's decoded picture moved channel-first."""
    H, W = cfg.model.vision.image_height, cfg.model.vision.image_width
    shard = {r["sample_token"]: r for r in read_split(shards_dir, "val").to_pylist()}
    rows = val_rows[:2]
    for r in rows:
        assert r["images"].shape == (6, H, W, 3) and r["images"].dtype == np.uint8
    b = collate(rows)
    assert tuple(b["images"].shape) == (2, 6, 3, H, W) and b["images"].dtype == torch.uint8
    for i, r in enumerate(rows):
        for c in (0, 5):
            chw = decode_resize(synth_root / shard[r["sample_token"]]["cam_paths"][c], (H, W)).transpose(2, 0, 1)
            np.testing.assert_array_equal(b["images"][i, c].numpy(), chw)
    # a Ray Data numpy batch (one array per column) collates to a view of its memory, without a copy
    arrays = {k: np.stack([r[k] for r in rows]) for k in rows[0]}
    b2 = collate(arrays)
    assert b2["images"].data_ptr() == arrays["images"].ctypes.data and not b2["images"].is_contiguous()
    assert torch.equal(b2["images"], b["images"])


def test_padding_and_content(cfg, shards_dir, val_rows):
    shard = {r["sample_token"]: r for r in read_split(shards_dir, "val").to_pylist()}
    for r in val_rows[:5]:
        s = shard[r["sample_token"]]
        det = [c for c in s["agent_class"] if c >= 0]
        n = min(len(det), cfg.data.max_agents)
        assert (r["gt_labels"] >= 0).sum() == n and (r["gt_labels"][n:] == -1).all()
        assert (r["gt_boxes"][n:] == 0).all() and (r["gt_agent_future_mask"][n:] == 0).all()
        d = np.linalg.norm(r["gt_boxes"][:n, :2], axis=1)
        assert (np.diff(d) >= -1e-5).all()  # nearest first
        m = min(len(s["map_class"]), cfg.data.max_map_elements)
        assert (r["gt_map_labels"] >= 0).sum() == m
        np.testing.assert_allclose(r["future_traj"].ravel(), s["future_traj"], atol=1e-6)
        assert r["command"] == s["command"] and r["frame_index"] == s["frame_index"]


def test_examples_expand_samples(cfg, shards_dir, ray_session):
    from odvla.platform.data.pipeline import build_dataset

    toks = read_split(shards_dir, "val")["sample_token"].to_pylist()
    other = read_split(shards_dir, "train")["sample_token"].to_pylist()[0]  # another split's sample: not here
    ex = pa.table({"sample_token": [toks[0], toks[0], toks[5], other], "task": ["qa", "caption_scene", "qa", "qa"],
                   "question": ["q1", "q2", "q3", "q4"], "answer": ["a1", "a2", "a3", "a4"]})
    rows = build_dataset(cfg.data, cfg.model.vision, "val", examples=ex).take_all()
    assert sorted((r["sample_token"], r["task"], r["question"], r["answer"]) for r in rows) == sorted(
        [(toks[0], "qa", "q1", "a1"), (toks[0], "caption_scene", "q2", "a2"), (toks[5], "qa", "q3", "a3")])
    a, b = [r for r in rows if r["sample_token"] == toks[0]]
    np.testing.assert_array_equal(a["images"], b["images"])
    batch = collate({k: np.array([r[k] for r in rows], dtype=object) for k in rows[0]})
    assert batch["images"].shape[0] == 3 and sorted(batch["task"]) == ["caption_scene", "qa", "qa"]
    import pandas as pd

    assert collate(pd.DataFrame(rows))["gt_boxes"].shape[0] == 3


def test_reduced_jpeg_read_matches_a_full_decode_and_resize():
    """At the real presets' size (a 1600 x 900 camera JPEG -> 704 x 384) the DCT-reduced read (decoded at 800 x 450)
    gives the picture a full Pillow decode + bilinear resize gives, to within JPEG rounding."""
    import io

    from PIL import Image

    y, x = np.mgrid[0:900, 0:1600]  # gradients, a wrapping ramp and a box: smooth parts and sharp edges
    rgb = np.stack([(x / 1600 * 255), (y / 900 * 255), ((x + y) % 256)], -1).astype(np.uint8)
    rgb[300:500, 400:700] = (200, 30, 30)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=90)
    data = buf.getvalue()
    fast = decode_resize(data, (384, 704))
    with Image.open(io.BytesIO(data)) as im:
        full = np.asarray(im.convert("RGB").resize((704, 384), Image.BILINEAR))
    assert fast.shape == full.shape == (384, 704, 3) and fast.dtype == np.uint8
    diff = np.abs(fast.astype(int) - full.astype(int))
    assert diff.mean() < 2.0 and np.percentile(diff, 99) < 16, (diff.mean(), np.percentile(diff, 99))


def test_image_ops(synth_root, shards_dir):
    row = read_split(shards_dir, "val").slice(0, 1).to_pylist()[0]
    path = synth_root / row["cam_paths"][0]
    img = decode_resize(path, (64, 112))
    assert img.shape == (64, 112, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(decode_resize(path.read_bytes(), (64, 112)), img)
    buf = np.zeros((2, 64, 112, 3), np.uint8)
    assert np.shares_memory(decode_resize(path, (64, 112), out=buf[1]), buf)  # returns the slot it wrote
    np.testing.assert_array_equal(buf[1], img)  # decoded straight into the slot, the other one untouched
    assert not buf[0].any()
    with pytest.raises(ValueError, match="out must be"):
        decode_resize(path, (64, 112), out=np.zeros((3, 64, 112), np.uint8))  # a channel-first slot is refused
    x = images_chw(buf)
    assert tuple(x.shape) == (2, 3, 64, 112) and x.dtype == torch.uint8 and x[1, 2, 5, 7] == img[5, 7, 2]
    # a point projects to the same relative place in the full and the resized image
    K = np.array(row["cam_intrinsics"][:9]).reshape(3, 3)
    K2 = scale_intrinsics(K, (180, 320), (64, 112))
    p = np.array([2.0, -1.0, 10.0])
    uv, uv2 = (K @ p)[:2] / p[2], (K2 @ p)[:2] / p[2]
    np.testing.assert_allclose(uv2, uv * [112 / 320, 64 / 180], rtol=1e-5)


def test_resample_polyline():
    pts = resample_polyline(np.array([[0.0, 0.0], [3.0, 0.0], [3.0, 3.0]]), 7)
    np.testing.assert_allclose(pts, [[0, 0], [1, 0], [2, 0], [3, 0], [3, 1], [3, 2], [3, 3]], atol=1e-9)
    np.testing.assert_allclose(resample_polyline(np.array([[1.0, 2.0], [1.0, 2.0]]), 3), [[1, 2]] * 3)



def test_decode_stage_runs_on_long_lived_actors_that_reuse_freed_pages(ray_session):
    """The decode stage is a pool of ``decode_concurrency`` actors: every block of the dataset goes through the same
    process, the constructor's arguments reach the function, and the actor's heap hands a freed 40 MB block out
    again without page faults (untuned, glibc maps a block that large afresh and faults every page in again)."""
    import ray

    from odvla.platform.data.decode_pool import decode_map

    def facts(batch, marker: str):  # defined here: travels to the actor by value
        import os
        import resource

        def touch():
            a = np.empty(40 << 20, np.uint8)
            a[::4096] = 1
            return a

        del_me = touch()
        del del_me
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        touch()
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
        n = batch.num_rows
        return pa.table({"marker": [marker] * n, "pid": [os.getpid()] * n, "faults": [faults] * n})

    blocks = [pa.table({"i": list(range(k * 4, k * 4 + 4))}) for k in range(6)]
    rows = decode_map(ray.data.from_arrow(blocks), facts, 1, 4, marker="m").take_all()
    assert len(rows) == 24 and {r["marker"] for r in rows} == {"m"}
    assert len({r["pid"] for r in rows}) == 1  # one actor took all six blocks
    assert max(r["faults"] for r in rows) < 4, rows  # 10240 pages of 4 kB (or 20 huge pages) untuned
    with pytest.raises(ValueError, match="data.decode_concurrency=-1"):
        decode_map(ray.data.from_arrow(blocks), facts, -1, 4, marker="m")


def test_decode_stage_gives_blocks_back_in_input_order(ray_session):
    """Two decode actors: the first block takes a second longer than the rest, so the other actor finishes later
    blocks first. The dataset still yields the input's order, to any consumer (resume and evaluation rely on it)."""
    import ray

    from odvla.platform.data.decode_pool import decode_map

    def slow_first(batch, delay_s: float):
        import time

        if batch.column("i")[0].as_py() == 0:
            time.sleep(delay_s)
        return batch

    blocks = [pa.table({"i": list(range(k * 2, k * 2 + 2))}) for k in range(6)]
    ds = decode_map(ray.data.from_arrow(blocks), slow_first, 2, None, delay_s=1.5)
    assert [r["i"] for r in ds.take_all()] == list(range(12))
