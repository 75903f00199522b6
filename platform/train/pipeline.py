"""All stages in order, each starting from the previous one's export, under one MLflow parent run.

    run_pipeline(cfg, stages=['stage1', 'stage2', 'stage2_5', 'stage3'], overrides=[...]) -> PipelineResult

Each stage's config is ``cfg`` with that stage's preset on top, then ``files``/``overrides`` again (so the user's
settings win over the presets). Stage ``s`` runs as ``<pipeline name>-<s>``; rerunning with the same
``train.run_name`` resumes the pipeline: finished stages replay only their final report, an interrupted one
continues from its checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

from odvla.platform.config import Config
from odvla.platform.config import check_pipeline_order, stage_names
from odvla.platform.train.progress import ProgressCallback
from odvla.platform.train.stages import InitSource, stage_config
from odvla.platform.train.trainer import StageResult, _storage_path, run_stage


@dataclass
class PipelineResult:
    results: list = field(default_factory=list)
    """StageResult per stage, in order."""
    parent_run_id: Optional[str] = None
    export_dir: Optional[Path] = None
    """Export of the last stage."""
    registered_version: Optional[str] = None


def run_pipeline(cfg: Config, stages: Optional[Iterable[str]] = None, parent_run_id: Optional[str] = None,
                 files: Iterable[str] = (), overrides: Iterable[str] = (),
                 stage_overrides: Optional[dict] = None, tags: Optional[dict] = None,
                 on_stage: Optional[Callable[[StageResult], None]] = None,
                 on_progress: Optional[ProgressCallback] = None) -> PipelineResult:
    """Run ``stages`` (stage preset names or stage YAML files; default every stage preset) in curriculum order. ``parent_run_id``: nest the pipeline run under it
    (a sweep trial). ``stage_overrides``: {stage: [overrides]} applied before ``overrides`` (per-stage step
    counts). ``on_stage``: called after each stage (progress display, Tune reporting); ``on_progress``: during each
    stage (see ``run_stage``)."""
    from odvla.platform.tracking import TAG_PIPELINE, ResilientTracker, ensure_experiment, get_or_create_run
    from odvla.platform.tracking.store import resolve_tracking_uri

    stages = check_pipeline_order(stages or stage_names())
    overrides, files, stage_overrides = list(overrides), list(files), dict(stage_overrides or {})
    name = cfg.train.run_name or f"odvla-pipeline-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    tracker = ResilientTracker(uri, None)
    opened = tracker.call("open pipeline run", lambda: get_or_create_run(
        tracker.client, ensure_experiment(tracker.client, cfg.tracking.experiment, uri),
        f"{_storage_path(cfg.train)}/{name}", name,
        {TAG_PIPELINE: "true", "odvla.stages": "+".join(stages), **(tags or {})}, parent_run_id))
    if opened is not None:
        tracker.run_id = opened[0]
    tracker.log_params({"pipeline.stages": "+".join(stages), "model.preset": cfg.model.preset,
                        "pipeline.overrides": " ".join(overrides)})

    out = PipelineResult(parent_run_id=tracker.run_id)
    previous: Optional[InitSource] = None
    try:
        for i, stage in enumerate(stages):
            scfg = stage_config(cfg, stage, files, [*stage_overrides.get(stage, []), *overrides])
            scfg.train.run_name = f"{name}-{scfg.stage.name}"
            res = run_stage(scfg, parent_run_id=tracker.run_id, previous=previous,
                            register=(scfg.stage.registers_model and i == len(stages) - 1), on_progress=on_progress)
            out.results.append(res)
            previous = InitSource(str(res.export_dir), res.run_id or "")
            tracker.log_metrics({f"{stage}/{k}": v for k, v in res.metrics.items()
                                 if k in ("loss", "global_step", "samples_seen", "samples_per_s")}, step=i)
            if on_stage is not None:
                on_stage(res)
    except BaseException:
        tracker.terminate("FAILED")
        raise
    out.export_dir = out.results[-1].export_dir
    out.registered_version = out.results[-1].registered_version
    tracker.set_tags({"odvla.export": str(out.export_dir),
                      **({"odvla.registered_version": out.registered_version} if out.registered_version else {})})
    tracker.terminate("FINISHED")
    return out
