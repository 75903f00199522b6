"""Where a sweep lives: ``<sweep.storage_path>/<sweep.name>``, a folder or a URI (``s3://``, ``gs://``, ``file://``)
read and written through pyarrow's file systems, as Ray Tune itself does.

On a cluster the sweep's state must survive any one node (a trial retried on another node, ``Tuner.restore`` after
a lost driver), so it belongs on shared storage: a shared file system path, or object storage by URI. The files the
platform writes beside Tune's state (``odvla_sweep.json``, ``results.md/.json/.png``, ``eval/<trial>/``) are made in
a local folder first (MLflow logs them from there) and, for a URI, uploaded.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from odvla.platform.durable_paths import filesystem_of, resolve_storage_path


URI_SCHEMES = {"file", "s3", "gs", "gcs", "hdfs", "viewfs", "abfs", "abfss"}
"""URI schemes of pyarrow's file systems; checked before any trial runs (a typo fails at once, naming the key)."""

DEFAULT_STORAGE = "runs/sweeps"
"""``sweep.storage_path``'s default; on a cluster ``$ODVLA_STORAGE_PATH/sweeps`` replaces it."""


@dataclass
class SweepLocation:
    uri: str
    """The experiment folder: an absolute path or a URI."""
    _mirror: Optional[Path] = field(default=None, repr=False)

    @classmethod
    def of(cls, storage_path: str, name: str) -> "SweepLocation":
        """``sweep.storage_path`` + the sweep name; a relative path is made durable (never Ray's working-dir copy
        of a job), a URI is kept as given."""
        import os

        from odvla.platform.durable_paths import STORAGE_ENV

        if storage_path == DEFAULT_STORAGE and os.environ.get(STORAGE_ENV):  # the cluster's shared storage
            storage_path = f"{os.environ[STORAGE_ENV].rstrip('/')}/sweeps"
        base = resolve_storage_path(storage_path, key="sweep.storage_path", default=DEFAULT_STORAGE)
        scheme = base.split("://", 1)[0].lower() if "://" in base else ""
        if scheme and scheme not in URI_SCHEMES:
            from odvla.platform.config import ConfigError

            raise ConfigError(f"sweep.storage_path={storage_path!r}: unknown storage URI scheme {scheme!r} "
                              f"(pyarrow file systems: {', '.join(sorted(URI_SCHEMES))}, or a folder)")
        return cls(f"{base.rstrip('/')}/{name}")

    @property
    def remote(self) -> bool:
        return "://" in self.uri

    @property
    def parent(self) -> str:
        """Tune's ``storage_path`` (the experiment is ``<parent>/<name>``)."""
        return self.uri.rstrip("/").rsplit("/", 1)[0]

    def child(self, rel: str) -> str:
        return f"{self.uri.rstrip('/')}/{rel}"

    def exists(self, rel: str = "") -> bool:
        import pyarrow.fs as pafs

        fs, path = filesystem_of(self.child(rel) if rel else self.uri)
        return fs.get_file_info(path).type != pafs.FileType.NotFound

    def read_text(self, rel: str) -> str:
        fs, path = filesystem_of(self.child(rel))
        with fs.open_input_stream(path) as f:
            return f.read().decode()

    def write_text(self, rel: str, text: str) -> None:
        fs, path = filesystem_of(self.child(rel))
        fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(path) as f:
            f.write(text.encode())

    def local_dir(self) -> Path:
        """A local folder for the files made here: the experiment folder itself, or (URI) a local mirror."""
        if not self.remote:
            p = Path(self.uri)
        else:
            if self._mirror is None:
                self._mirror = Path(tempfile.mkdtemp(prefix="odvla-sweep-"))
            p = self._mirror
        p.mkdir(parents=True, exist_ok=True)
        return p

    def upload(self, local: Path, rel: str) -> str:
        """Copy a local file or folder to ``<uri>/<rel>`` (nothing to do for a local experiment folder that already
        holds it); returns the destination."""
        dest = self.child(rel)
        if not self.remote and Path(local).resolve() == Path(dest).resolve():
            return dest
        import pyarrow.fs as pafs

        fs, path = filesystem_of(dest)
        if Path(local).is_dir():
            fs.create_dir(path, recursive=True)
            pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        else:
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            pafs.copy_files(str(Path(local).resolve()), path, source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=fs)
        return dest
