"""The demo: synthetic nuScenes -> shards -> instruction data -> four training stages on ``tiny`` -> evaluation.

    odvla demo [--out demo_out] [--set train.max_steps=...]      (``make demo`` runs it)

Everything runs locally: a Ray instance on this machine, the local MLflow store (``mlruns/`` unless
``MLFLOW_TRACKING_URI`` is set). Stage 3 trains on scene clips of ``DEMO_CLIP_LEN`` keyframes (the earlier one
hands its BEV and tracked agent queries on; the loss falls on both, ``DEMO_CLIP_LOSS``) and the evaluation runs each val scene in keyframe
order carrying ``SceneState``. Prints the machine's measured matmul speed, the metrics table (model beside the
constant-velocity and ego-MLP baselines), the tracker's figures without and with temporal state, where the MLflow runs
are and its own wall time. ``demo_stage_overrides`` gives the demo's training settings (stage 3: 200 steps of
``DEMO_CLIP_BATCH`` clips with 2 CPUs per worker; the planner's val L2 must come out clearly below constant velocity's,
which ``tests/test_demo.py`` checks). Its budget is ``DEMO_BUDGET_S`` on the slowest machine of the kind
(docs/performance.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from odvla.platform.config import Config, load_config, stage_names
from odvla.platform.machine import REFERENCE_F32_GFLOPS, measure

DEMO_BUDGET_S = 600
"""The whole demo, evaluation included, must finish within this on the slowest machine of the kind (a 1024^2 float32
matmul at ``REFERENCE_F32_GFLOPS``)."""


def demo_steps(stage: str) -> int:
    """Optimiser steps of ``stage`` in the demo: its preset's ``stage.demo_steps`` (``--set train.max_steps=N``
    overrides every stage)."""
    return load_config(stage=stage).stage.demo_steps


@dataclass
class DemoResult:
    shards: Path
    pipeline: object
    eval: object
    tracking_uri: str
    seconds: float
    stateless_tracking: Optional[dict] = None
    """The export's devkit perception figures without temporal state (``perception_stateless/...``)."""
    closed_loop: Optional[dict] = None
    """Closed-loop figures per planner (``platform/sim/table.py``'s ``aggregate``: model and the three baselines)."""


def _say(console, msg: str) -> None:
    console.print(msg)


DEMO_CLIP_LEN = 2
"""Keyframes per training row of the stages that train the vision encoder (stage3): the earlier keyframe runs
without gradients and hands its BEV and tracked agent queries to the last one, as UniAD's track training does."""
DEMO_CLIP_LOSS = "all"
"""The loss falls on both keyframes of a clip: the first trains the detector on a fresh frame (every agent slot
starts from a heatmap proposal), the second the tracked slots and the fusion with the carried state. With the
loss on the last keyframe only, the fresh-frame detector hardly trains (README, "Temporal perception")."""


def demo_stage_overrides(stage: str, user: Iterable[str] = ()) -> list[str]:
    """The demo's overrides for one stage; the user's ``--set`` come last and win. A stage that trains the vision
    encoder (its tracker included) trains on scene clips of ``DEMO_CLIP_LEN`` keyframes; the others, whose
    vision encoder is frozen, on single keyframes."""
    out = ["train.num_workers=1", "train.cpus_per_worker=2", "train.checkpoint_every=0", "train.warmup_steps=5",
           "data.batch_size=4", f"train.max_steps={demo_steps(stage)}"]
    if "vision" in load_config(stage=stage).stage.trainable:
        out += [f"data.clip_len={DEMO_CLIP_LEN}", f"data.clip_loss={DEMO_CLIP_LOSS}",
                f"data.batch_size={DEMO_CLIP_BATCH}"]
    return out + list(user)


DEMO_CLIP_BATCH = 8
"""Clips per optimiser step of a stage that trains on clips: the same clips as 4 per step over twice the steps, in half
the optimiser steps (each step's fixed cost, the DeepSpeed step and the logging, is paid half as often)."""

DEMO_QA = 40
"""QA examples the demo's evaluation generates and scores (``eval.qa_max_examples``; 200 by default): enough to run
the caption scorers end to end. Each answer is up to ``eval.max_new_tokens`` decode steps, so 200 of them were most of
the evaluation's time."""

DEMO_EVAL_REPLICAS = 2
"""Model replicas of the demo's evaluation (``eval.concurrency``): the scene-ordered evaluation plans each val scene on
one replica, one CPU each, so two replicas plan the two val scenes at once instead of leaving a core idle."""

DEMO_SIM_SCENARIOS = 1
"""Normal synthetic worlds the demo's closed loop drives (each with its four safety scenarios), for the model and the
three baselines: 5 scenarios x 4 planners = 20 rollouts."""
DEMO_SIM_DURATION_S = 10.0
"""Seconds each closed-loop rollout lasts (20 planner ticks; the command's default is 15 s)."""

STATELESS = "perception_stateless/"
"""Prefix of the devkit's perception figures without temporal state."""


def tracking_comparison(with_state: dict, without_state: dict) -> str:
    """Markdown: the nuScenes devkit's perception figures on the val split without and with temporal state
    (``perception/...`` of the scene-ordered evaluation, ``perception_stateless/...``)."""
    rows = [("AMOTA", "AMOTA", "{:.3f}"), ("AMOTP (m)", "AMOTP", "{:.2f}"), ("ID switches (IDS)", "IDS", "{:.0f}"),
            ("track recall", "recall", "{:.3f}"), ("mAP", "mAP", "{:.3f}"), ("NDS", "NDS", "{:.3f}"),
            ("velocity error, mAVE (m/s)", "mAVE", "{:.2f}"), ("track boxes", "tracks", "{:.0f}")]

    def cell(m: dict, key: str, fmt: str) -> str:
        v = m.get(key)
        return "-" if v is None or v != v else fmt.format(v)

    lines = ["## Tracker without / with temporal state (val keyframes; nuScenes devkit, tracking_nips_2019)", "",
             "| figure | without state | with state (SceneState) |", "|---|---:|---:|"]
    lines += [f"| {name} | {cell(without_state, STATELESS + k, f)} | {cell(with_state, 'perception/' + k, f)} |"
              for name, k, f in rows]
    n = with_state.get("perception/trk_classes_with_gt", without_state.get(STATELESS + "trk_classes_with_gt", 0))
    return "\n".join(lines + ["", f"{cell({'n': n}, 'n', '{:.0f}')} of 7 tracking classes annotated in the val "
                                   "keyframes (AMOTA averages over those).", ""])


def run_demo(out: str | Path = "demo_out", overrides: Iterable[str] = (), stages: Optional[list] = None,
             scenes: Optional[int] = None, keyframes: Optional[int] = None, base: Optional[Config] = None,
             evaluate: bool = True, quiet: bool = True) -> DemoResult:
    """The whole path on synthetic data. ``quiet``: Ray's, Ray Data's, MLflow's and the scorers' own output goes to
    ``<out>/demo.log``; the demo prints its own progress lines, the table and where the log and runs are."""
    import contextlib
    import sys

    from odvla.platform.output_capture import captured_output

    out = Path(out).resolve()
    log_path = out / "demo.log"
    if quiet:
        out.mkdir(parents=True, exist_ok=True)
        print(f"odvla demo: Ray / Ray Data / MLflow output goes to {log_path}", flush=True)
    with (captured_output(log_path) if quiet else contextlib.nullcontext(sys.stdout)) as stream:
        res = _run_demo(stream, out, list(overrides), stages, scenes, keyframes, base, evaluate)
    if quiet:
        print(f"log: {log_path}", flush=True)
    return res


def _run_demo(stream, out: Path, overrides: list, stages: Optional[list], scenes: Optional[int],
              keyframes: Optional[int], base: Optional[Config], evaluate: bool) -> DemoResult:
    import ray

    from odvla.platform.data.conversations.build import build_instructions
    from odvla.platform.data.prepare import prepare
    from odvla.platform.data.synth import write_synthetic
    from odvla.platform.tracking import resolve_tracking_uri
    from odvla.platform.train.pipeline import run_pipeline
    from odvla.platform.train.stages import stage_config

    from rich.console import Console

    console = Console(file=stream, soft_wrap=True)  # whole lines in a log file too
    t0 = time.time()
    speed = measure()
    _say(console, f"machine: {speed.line()}")
    stages = list(stages or stage_names())
    cfg = base or load_config(model="tiny", overrides=[o for o in overrides if not o.startswith("stage.")])
    cfg.train.storage_path = str(out / "runs")
    uri = resolve_tracking_uri(cfg.tracking.tracking_uri)
    cfg.tracking.tracking_uri = uri

    _say(console, f"[bold]1/6 synthetic nuScenes[/bold] -> {out / 'nuscenes'}")
    root = write_synthetic(out / "nuscenes", scenes=scenes or cfg.data.synth_scenes,
                           keyframes=keyframes or cfg.data.synth_keyframes, seed=cfg.data.synth_seed,
                           image_wh=(cfg.data.synth_image_width, cfg.data.synth_image_height))
    if not ray.is_initialized():
        ray.init(address="local", num_cpus=4, include_dashboard=False, log_to_driver=False,
                 configure_logging=False)  # its own local instance, even beside a `ray start` cluster
    _say(console, f"[bold]2/6 prepare shards[/bold] -> {out / 'shards'}  ({time.time() - t0:.0f} s)")
    manifest = prepare(root, cfg.data.version, out / "shards", rows_per_shard=cfg.data.rows_per_shard)
    cfg.data.shards = str(out / "shards")
    _say(console, f"    {manifest.get('splits', manifest.get('rows', ''))}")
    _say(console, f"[bold]3/6 instruction data[/bold] (captions, QA, interaction, planning)  ({time.time() - t0:.0f} s)")
    build_instructions(out / "shards", seed=cfg.data.synth_seed)
    text = cfg.model.text
    if text.traj_encoding == "action" and not text.action_codebook:  # `odvla demo --set model.text.traj_encoding=action`
        from odvla.platform.data.codebook import fit_from_shards

        cb, val, path = fit_from_shards(out / "shards", size=text.action_codebook_size, seed=cfg.data.synth_seed)
        _say(console, f"    action codebook: {cb.size} entries ({cb.method}) -> {path}"
                      + (f"; val round trip: {val.line()}" if val else ""))

    name = cfg.train.run_name or f"demo-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    cfg.train.run_name = name
    user_steps = [o.split("=", 1)[1] for o in overrides if o.startswith("train.max_steps=")]
    _say(console, f"[bold]4/6 train[/bold] {' -> '.join(stages)} (tiny, Ray Train + DeepSpeed on CPU); steps "
                  + ", ".join(f"{s} {user_steps[-1] if user_steps else demo_steps(s)}" for s in stages))
    clock = {"t": time.time()}

    def progress(res) -> None:
        m = res.metrics
        _say(console, f"    {res.stage}: step {m.get('global_step')}  loss {m.get('loss', float('nan')):.3f}  "
                      f"{m.get('samples_per_s', 0):.1f} samples/s  ({time.time() - clock['t']:.0f} s)  "
                      f"MLflow run {res.run_id}")
        clock["t"] = time.time()

    shown: dict = {}

    def during(stage: str, step: int, total: int, m: dict) -> None:
        tenth = step * 10 // max(total, 1)  # one line per tenth of the stage
        if step < total and tenth > shown.get(stage, 0):
            shown[stage] = tenth
            _say(console, f"      {stage}: step {step}/{total}  loss {m.get('loss', float('nan')):.3f}  "
                          f"{m.get('samples_per_s', 0):.1f} samples/s")

    pipe = run_pipeline(cfg, stages=stages, overrides=overrides, tags={"odvla.demo": "true"},
                        stage_overrides={s: demo_stage_overrides(s) for s in stages}, on_stage=progress,
                        on_progress=during)
    evaluation = stateless = closed = None
    if evaluate:
        from odvla.platform.eval.evaluate import run_eval
        from odvla.platform.eval.perception_tracks import perception_tracking_figures

        _say(console, f"[bold]5/6 evaluate[/bold] {pipe.export_dir} on the synthetic val split  "
                      f"({time.time() - t0:.0f} s)")
        # the scene-ordered evaluation carrying SceneState (the temporal model the clips trained)
        ecfg = stage_config(cfg, stages[-1], overrides=["eval.temporal=true", f"eval.qa_max_examples={DEMO_QA}",
                                                           f"eval.concurrency={DEMO_EVAL_REPLICAS}"]
                            + demo_stage_overrides(stages[-1], overrides))
        evaluation = run_eval(ecfg, str(pipe.export_dir), out_dir=out / "eval", run_id=pipe.results[-1].run_id)
        stream.write(evaluation.table_md + "\n")
        # the same tracker without temporal state: every keyframe from empty tracks (a vision pass, no LLM)
        stateless = perception_tracking_figures(str(pipe.export_dir), ecfg.data, ecfg.eval.split, temporal=False,
                                                prefix=STATELESS)
        stream.write(tracking_comparison(evaluation.metrics, stateless) + "\n")
        stream.flush()
        closed = _closed_loop(console, stream, cfg.sim, pipe.export_dir, t0)
    secs = time.time() - t0
    _say(console, f"MLflow: {uri}  (pipeline run {pipe.parent_run_id}, experiment {cfg.tracking.experiment!r})")
    if uri.startswith("sqlite:///"):
        _say(console, f"    browse: mlflow ui --backend-store-uri {uri}")
    if pipe.registered_version:
        _say(console, f"registered: models:/{cfg.tracking.registered_model}/{pipe.registered_version}")
    _say(console, f"done in {secs:.0f} s on a machine at {speed.f32_gflops:.0f} GFLOP/s float32 (the demo's budget: "
                  f"{DEMO_BUDGET_S // 60} minutes at {REFERENCE_F32_GFLOPS:.0f} GFLOP/s); export {pipe.export_dir}")
    return DemoResult(shards=out / "shards", pipeline=pipe, eval=evaluation, tracking_uri=uri, seconds=secs,
                      stateless_tracking=stateless, closed_loop=closed)


def _closed_loop(console, stream, sim_cfg, export_dir, t0: float) -> dict:
    """Step 6: the exported planner drives ``DEMO_SIM_SCENARIOS`` synthetic worlds and their safety scenarios in
    closed loop, beside the expert (log replay), constant velocity and the ego-status MLP; prints one table.
    ``sim_cfg``: the ``sim`` section (``SimConfig``); its duration becomes ``DEMO_SIM_DURATION_S``."""
    import dataclasses

    from odvla.platform.sim.runner import closed_loop_table

    _say(console, f"[bold]6/6 closed loop[/bold] {DEMO_SIM_SCENARIOS} world(s) x (normal + 4 safety scenarios), "
                  f"{DEMO_SIM_DURATION_S:.0f} s each, model and 3 baselines  ({time.time() - t0:.0f} s)")
    sim_cfg = dataclasses.replace(sim_cfg, duration_s=DEMO_SIM_DURATION_S)
    table, per_planner = closed_loop_table(export_dir, sim_cfg, DEMO_SIM_SCENARIOS, True)
    stream.write("## Closed loop (synthetic worlds, the planner re-rendered every 0.5 s)\n\n" + table + "\n\n")
    stream.flush()
    return per_planner
