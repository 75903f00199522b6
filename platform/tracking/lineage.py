"""Run identity and lineage tags.

A stage's MLflow run is found again by its key (``<storage_path>/<run name>``), so a rerun that resumes a Ray
Train run from its checkpoint logs into the same MLflow run, and a worker restart never opens a second one.

Tags on a stage run:
    odvla.run_key        storage_path/name of the Ray Train run (identity across restarts)
    odvla.stage          stage1 | stage2 | stage2_5 | stage3
    odvla.init_from      the export the stage started from (folder or URI; '' for random init)
    odvla.init_from_run  MLflow run id whose export it started from ('' when not known)
    odvla.pipeline       'true' on a pipeline parent run
    odvla.checkpoint     storage path of the latest Ray Train checkpoint
    odvla.export         path of the consolidated export (also logged as the 'export' artifact)
Nesting uses MLflow's own ``mlflow.parentRunId`` tag, so the UI shows stage runs under their pipeline run.
"""
from __future__ import annotations

from typing import Optional

TAG_RUN_KEY = "odvla.run_key"
TAG_STAGE = "odvla.stage"
TAG_INIT_FROM = "odvla.init_from"
TAG_INIT_FROM_RUN = "odvla.init_from_run"
TAG_PIPELINE = "odvla.pipeline"
TAG_CHECKPOINT = "odvla.checkpoint"
TAG_EXPORT = "odvla.export"
TAG_PARENT = "mlflow.parentRunId"


def find_run(client, experiment_id: str, run_key: str):
    """The newest run carrying ``odvla.run_key == run_key`` or None."""
    key = run_key.replace("'", "\\'")
    runs = client.search_runs([experiment_id], filter_string=f"tags.`{TAG_RUN_KEY}` = '{key}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    return runs[0] if runs else None


def get_or_create_run(client, experiment_id: str, run_key: str, run_name: str, tags: dict,
                      parent_run_id: Optional[str] = None) -> tuple[str, bool]:
    """(run_id, resumed): the run of ``run_key``, reopened if it exists, else a new one with ``tags``."""
    run = find_run(client, experiment_id, run_key)
    if run is not None:
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, True
    all_tags = {TAG_RUN_KEY: run_key, **{k: str(v) for k, v in tags.items()}}
    if parent_run_id:
        all_tags[TAG_PARENT] = parent_run_id
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return run.info.run_id, False


def run_id_of_export(ref: Optional[str]) -> str:
    """The MLflow run id behind an init reference: ``runs:/<id>/...`` -> id; otherwise ''."""
    if ref and ref.startswith("runs:/"):
        return ref[len("runs:/"):].split("/", 1)[0]
    return ""
