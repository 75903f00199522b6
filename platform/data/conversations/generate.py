"""Generated conversations for every keyframe of the prepared shards (source 'generated'), so the synthetic
default trains stages 1, 2 and 2.5 with no public instruction set."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from odvla.platform.data.shards import read_split

from .captions import generate_captions
from .interaction import generate_interaction
from .planning import generate_planning
from .qa import generate_qa
from .scene_view import SHARD_COLUMNS, views_from_table
from .schema import records_to_table


def generate_from_table(shards: pa.Table, seed: int = 0) -> pa.Table:
    """Conversation table (all generated tasks) for the shard rows of ``shards``; deterministic for ``seed``."""
    records: list[dict] = []
    for view in views_from_table(shards):
        records += generate_captions(view, seed)
        records += generate_qa(view, seed)
        records += generate_interaction(view, seed)
        records += generate_planning(view)
    return records_to_table(records)


def read_shard_split(shards_dir: Path, split: str, columns=SHARD_COLUMNS) -> pa.Table:
    """The shard rows of one split, only ``columns`` (the generators' by default: no image or camera columns).
    The data layer's reader checks the schema version and names the file of another version."""
    return read_split(shards_dir, split, columns=list(columns))
