"""``odvla prepare``: a nuScenes dataroot -> Parquet shards, one row per keyframe (``shard_schema.SCHEMA``).

Scenes are processed in parallel by Ray tasks (each worker loads the devkit once and keeps it); the driver
writes ``out/<split>/part-*.parquet`` and ``out/manifest.json``. Writing is atomic: shards go to a staging folder
inside ``out`` and replace the previous split folders only when every scene succeeded, the manifest last, so an
interrupted or failed run leaves the previous output (or nothing) and can simply be rerun.

Splits: a synthetic dataroot records its own (``odvla_split.json``); a real one uses the official scene lists of
``nuscenes.utils.splits`` (``mini_train``/``mini_val`` for v1.0-mini, ``train``/``val`` for v1.0-trainval).
"""
from __future__ import annotations

import json
import os
import shutil
import time
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from odvla.platform.data.errors import DataError, MissingTableError, NotNuScenesError
from odvla.platform.data.records import COMMAND_THRESHOLD
from odvla.platform.data.shard_schema import SCHEMA, SCHEMA_VERSION
from odvla.platform.data.shards import MANIFEST, write_json_atomic, write_table_atomic

TABLES = ("category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose", "log",
          "scene", "sample", "sample_data", "sample_annotation", "map")
SPLIT_FILE = "odvla_split.json"
"""A dataroot's own scene split (JSON ``{"train": [scene names], "val": [...], "test": [...]}``, lists optional),
written by ``synth.py``; when present it wins over the official scene lists."""
COMMAND_RULE = (f"lateral offset y of the last valid future waypoint (3 s): y > {COMMAND_THRESHOLD} m turn left, "
                f"y < -{COMMAND_THRESHOLD} m turn right, else keep forward")


def check_dataroot(dataroot, version: str) -> None:
    """Raise ``NotNuScenesError`` / ``MissingTableError`` (naming the path) unless ``dataroot`` holds the tables
    of ``version`` and the map-expansion JSON of every log location."""
    root = Path(dataroot)
    if not root.is_dir():
        raise NotNuScenesError("dataroot is not a folder", path=str(root))
    tdir = root / version
    if not tdir.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise NotNuScenesError(f"not a nuScenes dataroot: no table folder '{version}'"
                               + (f" (found {', '.join(found)})" if found else ""), path=str(tdir))
    for t in TABLES:
        if not (tdir / f"{t}.json").is_file():
            raise MissingTableError(f"nuScenes table '{t}' is missing", path=str(tdir / f"{t}.json"))
    try:
        logs = json.loads((tdir / "log.json").read_text())
    except json.JSONDecodeError as e:
        raise MissingTableError(f"nuScenes table 'log' is not valid JSON: {e}", path=str(tdir / "log.json")) from None
    for loc in sorted({lg["location"] for lg in logs}):
        p = root / "maps" / "expansion" / f"{loc}.json"
        if not p.is_file():
            raise MissingTableError(f"map expansion for '{loc}' is missing (install the nuScenes map expansion)",
                                    path=str(p))


def load_nuscenes(dataroot, version: str):
    """``NuScenes`` for a checked dataroot; a table that is not valid JSON is reported by name."""
    from nuscenes.nuscenes import NuScenes

    check_dataroot(dataroot, version)
    try:
        return NuScenes(version=version, dataroot=str(dataroot), verbose=False)
    except (json.JSONDecodeError, KeyError, AssertionError) as e:
        for t in TABLES:
            p = Path(dataroot) / version / f"{t}.json"
            try:
                json.loads(p.read_text())
            except json.JSONDecodeError as je:
                raise MissingTableError(f"nuScenes table '{t}' is not valid JSON: {je}", path=str(p)) from None
        raise MissingTableError(f"nuScenes tables are inconsistent: {e!r}", path=str(Path(dataroot) / version)) from e


def scene_splits(dataroot, version: str, scene_names: list[str]) -> tuple[dict[str, str], str]:
    """Scene name -> split, and where the split came from."""
    f = Path(dataroot) / SPLIT_FILE
    if f.is_file():
        rec = json.loads(f.read_text())
        m = {n: s for s in ("train", "val", "test") for n in rec.get(s, [])}
        source = SPLIT_FILE
    else:
        from nuscenes.utils.splits import create_splits_scenes

        off = create_splits_scenes(verbose=False)
        keys = {"v1.0-mini": ("mini_train", "mini_val", None), "v1.0-trainval": ("train", "val", None),
                "v1.0-test": (None, None, "test")}.get(version, ("train", "val", "test"))
        m = {}
        for split, key in zip(("train", "val", "test"), keys):
            for n in off.get(key, []) if key else []:
                m[n] = split
        source = "nuscenes.utils.splits"
    missing = [n for n in scene_names if n not in m]
    if missing:
        raise DataError(f"{len(missing)} scene(s) are in no split of {source}: {', '.join(missing[:5])}",
                        path=str(dataroot))
    return m, source


# ---- worker side ------------------------------------------------------------------------------------------------
_CACHE: dict = {}


def _worker_state(dataroot: str, version: str):
    key = (dataroot, version)
    if key not in _CACHE:
        from nuscenes.map_expansion.map_api import NuScenesMap

        from odvla.platform.data.map_polylines import MapIndex
        from odvla.platform.data.records import CanBus

        nusc = load_nuscenes(dataroot, version)
        maps = {}
        for loc in sorted({lg["location"] for lg in nusc.log}):
            maps[loc] = MapIndex(NuScenesMap(dataroot=dataroot, map_name=loc))
        _CACHE[key] = (nusc, maps, CanBus(dataroot))
    return _CACHE[key]


def process_scenes(dataroot: str, version: str, items: list[tuple[str, str]], map_range) -> tuple[pa.Table, list]:
    """Records of the scenes ``items`` = [(scene_token, split)] as a SCHEMA table, plus per-scene notes."""
    from odvla.platform.data.records import scene_records

    nusc, maps, can = _worker_state(dataroot, version)
    rows, notes = [], []
    for scene_token, split in items:
        loc = nusc.get("log", nusc.get("scene", scene_token)["log_token"])["location"]
        recs, note = scene_records(nusc, scene_token, split, maps[loc], dataroot, can, tuple(map_range))
        rows += recs
        notes.append(note)
    return pa.Table.from_pylist(rows, schema=SCHEMA), notes


# ---- driver -------------------------------------------------------------------------------------------------------
def prepare(dataroot, version: str = "v1.0-mini", out="shards", rows_per_shard: int = 256, num_workers: int = 2,
            map_range: tuple[float, float] = (30.0, 15.0), progress: bool = True) -> dict:
    """Write the shards of every scene of ``dataroot``/``version`` under ``out``; return the manifest (a report).

    ``num_workers`` Ray tasks run at once (a local Ray with that many CPUs is started when none is running);
    0 processes in this process (debugging). ``map_range``: half extents (x, y) in metres of the map patch.
    """
    t0 = time.time()
    dataroot = str(Path(dataroot).resolve())
    out = Path(out)
    check_dataroot(dataroot, version)
    scenes = json.loads((Path(dataroot) / version / "scene.json").read_text())
    splits, split_source = scene_splits(dataroot, version, [s["name"] for s in scenes])
    items = [(s["token"], splits[s["name"]]) for s in scenes]
    chunks = [items[i:i + 1] for i in range(len(items))]
    results: list[tuple[pa.Table, list]] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(chunks), desc="prepare scenes", unit="scene")
    try:
        if num_workers <= 0:
            for c in chunks:
                results.append(process_scenes(dataroot, version, c, map_range))
                bar and bar.update(1)
        else:
            results = _run_ray(dataroot, version, chunks, map_range, num_workers, bar)
    finally:
        if bar is not None:
            bar.close()
    table = pa.concat_tables([t for t, _ in results]) if results else SCHEMA.empty_table()
    notes = [n for _, ns in results for n in ns]
    manifest = _write(table, out, rows_per_shard)
    manifest.update({
        "dataroot": dataroot, "version": version, "split_source": split_source, "command_rule": COMMAND_RULE,
        "map_range": list(map_range), "ego_state_source": {n["scene"]: n["ego_state_source"] for n in notes},
        "seconds": round(time.time() - t0, 2)})
    write_json_atomic(manifest, out / MANIFEST)
    return manifest


def _run_ray(dataroot, version, chunks, map_range, num_workers, bar):
    import ray

    started = False
    if not ray.is_initialized():
        ray.init(num_cpus=num_workers, include_dashboard=False, log_to_driver=False, configure_logging=False)
        started = True
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(process_scenes)
        # bounded in flight so a big dataroot does not queue every scene at once
        pending, results, order = [], {}, {}
        it = iter(enumerate(chunks))
        for i, c in it:
            ref = task.remote(dataroot, version, c, list(map_range))
            order[ref] = i
            pending.append(ref)
            if len(pending) >= 4 * num_workers:
                break
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                try:
                    results[order.pop(ref)] = ray.get(ref)
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, DataError):
                        raise cause from None
                    raise
                if bar is not None:
                    bar.update(1)
            for i, c in it:
                ref = task.remote(dataroot, version, c, list(map_range))
                order[ref] = i
                pending.append(ref)
                break
        return [results[i] for i in sorted(results)]
    finally:
        if started:
            ray.shutdown()


def _write(table: pa.Table, out: Path, rows_per_shard: int) -> dict:
    """Write shards per split into a staging folder, then swap them in; returns the split part of the manifest."""
    out.mkdir(parents=True, exist_ok=True)
    stage = out / f".staging-{uuid.uuid4().hex[:8]}"
    old = []
    try:
        stage.mkdir()
        splits = {}
        for split in sorted(set(table.column("split").to_pylist())):
            t = table.filter(pc.equal(table["split"], split))
            t = t.sort_by([("scene_name", "ascending"), ("frame_index", "ascending")])
            (stage / split).mkdir()
            files = []
            for i, start in enumerate(range(0, t.num_rows, max(rows_per_shard, 1))):
                name = f"part-{i:05d}.parquet"
                write_table_atomic(t.slice(start, rows_per_shard), stage / split / name)
                files.append(name)
            splits[split] = {"samples": t.num_rows, "scenes": len(set(t.column("scene_token").to_pylist())),
                             "files": files}
        for split in ("train", "val", "test"):
            if (out / split).exists():
                dst = out / f".old-{uuid.uuid4().hex[:8]}-{split}"
                os.replace(out / split, dst)
                old.append(dst)
            if split in splits:
                os.replace(stage / split, out / split)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        for d in old:
            shutil.rmtree(d, ignore_errors=True)
    return {"schema_version": SCHEMA_VERSION, "splits": splits}
