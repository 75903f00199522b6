"""Write the conversation store beside the shards: generated records for every split, plus whichever public
instruction sets are given, each joined to the shard samples by sample token.

Records whose sample token is not in the shards (another nuScenes version, a test split, an annotation token the
dataroot does not know) are never written and never silently dropped: they are counted per source, with a few
record ids, in the returned report and in ``conversations/manifest.json``.
"""
from __future__ import annotations

import json
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .drivelm import read_drivelm
from .generate import generate_from_table, read_shard_split
from .gpt_driver import read_gpt_driver
from .llava import read_llava
from .nucaption import read_nucaption
from .nuscenes_qa import read_nuscenes_qa
from .nux import read_nux
from .schema import (CONVERSATIONS_VERSION, conversations_dir, read_conversations, records_to_table,
                     write_conversations)
from .tod3cap import annotation_index, read_tod3cap

log = logging.getLogger(__name__)

SIMPLE_READERS: dict[str, Callable[[Path], list[dict]]] = {
    "nuscenes_qa": read_nuscenes_qa, "nux": read_nux, "nucaption": read_nucaption, "drivelm": read_drivelm,
    "llava": read_llava,
}
PUBLIC_SOURCES = ("nuscenes_qa", "tod3cap", "nux", "nucaption", "gpt_driver", "drivelm", "llava")
EXAMPLE_IDS = 5


def shard_splits(shards_dir: Path) -> list[str]:
    """Splits present in a shard folder (sub-folders holding Parquet shards)."""
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        raise FileNotFoundError(f"shard folder not found: {shards_dir}")
    return sorted(p.name for p in shards_dir.iterdir() if p.is_dir() and not p.name.startswith(".")
                  and p.name != "conversations" and any(p.glob("*.parquet")))


class ShardIndex:
    """Sample token -> split, and agent centres per (sample, instance) for naming agents by position."""

    def __init__(self, tables: dict[str, pa.Table]):
        self.split_of: dict[str, str] = {}
        self._agents: dict[str, tuple[list, np.ndarray]] = {}
        self._tables = tables
        for split, t in tables.items():
            for tok in t.column("sample_token").to_pylist():
                self.split_of[tok] = split

    def locate(self, sample_token: str, instance_token: str | None):
        if instance_token is None or sample_token not in self.split_of:
            return None
        if sample_token not in self._agents:
            t = self._tables[self.split_of[sample_token]]
            row = t.filter(pc.equal(t["sample_token"], sample_token)).select(
                ["agent_instance", "agent_boxes"]).to_pylist()[0]
            inst = list(row["agent_instance"] or [])
            boxes = np.asarray(row["agent_boxes"] or [], np.float32).reshape(len(inst), 9)
            self._agents[sample_token] = (inst, boxes)
        inst, boxes = self._agents[sample_token]
        return boxes[inst.index(instance_token), :2] if instance_token in inst else None


def join_to_splits(records: list[dict], index: ShardIndex) -> tuple[dict[str, list[dict]], dict]:
    """Group records by the split of their sample; the rest is counted in the returned 'unmatched' entry."""
    by_split: dict[str, list[dict]] = defaultdict(list)
    unmatched = []
    for r in records:
        split = index.split_of.get(r["sample_token"])
        if split is None:
            unmatched.append(r["record_id"])
        else:
            by_split[split].append(r)
    return by_split, {"records": len(records), "matched": len(records) - len(unmatched),
                      "unmatched": len(unmatched), "unmatched_examples": unmatched[:EXAMPLE_IDS]}


def build_instructions(shards_dir: Path, sources: dict[str, str | Path] | None = None, seed: int = 0,
                       generated: bool = True, dataroot: Path | None = None, version: str | None = None,
                       gpt_driver_split: Path | None = None, out_dir: Path | None = None) -> dict:
    """Write ``<out_dir or shards_dir/conversations>/<split>/<source>.parquet`` and ``manifest.json``.

    sources: public set name (``PUBLIC_SOURCES``) -> file. TOD3Cap also needs ``dataroot`` (and ``version``, read
    from the shard manifest when not given) for its annotation table. Returns the report: per split/source/task
    counts of what is on disk, and per imported source matched/unmatched record counts.
    """
    shards_dir = Path(shards_dir)
    out = Path(out_dir) if out_dir else conversations_dir(shards_dir)
    sources = {k: v for k, v in (sources or {}).items() if v}
    unknown = sorted(set(sources) - set(PUBLIC_SOURCES))
    if unknown:
        raise ValueError(f"unknown instruction sources {unknown}; expected some of {PUBLIC_SOURCES}")
    splits = shard_splits(shards_dir)
    if not splits:
        raise FileNotFoundError(f"no shards under {shards_dir} (run `odvla prepare` first)")
    tables = {s: read_shard_split(shards_dir, s) for s in splits}
    index = ShardIndex(tables)
    imported: dict[str, dict] = {}

    if generated:
        for split, table in tables.items():
            records = generate_from_table(table, seed)
            path = write_conversations(records, out / split / "generated.parquet")
            log.info("%s: %d generated conversation records from %d keyframes (seed %d) -> %s", split,
                     records.num_rows, table.num_rows, seed, path)

    for name, path in sources.items():
        if name == "tod3cap":
            root, ver = _dataroot_and_version(shards_dir, dataroot, version)
            records = read_tod3cap(Path(path), annotation_index(root, ver), index.locate)
        elif name == "gpt_driver":
            records = read_gpt_driver(Path(path), gpt_driver_split)
        else:
            records = SIMPLE_READERS[name](Path(path))
        log.debug("%s: %d records read from %s", name, len(records), path)
        by_split, stats = join_to_splits(records, index)
        stats["file"] = str(path)
        if name == "gpt_driver" and gpt_driver_split:
            stats["split_mismatch"] = sum(1 for s, rs in by_split.items() for r in rs
                                          if json.loads(r["meta"]).get("split") not in (None, s))
        for split in splits:
            target = out / split / f"{name}.parquet"
            if by_split.get(split):
                write_conversations(records_to_table(by_split[split]), target)
            elif target.exists():
                target.unlink()  # a stale file of an earlier run must not outlive this import
        if stats["unmatched"]:
            log.warning("%s: %d of %d records name samples that are not in %s (e.g. %s)", name, stats["unmatched"],
                        stats["records"], shards_dir, ", ".join(stats["unmatched_examples"]))
        imported[name] = stats

    return _write_manifest(out, seed if generated else None, imported)


def _dataroot_and_version(shards_dir: Path, dataroot, version) -> tuple[Path, str]:
    manifest = Path(shards_dir) / "manifest.json"
    info = json.loads(manifest.read_text()) if manifest.is_file() else {}
    root = dataroot or info.get("dataroot")
    ver = version or info.get("version") or "v1.0-trainval"
    if not root:
        raise ValueError("TOD3Cap captions are keyed by annotation token: pass --dataroot (the nuScenes dataroot "
                         f"the shards were prepared from); {manifest} does not name it")
    return Path(root), ver


def _write_manifest(out: Path, seed: int | None, imported: dict) -> dict:
    """Counts come from the files on disk, so imports run one at a time add up; ``seed`` is the generator's."""
    path = out / "manifest.json"
    old = json.loads(path.read_text()) if path.is_file() else {}
    counts: dict = {}
    for f in sorted(out.glob("*/*.parquet")):
        tasks = read_conversations(f).column("task").to_pylist()
        counts.setdefault(f.parent.name, {})[f.stem] = dict(sorted(Counter(tasks).items()))
    present = {f.stem for f in out.glob("*/*.parquet")}
    sources = {k: v for k, v in old.get("sources", {}).items() if k in present or k in imported}
    sources.update(imported)
    report = {"schema_version": CONVERSATIONS_VERSION, "seed": old.get("seed") if seed is None else seed,
              "counts": counts, "sources": sources}
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=2, sort_keys=True))
    report["path"] = str(path)
    return report
