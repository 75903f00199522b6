"""What every stage entrypoint does (``jobs/stage*.py``, ``jobs/pipeline.py``, ``odvla train``): parse the config
flags, connect to the cluster, run, print a summary a user can act on (MLflow run, export, registry version).

A submitted job connects to its cluster through ``RAY_ADDRESS`` (``ray.init()``); run by hand it starts a local
Ray instance.
"""
from __future__ import annotations

import argparse
from typing import Optional, Sequence

from odvla.platform.config.args import add_config_args, config_from_args
from odvla.platform.config import stage_names
from odvla.platform.log_setup import configure as configure_logging


def stage_summary(r, registered_model: Optional[str] = None) -> str:
    """One finished stage: run name, MLflow run, global step, last loss, export (and registry version)."""
    lines = [f"{r.stage}: run {r.run_name}  MLflow run {r.run_id}  step {r.metrics.get('global_step')}  "
             f"loss {r.metrics.get('loss', float('nan')):.4f}", f"export: {r.export_dir}"]
    if r.registered_version and registered_model:
        lines.append(f"registered: models:/{registered_model}/{r.registered_version}")
    return "\n".join(lines)


def pipeline_summary(out) -> str:
    """A finished pipeline: one line per stage, the parent MLflow run, the final export and registry version."""
    lines = [f"{r.stage}: MLflow run {r.run_id}  step {r.metrics.get('global_step')}  "
             f"loss {r.metrics.get('loss', float('nan')):.4f}" for r in out.results]
    lines += [f"pipeline MLflow run {out.parent_run_id}", f"export: {out.export_dir}"]
    if out.registered_version:
        lines.append(f"registered version: {out.registered_version}")
    return "\n".join(lines)


def stage_job_main(stage: str, description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entrypoint of ``jobs/<stage>.py``: the stage preset, then ``--config`` files and ``--set`` overrides."""
    import ray

    from odvla.platform.train import run_stage

    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser, stage=stage)
    cfg = config_from_args(parser.parse_args(argv))
    configure_logging()  # the library's status lines and warnings on the job's stderr (in its log)
    ray.init()
    print(stage_summary(run_stage(cfg), cfg.tracking.registered_model))
    return 0


def pipeline_job_main(description: str, argv: Optional[Sequence[str]] = None) -> int:
    """Entrypoint of ``jobs/pipeline.py``: ``--stages`` in order, each from the previous stage's export."""
    import ray

    from odvla.platform.train import run_pipeline

    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    parser.add_argument("--stages", default=",".join(stage_names()),
                        help="comma-separated stage presets or stage YAML files (default: %(default)s)")
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    configure_logging()
    ray.init()
    print(pipeline_summary(run_pipeline(cfg, stages=args.stages.split(","), files=args.config,
                                        overrides=args.overrides)))
    return 0
