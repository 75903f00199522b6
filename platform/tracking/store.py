"""Where MLflow records go: ``tracking.tracking_uri``, else ``MLFLOW_TRACKING_URI``, else a local store.

The local default is an SQLite database with a sibling artifact folder, both under ``./mlruns`` made absolute
(MLflow 3's model registry needs a database store, and Ray workers run with other working directories, so a
relative path would scatter runs). Browse it with ``mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db``.

A job submitted with ``ray job submit --working-dir .`` runs in Ray's temporary copy of the repository, deleted
with the Ray session: there the default store goes to ``$ODVLA_HOME/mlruns`` (``~/.odvla/mlruns``) instead, and an
explicit ``sqlite:///`` or folder store inside that copy is refused (``odvla.platform.durable_paths``).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from odvla.platform.durable_paths import durable_local_path

LOCAL_DIR = "mlruns"


def local_store_uri(root: str | Path | None = None) -> str:
    """``sqlite:////abs/path/mlruns/mlflow.db`` under ``root`` (default: the current directory, or ``$ODVLA_HOME``
    inside Ray's temporary working-dir copy of a job)."""
    base = Path(root).resolve() / LOCAL_DIR if root else durable_local_path(LOCAL_DIR, "tracking.tracking_uri")
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}"


def resolve_tracking_uri(configured: Optional[str] = None) -> str:
    """The tracking URI every process of a run uses (driver and rank 0 get the same absolute value)."""
    uri = configured or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return local_store_uri()
    if uri.startswith("sqlite:///"):
        # sqlite:///relative.db -> absolute, so that workers with another cwd hit the same file.
        path = durable_local_path(uri[len("sqlite:///"):], "tracking.tracking_uri")
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    if "://" not in uri:  # a plain folder: MLflow's file store
        return str(durable_local_path(uri, "tracking.tracking_uri"))
    return uri


def artifact_root_for(uri: str) -> Optional[str]:
    """Artifact root for a new experiment on a local SQLite store (beside the DB); None = the server decides."""
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        return (db.parent / "artifacts").resolve().as_uri()
    return None


def ensure_experiment(client, name: str, uri: str) -> str:
    """Experiment id of ``name``, created on first use (local stores get an absolute artifact root)."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=artifact_root_for(uri))
    except Exception:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id
