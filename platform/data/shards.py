"""Reading and writing the Parquet shards of ``odvla prepare`` (layout ``<dir>/<split>/part-*.parquet`` and
``<dir>/manifest.json``). Every read checks the schema version stored in the file metadata."""
from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from odvla.platform.data.errors import ShardSchemaError
from odvla.platform.data.shard_schema import META_VERSION_KEY, SCHEMA, SCHEMA_VERSION

MANIFEST = "manifest.json"


def shard_files(shards_dir, split: str) -> list[Path]:
    """Sorted shard files of ``split``; raises ``FileNotFoundError`` naming the folder when there are none."""
    d = Path(shards_dir) / split
    files = sorted(d.glob("*.parquet")) if d.is_dir() else []
    if not files:
        raise FileNotFoundError(f"no Parquet shards for split '{split}' under {d} (run `odvla prepare` first)")
    return files


def check_version(path) -> None:
    """Raise ``ShardSchemaError`` (naming the file) unless ``path`` was written with ``SCHEMA_VERSION``."""
    try:
        meta = pq.read_schema(path).metadata or {}
    except (pa.ArrowInvalid, OSError) as e:
        raise ShardSchemaError(f"not a readable Parquet shard: {e}", path=str(path)) from None
    got = meta.get(META_VERSION_KEY)
    if got != SCHEMA_VERSION.encode():
        got_s = got.decode() if got else "none"
        raise ShardSchemaError(f"shard has schema version {got_s}, this code reads version {SCHEMA_VERSION}; "
                               f"rerun `odvla prepare`", path=str(path))


def read_split(shards_dir, split: str, columns: list[str] | None = None) -> pa.Table:
    """All rows of ``split`` as one table (schema version checked per file)."""
    files = shard_files(shards_dir, split)
    for f in files:
        check_version(f)
    tables = [pq.read_table(f, columns=columns) for f in files]
    return pa.concat_tables(tables)


def read_manifest(shards_dir) -> dict:
    p = Path(shards_dir) / MANIFEST
    if not p.exists():
        raise FileNotFoundError(f"no {MANIFEST} in {shards_dir} (not an `odvla prepare` output folder)")
    return json.loads(p.read_text())


def write_table_atomic(table: pa.Table, path: Path) -> None:
    """Write a shard to ``path`` via a temporary file and rename (never a half file at ``path``)."""
    table = table.cast(SCHEMA) if table.schema != SCHEMA else table
    table = table.replace_schema_metadata(SCHEMA.metadata)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json_atomic(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
