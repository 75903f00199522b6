"""The conversation record: one dialogue about one nuScenes keyframe, whatever dataset it came from.

Columns:
    sample_token     str     keyframe the dialogue is about (joins the shard row)
    task             str     'caption_scene' | 'caption_agent' | 'caption_map' | 'qa' | 'interaction' | 'planning'
                             | 'external' (imported public data); ``TASKS`` of model/tasks.py
    source           str     'generated' or the public set: 'nuscenes_qa', 'tod3cap', 'nux', 'nucaption',
                             'gpt_driver', 'drivelm', 'llava'
    record_id        str     id inside the source (file key / index), for tracing an example back to its file
    turns            list<struct<from: str, value: str>>   alternating 'human' / 'gpt', starting with 'human'
    instance_token   str?    object-level records (TOD3Cap, generated agent captions / interaction): the agent
    target_traj      list<float32>?  [6,2] target ego waypoints, nuScenes ego frame (x forward, y left), metres,
                             t+0.5 .. t+3.0 s (planning records)
    target_mask      list<float32>?  [6] 1 = valid waypoint
    meta             str     JSON object of source-specific extras ('{}' when none)

The schema version lives in the Parquet file metadata under ``odvla.conversations_version``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from odvla.model.tasks import TASKS

CONVERSATIONS_VERSION = "1"
META_VERSION_KEY = b"odvla.conversations_version"

ROLES = ("human", "gpt")

TURN_TYPE = pa.struct([("from", pa.string()), ("value", pa.string())])

CONVERSATION_SCHEMA = pa.schema(
    [
        ("sample_token", pa.string()),
        ("task", pa.string()),
        ("source", pa.string()),
        ("record_id", pa.string()),
        ("turns", pa.list_(TURN_TYPE)),
        ("instance_token", pa.string()),
        ("target_traj", pa.list_(pa.float32())),
        ("target_mask", pa.list_(pa.float32())),
        ("meta", pa.string()),
    ],
    metadata={META_VERSION_KEY: CONVERSATIONS_VERSION.encode()},
)


class ConversationFormatError(ValueError):
    """A public instruction file that does not follow its format; the message names file and record."""

    def __init__(self, path, where, problem: str):
        self.path, self.where = str(path), where
        super().__init__(f"{path}: record {where}: {problem}")


def make_record(sample_token: str, task: str, source: str, record_id: str, turns: list[tuple[str, str]],
                instance_token: str | None = None, target_traj: np.ndarray | None = None,
                target_mask: np.ndarray | None = None, meta: dict | None = None) -> dict:
    """One row as a python dict. ``turns`` are (role, text) pairs; ``target_traj`` [6,2] ego frame, metres."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r} (record {record_id}); expected one of {TASKS}")
    return {
        "sample_token": sample_token,
        "task": task,
        "source": source,
        "record_id": record_id,
        "turns": [{"from": r, "value": v} for r, v in turns],
        "instance_token": instance_token,
        "target_traj": None if target_traj is None else np.asarray(target_traj, np.float32).reshape(-1).tolist(),
        "target_mask": None if target_mask is None else np.asarray(target_mask, np.float32).reshape(-1).tolist(),
        "meta": json.dumps(meta or {}, sort_keys=True),
    }


def records_to_table(records: Iterable[dict]) -> pa.Table:
    return pa.Table.from_pylist(list(records), schema=CONVERSATION_SCHEMA)


def check_turns(turns: list[tuple[str, str]], path, where) -> None:
    """Turns must alternate human, gpt, human, gpt ... and be non-empty text; raise naming file and record."""
    if not turns or len(turns) % 2:
        raise ConversationFormatError(path, where, f"expected an even, non-zero number of turns, got {len(turns)}")
    for i, (role, value) in enumerate(turns):
        want = ROLES[i % 2]
        if role != want:
            raise ConversationFormatError(path, where, f"turn {i} is from {role!r}, expected {want!r}")
        if not isinstance(value, str):
            raise ConversationFormatError(path, where, f"turn {i} value is {type(value).__name__}, expected text")


def write_conversations(table: pa.Table, path: Path) -> Path:
    """Write one conversation Parquet file (schema checked, version in the metadata)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = table.cast(CONVERSATION_SCHEMA)
    pq.write_table(table, path)
    return path


def read_conversations(path: Path) -> pa.Table:
    """Read one conversation file; refuse another schema version with an error naming the file."""
    path = Path(path)
    meta = pq.read_schema(path).metadata or {}
    version = meta.get(META_VERSION_KEY, b"").decode()
    if version != CONVERSATIONS_VERSION:
        raise ValueError(f"{path}: conversation schema version {version or 'missing'!r}, "
                         f"expected {CONVERSATIONS_VERSION!r} (rebuild with `odvla instructions`)")
    return pq.read_table(path).cast(CONVERSATION_SCHEMA)


def conversations_dir(shards_dir: Path) -> Path:
    return Path(shards_dir) / "conversations"


def read_split_conversations(conv_dir: Path, split: str) -> pa.Table:
    """All conversation files of a split, concatenated (empty table when there are none)."""
    files = sorted((Path(conv_dir) / split).glob("*.parquet"))
    if not files:
        return CONVERSATION_SCHEMA.empty_table()
    return pa.concat_tables([read_conversations(f) for f in files])
