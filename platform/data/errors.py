"""Errors of the data layer. Each names what is wrong and where (sample token, file path, table, field).

They subclass ``ValueError`` so the ``odvla`` command prints them as one clear line (no traceback).
"""
from __future__ import annotations


class DataError(ValueError):
    """Base class: bad input data. ``sample_token`` and ``path`` say where, when known."""

    def __init__(self, message: str, *, sample_token: str | None = None, path: str | None = None):
        self.sample_token = sample_token
        self.path = str(path) if path is not None else None
        where = []
        if sample_token:
            where.append(f"sample {sample_token}")
        if path:
            where.append(f"path {path}")
        super().__init__(message + (f" ({', '.join(where)})" if where else ""))


class NotNuScenesError(DataError):
    """The dataroot is not a nuScenes dataroot (no ``<version>/`` table folder)."""


class MissingTableError(DataError):
    """A nuScenes table JSON (or the map expansion JSON) is missing or unreadable."""


class MissingImageError(DataError):
    """A camera image a sample refers to does not exist."""


class CorruptImageError(DataError):
    """A camera image exists but is not a decodable JPEG."""


class ShardSchemaError(DataError):
    """A Parquet shard was written with another schema version (or has none)."""


class UnknownSampleError(DataError):
    """An example/instruction refers to a sample token that no shard holds."""
