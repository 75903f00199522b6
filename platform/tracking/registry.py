"""Model registry: the final stage3 export becomes a version of ``odvla-planner`` (``tracking.registered_model``).

The export folder (model.safetensors, config.yaml, tokenizer/) is logged as the run's ``export`` artifact; the
registered version's source is that artifact, so ``load_export('models:/odvla-planner/<version|alias>')`` and
``mlflow.artifacts.download_artifacts`` give back the same folder that ``save_export`` wrote.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

MODELS_SCHEME = "models:/"


class ModelRef(NamedTuple):
    """A parsed ``models:/`` reference: the registered model and either a version number or an alias."""

    name: str
    version: Optional[str]
    """Version number as a string ('3'); None when the reference names an alias."""
    alias: Optional[str]


def parse_model_ref(ref: str) -> ModelRef:
    """``models:/<name>/<version>`` -> (name, version, None); ``models:/<name>/<alias>`` (not all digits) or
    ``models:/<name>@<alias>`` (always an alias, as in MLflow) -> (name, None, alias). Slashes around the body are
    ignored; anything else (no version or alias, more path parts, an empty name) is a ValueError that names the
    reference. The one parser of these references: ``platform/export.py`` downloads with it, ``serve`` reports the
    served version with it."""
    if not ref.startswith(MODELS_SCHEME):
        raise ValueError(f"model reference {ref}: expected {MODELS_SCHEME}<name>/<version|alias>")
    body = ref[len(MODELS_SCHEME):].strip("/")
    if "@" in body:
        name, alias = body.split("@", 1)
        version = None
    elif body.count("/") == 1:
        name, which = body.split("/")
        version, alias = (which, None) if which.isdigit() else (None, which)
    else:
        name, version, alias = body, None, None
    if not name or not (version or alias):
        raise ValueError(f"model reference {ref}: expected {MODELS_SCHEME}<name>/<version|alias>")
    return ModelRef(name, version, alias)


def register_export(client, run_id: str, name: str = "odvla-planner", artifact_path: str = "export",
                    alias: Optional[str] = "latest-trained", tags: Optional[dict] = None) -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; returns the version string."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, description="OpenDriveVLA planner exports (stage3 of a pipeline)")
    except MlflowException as e:
        if "RESOURCE_ALREADY_EXISTS" not in str(e.error_code) and "already exists" not in str(e):
            raise
    source = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    mv = client.create_model_version(name, source=source, run_id=run_id, tags=tags or {})
    if alias:
        client.set_registered_model_alias(name, alias, mv.version)
    return str(mv.version)
