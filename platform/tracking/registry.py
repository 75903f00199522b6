"""Model registry: the final stage3 export becomes a version of ``odvla-planner`` (``tracking.registered_model``).

The export folder (model.safetensors, config.yaml, tokenizer/) is logged as the run's ``export`` artifact; the
registered version's source is that artifact, so ``load_export('models:/odvla-planner/<version|alias>')`` and
``mlflow.artifacts.download_artifacts`` give back the same folder that ``save_export`` wrote.
"""
from __future__ import annotations

from typing import Optional


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
