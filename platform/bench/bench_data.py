"""Data: samples/s of the Ray Data pipeline vs a plain single-process nuScenes-devkit loop on the same samples.

Both sides build the same per-sample content: six JPEGs decoded and resized to the model input, each straight into
its camera's slot of a uint8 channel-last ``[6, H, W, 3]`` as a training row carries it (the same
``image_ops.decode_resize(..., out=)``; the batch views it channel-first, the vision encoder normalises on its
device), scaled intrinsics, camera extrinsics, agent boxes in the ego frame and the future ego waypoints. The Ray
side reads the prepared shards (geometry precomputed by ``odvla prepare``) and decodes in ``map_batches`` on
``--workers`` decode actors (``decode_pool``), collating model batches; the devkit side walks the tables with
``NuScenes.get_sample_data`` / ``get_boxes`` in one process. Without ``--shards`` a synthetic dataroot is written
and prepared first (not timed).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from odvla.platform.config.args import add_config_args, config_from_args


def add_args(p) -> None:
    add_config_args(p)
    p.add_argument("--shards", help="prepared shards (default: synthesise + prepare into a temp folder)")
    p.add_argument("--split", default="train")
    p.add_argument("--scenes", type=int, default=4, help="synthetic scenes when no --shards (default: 4)")
    p.add_argument("--keyframes", type=int, default=20)
    p.add_argument("--image-size", default="400x225", metavar="WxH", help="synthetic JPEG size")
    p.add_argument("--samples", type=int, default=0, help="limit to the first N samples (0 = all)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="decode batch = iteration batch (default: data.decode_batch_size)")
    p.add_argument("--workers", type=int, default=2, help="Ray CPUs / concurrent decode tasks")
    p.add_argument("--epochs", type=int, default=2,
                   help="passes over the split on one Ray cluster, as a training run of several epochs makes "
                        "(default: 2; the first pass writes every block to fresh object-store pages)")


def _devkit_loop(dataroot: str, version: str, tokens: list[str], hw: tuple[int, int]) -> tuple[float, float]:
    """Seconds to load the devkit, seconds to build every sample with it."""
    from nuscenes.nuscenes import NuScenes
    from pyquaternion import Quaternion

    from odvla.model.constants import CAMERAS
    from odvla.platform.data.image_ops import decode_resize, scale_intrinsics

    t0 = time.perf_counter()
    nusc = NuScenes(version=version, dataroot=dataroot, verbose=False)
    t1 = time.perf_counter()
    for tok in tokens:
        s = nusc.get("sample", tok)
        imgs, Ks = np.empty((len(CAMERAS), hw[0], hw[1], 3), np.uint8), []  # as build_rows: channel-last
        for c, cam in enumerate(CAMERAS):
            path, _, K = nusc.get_sample_data(s["data"][cam])
            sd = nusc.get("sample_data", s["data"][cam])
            decode_resize(path, hw, sample_token=tok, out=imgs[c])
            Ks.append(scale_intrinsics(K, (sd["height"], sd["width"]), hw))
            nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
        pose = nusc.get("ego_pose", nusc.get("sample_data", s["data"]["LIDAR_TOP"])["ego_pose_token"])
        q = Quaternion(pose["rotation"]).inverse
        for box in nusc.get_boxes(s["data"]["LIDAR_TOP"]):
            box.translate(-np.array(pose["translation"]))
            box.rotate(q)
            nusc.box_velocity(box.token)
        nxt, fut = s["next"], []
        while nxt and len(fut) < 6:
            ns = nusc.get("sample", nxt)
            p = nusc.get("ego_pose", nusc.get("sample_data", ns["data"]["LIDAR_TOP"])["ego_pose_token"])
            fut.append(q.rotate(np.array(p["translation"]) - pose["translation"])[:2])
            nxt = ns["next"]
    return t1 - t0, time.perf_counter() - t1


def _one_pass(ds, bs: int, collate) -> tuple[int, float]:
    """Iterate ``ds`` once as a train worker does (``iter_torch_batches`` + ``collate``): (samples, samples/s after
    the first batch). The first batch waits for the decode actors to start; the rest is the pipeline's pace."""
    n, t_first, bs_first = 0, None, 0
    for b in ds.iter_torch_batches(batch_size=bs, collate_fn=collate):
        n += len(b["sample_token"])
        if t_first is None:
            t_first, bs_first = time.perf_counter(), n
    steady = (n - bs_first) / max(time.perf_counter() - t_first, 1e-9) if t_first else float("nan")
    return n, steady


def _stage_costs(table, dataroot: str, spec, n: int) -> dict[str, float]:
    """Milliseconds per sample of each step of one decode task and of the consumer, in this process, on the first
    ``n`` samples: JPEG decode + resize (6 cameras, each into its slot of a fresh channel-last image array allocated
    as ``build_rows`` allocates it), the rest of ``build_rows`` (geometry, padding, text), the Arrow block Ray Data
    stores, block -> numpy (what the consumer gets) and ``collate`` (numpy -> torch, images viewed channel-first)."""
    import os

    import pyarrow as pa
    from ray.data.block import BlockAccessor

    from odvla.platform.data.collate import collate
    from odvla.platform.data.image_ops import decode_resize
    from odvla.platform.data.rows import SHARD_COLUMNS, build_rows

    t = table.select(SHARD_COLUMNS).slice(0, n)
    for col in ("task", "question", "answer"):
        t = t.append_column(col, pa.array([""] * t.num_rows, pa.string()))
    paths = [os.path.join(dataroot, p) for ps in t.column("cam_paths").to_pylist() for p in ps]
    H, W = spec.image_hw
    clock = time.perf_counter
    t0 = clock()
    imgs = np.empty((len(paths), H, W, 3), np.uint8)  # allocated as build_rows does
    for p, dst in zip(paths, imgs):
        decode_resize(p, spec.image_hw, out=dst)
    t1 = clock()
    rows = build_rows(t, dataroot, spec)
    t2 = clock()
    block = BlockAccessor.batch_to_block(rows)
    t3 = clock()
    batch = BlockAccessor.for_block(block).to_numpy()
    t4 = clock()
    collate(batch)
    t5 = clock()
    ms = 1e3 / max(t.num_rows, 1)
    return {"decode + resize (6 JPEGs)": (t1 - t0) * ms,
            "rest of build_rows (geometry, padding)": max(t2 - t1 - (t1 - t0), 0) * ms,
            "rows -> Arrow block": (t3 - t2) * ms, "block -> numpy": (t4 - t3) * ms, "collate -> torch": (t5 - t4) * ms}


def run(args) -> int:
    import ray

    from odvla.platform.data.collate import collate
    from odvla.platform.data.pipeline import build_dataset
    from odvla.platform.data.shards import read_manifest, read_split

    cfg = config_from_args(args)
    bs = int(args.batch_size or cfg.data.decode_batch_size)
    tmp = None
    shards = args.shards
    if not shards:
        from odvla.platform.data.prepare import prepare
        from odvla.platform.data.synth import write_synthetic

        tmp = tempfile.TemporaryDirectory(prefix="odvla-bench-data-")
        w, h = (int(x) for x in args.image_size.lower().split("x"))
        root = write_synthetic(Path(tmp.name) / "nuscenes", scenes=args.scenes, keyframes=args.keyframes,
                               image_wh=(w, h))
        shards = str(Path(tmp.name) / "shards")
        prepare(root, "v1.0-mini", shards, num_workers=0, progress=False)
    man = read_manifest(shards)
    cfg.data.shards = shards
    cfg.data.decode_concurrency = args.workers
    cfg.data.decode_batch_size = bs
    table = read_split(shards, args.split)
    if args.samples:
        table = table.slice(0, args.samples)
        # the pipeline reads whole shards: restrict it to the same rows through a one-example-per-sample table
    tokens = table["sample_token"].to_pylist()
    hw = (cfg.model.vision.image_height, cfg.model.vision.image_width)

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        import pyarrow as pa

        examples = None
        if args.samples:
            n = len(tokens)
            examples = pa.table({"sample_token": tokens, "task": ["planning"] * n, "question": [""] * n,
                                 "answer": [""] * n})
        t0 = time.perf_counter()
        passes = [_one_pass(build_dataset(cfg.data, cfg.model.vision, args.split, examples=examples), bs, collate)
                  for _ in range(max(int(args.epochs), 1))]
        t_ray = time.perf_counter() - t0
        n_ray = sum(n for n, _ in passes)
    finally:
        if started:
            ray.shutdown()
    t_load, t_dev = _devkit_loop(man["dataroot"], man["version"], tokens, hw)
    ray_sps, dev_sps = n_ray / t_ray, len(tokens) / t_dev
    print(f"data bench: {len(tokens)} samples of '{args.split}', images -> {hw[0]}x{hw[1]}, "
          f"batch {bs}, {args.workers} Ray CPU(s)")
    print(f"{'path':<44}{'samples':>8}{'seconds':>10}{'samples/s':>11}")
    print(f"{'ray data pipeline (end to end, incl. start)':<44}{n_ray:>8}{t_ray:>10.2f}{ray_sps:>11.1f}")
    for k, (_, steady) in enumerate(passes):
        print(f"{f'ray data pipeline (pass {k + 1}, after first batch)':<44}{'':>8}{'':>10}{steady:>11.1f}")
    print(f"{'devkit single-process loop':<44}{len(tokens):>8}{t_dev:>10.2f}{dev_sps:>11.1f}")
    print(f"{'  (+ NuScenes table load, not counted)':<44}{'':>8}{t_load:>10.2f}")
    print(f"ratio ray/devkit: {ray_sps / dev_sps:.2f}x end to end, "
          + ", ".join(f"{st / dev_sps:.2f}x in pass {k + 1}" for k, (_, st) in enumerate(passes))
          + " after the first batch")
    from odvla.platform.data.rows import RowSpec

    costs = _stage_costs(table, man["dataroot"], RowSpec.from_config(cfg.data, cfg.model.vision), bs)
    print("where a sample's time goes (ms per sample, one process): "
          + ", ".join(f"{k} {v:.2f}" for k, v in costs.items()))
    if tmp is not None:
        tmp.cleanup()
    return 0
