"""Where run state may live: never inside Ray's runtime copy of a job's working directory.

``ray job submit --working-dir . -- python jobs/stage3.py`` runs the driver in a copy of the repository under
``<ray temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_*``, which Ray deletes with the session
(``ray stop``, a head restart). A relative ``train.storage_path`` ("runs") or the default local MLflow store
("mlruns") would resolve into that copy, and checkpoints, the MLflow run and its registered model would vanish with
it. So:

- relative defaults resolve against the current directory, except inside such a copy, where they resolve against a
  fixed folder of the machine, ``$ODVLA_HOME`` (default ``~/.odvla``), with a warning saying where and how to choose;
- an explicit absolute path inside such a copy is refused with the fix in the message;
- on a real cluster ``ODVLA_STORAGE_PATH`` and ``MLFLOW_TRACKING_URI`` (set by ``cluster.yaml`` / ``kuberay.yaml``)
  point at shared storage (a shared file system or ``s3://``) that survives any one node.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

log = logging.getLogger(__name__)

HOME_ENV = "ODVLA_HOME"
"""A machine-local folder for runs and the local MLflow store of jobs submitted from a working-dir copy."""
STORAGE_ENV = "ODVLA_STORAGE_PATH"
"""Default ``train.storage_path`` on a cluster (shared storage), set by the cluster config."""


def odvla_home() -> Path:
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".odvla").expanduser().resolve()


def ray_working_dir_copy(path: str | os.PathLike) -> Optional[Path]:
    """The root of Ray's runtime working-dir copy that ``path`` lies in, or None."""
    parts = Path(path).resolve().parts
    for i, part in enumerate(parts):
        if part == "runtime_resources" and i + 2 < len(parts) and parts[i + 1].endswith("working_dir_files"):
            return Path(*parts[: i + 3])
    return None


class EphemeralPathError(ValueError):
    """A path inside Ray's runtime working-dir copy, which Ray deletes with the session."""


def durable_local_path(value: str, key: str) -> Path:
    """Absolute folder for ``value`` (``key`` names the config field or variable in messages).

    Relative: against the current directory, or against ``odvla_home()`` when the current directory is Ray's
    working-dir copy (a logged warning). Absolute inside such a copy: ``EphemeralPathError``."""
    p = Path(value).expanduser()
    if p.is_absolute():
        copy = ray_working_dir_copy(p)
        if copy is not None:
            raise EphemeralPathError(
                f"{key}={value!r} lies inside Ray's runtime copy of the job's working directory ({copy}), which "
                f"Ray deletes with the session: checkpoints and runs there are lost. Use shared storage "
                f"(--set {key}=/mnt/shared/odvla/... or s3://...), or a folder outside {copy}.")
        return p.resolve()
    cwd = Path.cwd()
    copy = ray_working_dir_copy(cwd)
    if copy is None:
        return (cwd / p).resolve()
    out = (odvla_home() / p).resolve()
    log.warning("%s=%r is relative and this job runs in Ray's temporary copy of the working directory (%s), deleted "
                "with the Ray session. Writing to %s instead. On a cluster set %s (or %s / MLFLOW_TRACKING_URI) to "
                "shared storage; locally set %s to choose the folder.", key, value, copy, out, key, STORAGE_ENV,
                HOME_ENV)
    return out


def resolve_storage_path(value: Optional[str], key: str = "train.storage_path", default: str = "runs") -> str:
    """A run's storage root: a URI (``s3://...``, ``file://...``) as given, else a durable absolute folder.
    ``value`` equal to the schema default (``default``) gives way to ``$ODVLA_STORAGE_PATH`` when that is set."""
    if not value or (value == default and os.environ.get(STORAGE_ENV)):
        value = os.environ.get(STORAGE_ENV) or default
        key = STORAGE_ENV if os.environ.get(STORAGE_ENV) else key
    if "://" in value:
        return value
    return str(durable_local_path(value, key))


def filesystem_of(root: str):
    """``(pyarrow FileSystem, path inside it)`` of a folder or a URI (``s3://``, ``gs://``, ``file://``): how a run's
    storage is read and written, whatever holds it."""
    import pyarrow.fs as pafs

    if "://" in root:
        return pafs.FileSystem.from_uri(root)
    return pafs.LocalFileSystem(), root
