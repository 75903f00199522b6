"""The open-loop evaluation job: a model export -> predictions for every val sample -> metrics, table, pictures.

    run_eval(cfg, model_ref, out_dir=None, run_id=None) -> EvalResult(metrics, table_md, predictions_path, out_dir)

Steps (``jobs/evaluate.py`` and ``odvla eval`` call this):
1. resolve the export (folder, ``runs:/<id>[/export]`` or ``models:/odvla-planner/<version|alias>``);
2. predictions: the val split through ``build_dataset(data, vision, split)`` (one planning row per sample) and Ray Data
   ``map_batches`` over ``eval.concurrency`` model replicas (``eval.num_gpus_per_replica`` GPUs each), written to
   ``predictions.parquet`` (sample token, predicted and GT waypoints, parsed flag, error, answer text, the
   agent tracks the keyframe left);
   malformed answers are counted (``predict/malformed``) and listed, never dropped silently. With
   ``eval.temporal`` the planning rows come instead from ``scene_eval.plan_scenes``: each scene in keyframe order
   carrying ``SceneState`` (tracked queries, previous BEV), whole scenes in parallel over the replica pool;
   without it every keyframe starts from an empty state (the stateless evaluation);
3. planning metrics in the three protocols (``planning_metrics.py``) for the model and the baselines
   (constant velocity ``cv/...``, ego-status MLP trained on the train split ``mlp/...``); with
   ``protocols=(LogPDMS(),)`` (``platform/sim/log_pdms.py``, ``odvla eval --protocol pdms``) also NAVSIM's PDM
   score on the logs for them and the logged expert (``pdms/...``, ``expert/pdms/...``);
4. QA metrics (BLEU-4, METEOR, CIDEr, ROUGE-L) on the split's instruction examples when the conversation store has
   any (``qa/...``, at most ``eval.qa_max_examples``);
5. perception figures of the agent queries scored by the nuScenes devkit (``nusc_devkit.py``): the boxes and
   tracks each keyframe leaves written as the devkit's submissions (``perception/detection/results_nusc.json``,
   ``perception/tracking/results_nusc.json``, global frame) and scored by ``DetectionEval`` (mAP, NDS) and
   ``TrackingEval`` (AMOTA, AMOTP, IDS) on the split's scenes of the dataroot, ``perception/...``;
6. ``results.md`` (measured beside published numbers), ``metrics.json``, BEV and front-camera PNGs under
   ``plots/``; everything logged to MLflow when ``run_id`` is given or a run is active.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from odvla.model.constants import FUTURE_STEPS, PAST_STEPS
from odvla.model.tasks import QA_TASKS
from odvla.platform.eval.baselines import constant_velocity, train_ego_mlp
from odvla.platform.eval.planning_frame import planning_inputs, prediction_to_planning
from odvla.platform.eval.planning_metrics import compute_planning_metrics
from odvla.platform.eval.report import results_table

if TYPE_CHECKING:
    from odvla.model.config import VisionConfig
    from odvla.platform.config.schema import DataConfig, EvalConfig, TrackingConfig

log = logging.getLogger(__name__)

_GT_COLUMNS = ("sample_token", "scene_token", "ego_state", "command", "past_traj", "past_mask", "future_traj",
               "future_yaw", "future_mask", "future_boxes", "future_box_step", "future_box_class",
               "future_box_visibility", "lidar2ego", "agent_boxes", "agent_class", "agent_num_pts", "agent_future",
               "agent_future_mask", "agent_future_yaw", "agent_visibility")
_PLANNING_COLUMNS = _GT_COLUMNS[:1] + _GT_COLUMNS[6:]


@dataclass
class EvalResult:
    metrics: dict
    table_md: str
    predictions_path: Path
    out_dir: Path


def read_split_table(shards_dir: str | Path, split: str, columns=None) -> pa.Table:
    """The shard rows of one split, ``columns`` only (all by default); the reader checks the schema version."""
    from odvla.platform.data.shards import read_split

    return read_split(shards_dir, split, columns=list(columns) if columns else None)


def _arr(table: pa.Table, name: str, shape: tuple) -> np.ndarray:
    col = table.column(name).to_pylist()
    try:
        return np.asarray(col, dtype=np.float64).reshape((len(col),) + shape)
    except ValueError as e:
        bad = next((i for i, v in enumerate(col) if v is None or np.size(v) != int(np.prod(shape))), 0)
        raise ValueError(f"shard column {name}: sample {table.column('sample_token')[bad]} has "
                         f"{0 if col[bad] is None else np.size(col[bad])} values, expected {shape}") from e


@dataclass
class PlanningTruth:
    """The references' view of a split: per row the LiDAR ``lidar2ego``, GT sensor path [N,6,2] and mask [N,6] in
    the planning frame (``planning_frame.py``), and the collision inputs (future annotations + VAD's agents)."""

    tokens: list
    lidar2ego: np.ndarray  # [N,4,4]
    gt: np.ndarray  # [N,6,2] (forward, left), LiDAR frame
    mask: np.ndarray  # [N,6]
    future_boxes: list

    @classmethod
    def from_table(cls, table: pa.Table) -> "PlanningTruth":
        rows = table.select(list(_PLANNING_COLUMNS)).to_pylist()
        inputs = [planning_inputs(r) for r in rows]
        return cls([r["sample_token"] for r in rows],
                   np.asarray([r["lidar2ego"] for r in rows], np.float64).reshape(-1, 4, 4),
                   np.asarray([i["gt"] for i in inputs]).reshape(-1, FUTURE_STEPS, 2),
                   np.asarray([i["mask"] for i in inputs]).reshape(-1, FUTURE_STEPS),
                   [i["future_boxes"] for i in inputs])

    def to_planning(self, pred_ego: np.ndarray) -> np.ndarray:
        """Predicted rear-axle paths [N,6,2] (ego frame) -> sensor paths in the planning frame (NaN rows stay)."""
        pred_ego = np.asarray(pred_ego, np.float64).reshape(-1, FUTURE_STEPS, 2)
        return np.stack([prediction_to_planning(p, m) for p, m in zip(pred_ego, self.lidar2ego)]) if len(pred_ego) \
            else pred_ego


def score_trajectories(pred: np.ndarray, truth: "PlanningTruth | pa.Table", prefix: str = "") -> dict:
    """Planning metrics of ``pred`` [N,6,2] (ego frame, rear axle) against the rows of ``truth`` (same order), in
    the references' planning frame; keys prefixed."""
    if isinstance(truth, pa.Table):
        truth = PlanningTruth.from_table(truth)
    metrics = compute_planning_metrics(truth.to_planning(pred), truth.gt, truth.mask, truth.future_boxes)
    return {f"{prefix}{k}": v for k, v in metrics.items()}


def baseline_metrics(data_cfg, eval_cfg, seed: int, val: pa.Table, truth: Optional[PlanningTruth] = None,
                     plans: Optional[dict] = None) -> dict:
    """Constant velocity and the ego-status MLP (trained on the train split of ``data_cfg.shards``,
    ``eval_cfg.baseline_mlp_epochs`` epochs) on the val rows. ``plans``: filled with each baseline's waypoints
    [N, 6, 2] (ego frame) by prefix (``cv/``, ``mlp/``), for the PDM score."""
    truth = truth if truth is not None else PlanningTruth.from_table(val)
    plans = {} if plans is None else plans
    plans["cv/"] = constant_velocity(_arr(val, "ego_state", (-1,)))
    out = score_trajectories(plans["cv/"], truth, "cv/")
    try:
        train = read_split_table(data_cfg.shards, "train", _GT_COLUMNS)
    except FileNotFoundError as e:
        log.warning("ego MLP baseline skipped: no train split (%s)", e)
        return out
    if train.num_rows == 0:
        log.warning("ego MLP baseline skipped: the train split is empty")
        return out

    def inputs(t):
        return (_arr(t, "ego_state", (-1,)), np.asarray(t.column("command").to_pylist()),
                _arr(t, "past_traj", (PAST_STEPS, 2)), _arr(t, "past_mask", (PAST_STEPS,)))

    mlp = train_ego_mlp(*inputs(train), _arr(train, "future_traj", (FUTURE_STEPS, 2)),
                        _arr(train, "future_mask", (FUTURE_STEPS,)), epochs=eval_cfg.baseline_mlp_epochs,
                        seed=seed)
    plans["mlp/"] = mlp.predict(*inputs(val))
    out.update(score_trajectories(plans["mlp/"], truth, "mlp/"))
    out["mlp/train_samples"] = float(mlp.train_samples)
    out["mlp/train_l1"] = mlp.train_loss
    return out


def _qa_examples(data: DataConfig, eval_cfg: EvalConfig, seed: int, split: str) -> Optional[pa.Table]:
    """The QA examples of ``split`` in the conversation store (``data.instructions`` or beside ``data.shards``), at
    most ``eval_cfg.qa_max_examples``; None when the store has none."""
    from odvla.platform.data.conversations.mixture import build_examples
    from odvla.platform.data.conversations.schema import conversations_dir

    conv_dir = Path(data.instructions) if data.instructions else conversations_dir(Path(data.shards))
    if not sorted((conv_dir / split).glob("*.parquet")):
        return None
    examples = build_examples(data.shards, split, {t: 1.0 for t in QA_TASKS}, seed=seed, conversations=conv_dir)
    limit = int(getattr(eval_cfg, "qa_max_examples", 0) or 0)
    if limit and examples.num_rows > limit:
        examples = examples.slice(0, limit)
    return examples if examples.num_rows else None


def _write_predictions(cols: dict, path: Path) -> Path:
    table = pa.table({
        "sample_token": pa.array(cols["sample_token"].tolist(), pa.string()),
        "scene_token": pa.array(cols["scene_token"].tolist(), pa.string()),
        "task": pa.array(cols["task"].tolist(), pa.string()),
        "question": pa.array(cols["question"].tolist(), pa.string()),
        "answer": pa.array(cols["answer"].tolist(), pa.string()),
        "reference": pa.array(cols.get("reference", np.full(len(cols["answer"]), "", object)).tolist(), pa.string()),
        "pred_traj": pa.array([r.tolist() for r in np.asarray(cols["pred_traj"], np.float32)], pa.list_(pa.float32())),
        "gt_traj": pa.array([r.tolist() for r in np.asarray(cols["gt_traj"], np.float32)], pa.list_(pa.float32())),
        "gt_mask": pa.array([r.tolist() for r in np.asarray(cols["gt_mask"], np.float32)], pa.list_(pa.float32())),
        "parsed": pa.array(cols["parsed"].tolist(), pa.bool_()),
        "error": pa.array(cols["error"].tolist(), pa.string()),
        "num_generated_tokens": pa.array(cols["num_generated_tokens"].tolist(), pa.int64()),
        # the agent tracks the keyframe left (ids -1 = no track; centres and velocities flattened [Q*2], ego frame)
        "track_ids": pa.array([r.tolist() for r in np.asarray(cols["track_ids"], np.int64)], pa.list_(pa.int64())),
        "track_xy": pa.array([r.tolist() for r in np.asarray(cols["track_xy"], np.float32)], pa.list_(pa.float32())),
        "track_vel": pa.array([r.tolist() for r in np.asarray(cols["track_vel"], np.float32)],
                              pa.list_(pa.float32())),
        # each slot's box [Q*9] (x, y, z, w, l, h, yaw, vx, vy; ego frame), score and class (DETECTION_CLASSES)
        "track_boxes": pa.array([r.tolist() for r in np.asarray(cols["track_boxes"], np.float32)],
                                pa.list_(pa.float32())),
        "track_scores": pa.array([r.tolist() for r in np.asarray(cols["track_scores"], np.float32)],
                                 pa.list_(pa.float32())),
        "track_labels": pa.array([r.tolist() for r in np.asarray(cols["track_labels"], np.int64)],
                                 pa.list_(pa.int64())),
    })
    pq.write_table(table, path)
    return path


def _concat(a: dict, b: dict) -> dict:
    return {k: np.concatenate([a[k], b[k]]) for k in a}


def _scene_predictions(data: DataConfig, vision: VisionConfig, eval_cfg: EvalConfig, export_ref: str, split: str,
                       tracking_uri: Optional[str]) -> dict:
    """Planning rows of every keyframe of ``split`` from ``plan_scenes`` with temporal state (the columns
    ``predict_dataset`` gives, tracks included)."""
    from odvla.platform.eval.predict import OUTPUT_COLUMNS, TRACK_COLUMNS
    from odvla.platform.eval.scene_eval import plan_scenes

    got = plan_scenes(data, vision, eval_cfg, export_ref, split, temporal=True, tracking_uri=tracking_uri)
    return {k: got[k] for k in OUTPUT_COLUMNS + TRACK_COLUMNS}


def run_eval(cfg, model_ref: str, out_dir: Optional[str | Path] = None, run_id: Optional[str] = None,
             official_out: Optional[str | Path] = None, force: bool = False,
             protocols: tuple = ()) -> EvalResult:
    """Evaluate the export ``model_ref`` on ``cfg.eval.split`` of ``cfg.data.shards``; see the module docstring.

    ``official_out``: also write the released OpenDriveVLA evaluation's input files there
    (``official_export.py``); a non-empty folder is an error unless ``force``. ``protocols``: extra protocols
    beside the open-loop ones, objects with ``name``, ``columns`` / ``check_columns`` (shard columns they read),
    ``check(data, rows)`` (before the model runs), ``score(data, rows, plans) -> (figures, per-sample rows)`` and
    ``table(metrics) -> markdown lines``; ``plans`` maps a method prefix ('' the model, ``cv/``, ``mlp/``) to its
    waypoints [N, 6, 2] (ego frame, split order, NaN where unparsed). E.g. ``LogPDMS`` (``platform/sim/log_pdms.py``).
    """
    from odvla.platform.export import load_export_config

    if not cfg.data.shards:
        raise ValueError("eval: data.shards is not set (run `odvla prepare` and pass --set data.shards=DIR)")
    split = cfg.eval.split
    if official_out is not None:
        from odvla.platform.eval.official_export import check_out_dir

        check_out_dir(official_out, force)  # before the model runs: fail fast
    out = Path(out_dir or cfg.eval.out or Path("runs") / "eval" / time.strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    export_dir, export_cfg = load_export_config(model_ref, cfg.tracking.tracking_uri)
    from odvla.platform.data.codebook import check_model_against_shards

    check_model_against_shards(export_cfg.model, cfg.data.shards)  # 'action': the same codebook, or an error
    # the network (and so the image size the data pipeline resizes to) is the export's, whatever cfg.model says;
    # data.clip_len is how it was trained: evaluation reads single keyframes (state comes from eval.temporal)
    cfg = dataclasses.replace(cfg, model=export_cfg.model, data=dataclasses.replace(cfg.data, clip_len=1))

    val = read_split_table(cfg.data.shards, split, _GT_COLUMNS)
    if val.num_rows == 0:
        raise ValueError(f"eval: split {split!r} of {cfg.data.shards} has no samples")
    tokens = val.column("sample_token").to_pylist()
    for proto in protocols:  # before the model runs: fail fast
        proto.check(cfg.data, read_split_table(cfg.data.shards, split, proto.check_columns))
    qa = _qa_examples(cfg.data, cfg.eval, cfg.train.seed, split)

    t0 = time.perf_counter()
    all_columns = _predict(cfg.data, cfg.model.vision, cfg.eval, cfg.tracking, model_ref, export_dir, split, tokens,
                           qa)
    seconds = time.perf_counter() - t0
    is_plan = all_columns["task"] == "planning"
    cols = _planning_rows({k: v[is_plan] for k, v in all_columns.items()}, tokens, split)
    qa_columns = {k: v[~is_plan] for k, v in all_columns.items()}

    # 1) planning: the model, the baselines and the tracker
    parsed = cols["parsed"].astype(bool)
    metrics = _predict_figures(cols, parsed, seconds, len(all_columns["task"]), bool(cfg.eval.temporal))
    _report_malformed(cols, parsed, out)
    pred = np.asarray(cols["pred_traj"], np.float64).reshape(len(tokens), FUTURE_STEPS, 2)
    pred[~parsed] = np.nan
    truth = PlanningTruth.from_table(val)
    metrics.update(score_trajectories(pred, truth))
    plans: dict = {"": pred}
    metrics.update(baseline_metrics(cfg.data, cfg.eval, cfg.train.seed, val, truth, plans))
    for proto in protocols:
        metrics.update(_extra_protocol(proto, cfg.data, split, tokens, plans, out))
    metrics.update(_perception(cfg.data, split, cols, out / "perception"))
    if official_out is not None:
        metrics.update(_write_official_inputs(official_out, val, truth, pred, parsed, force))

    # 2) QA metrics against the references of each (sample, task, question)
    if qa is not None:
        metrics.update(_score_qa(qa, qa_columns))
        cols = _concat(cols, qa_columns)

    predictions_path = _write_predictions(cols, out / "predictions.parquet")
    table_md = results_table(metrics)
    for proto in protocols:
        table_md += "\n" + "\n".join(proto.table(metrics))
    (out / "results.md").write_text(table_md)
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    _plots(cfg.data, split, val, pred, out / "plots", cfg.eval.plots)
    _log_mlflow(cfg.tracking, run_id, metrics, out)
    return EvalResult(metrics, table_md, predictions_path, out)


def _predict(data: DataConfig, vision: VisionConfig, eval_cfg: EvalConfig, tracking: TrackingConfig, model_ref: str,
             export_dir, split: str, tokens: list, qa: Optional[pa.Table]) -> dict:
    """One pass of the replicas: a planning row for every sample of ``tokens``, then the QA examples ``qa`` (when
    the store has any). With ``eval.temporal`` the planning rows come from whole scenes in keyframe order carrying
    ``SceneState``; QA rows always stay per example. Returns the prediction columns of every row."""
    from odvla.platform.tracking.store import resolve_tracking_uri

    examples = pa.table({"sample_token": tokens, "task": ["planning"] * len(tokens), "question": [""] * len(tokens),
                         "answer": [""] * len(tokens)})
    if qa is not None:  # references stay in ``qa``; the model sees '' as the answer
        examples = pa.concat_tables([examples, pa.table({
            "sample_token": qa.column("sample_token").combine_chunks(), "task": qa.column("task").combine_chunks(),
            "question": qa.column("question").combine_chunks(), "answer": pa.array([""] * qa.num_rows)})])
    # replicas read a local export folder directly; an MLflow URI is downloaded by each replica (multi-node)
    remote = str(model_ref).startswith(("runs:/", "models:/"))
    actor_ref = str(model_ref) if remote else str(export_dir)
    replica_tracking_uri = resolve_tracking_uri(tracking.tracking_uri) if remote else None

    def rows(table: pa.Table) -> dict:
        from odvla.platform.data.pipeline import build_dataset
        from odvla.platform.eval.predict import predict_dataset

        e = eval_cfg
        return predict_dataset(build_dataset(data, vision, split, examples=table), actor_ref,
                               e.batch_size, e.concurrency, e.num_gpus_per_replica, e.max_new_tokens,
                               tracking_uri=replica_tracking_uri)

    if not eval_cfg.temporal:
        return rows(examples)
    all_columns = _scene_predictions(data, vision, eval_cfg, actor_ref, split, replica_tracking_uri)
    return _concat(all_columns, rows(examples.slice(len(tokens)))) if qa is not None else all_columns


def _perception(data: DataConfig, split: str, cols: dict, folder: Path) -> dict:
    """The devkit's detection and tracking figures of the planning rows' agent queries (``perception/...``)."""
    from odvla.platform.eval.nusc_devkit import devkit_figures, tracks_from_columns

    return devkit_figures(data, split, tracks_from_columns(cols), folder)


def _extra_protocol(proto, data: DataConfig, split: str, tokens: list, plans: dict, out: Path) -> dict:
    """One extra protocol's figures for the plans (``plans``: prefix -> [N, 6, 2], split order); its per-sample
    rows to ``out/<name>_samples.parquet``."""
    rows = read_split_table(data.shards, split, proto.columns)
    if rows.column("sample_token").to_pylist() != tokens:
        raise RuntimeError(f"eval: the {split} rows changed order between two reads of {data.shards}")
    figures, records = proto.score(data, rows, plans)
    if records:
        pq.write_table(pa.Table.from_pylist(records), out / f"{proto.name}_samples.parquet")
    return figures


def _planning_rows(cols: dict, tokens: list, split: str) -> dict:
    """The planning prediction columns in the split's order (``tokens``), with an empty ``reference``; exactly one
    prediction per sample, or a RuntimeError naming the first samples without one."""
    row_of_token = {t: i for i, t in enumerate(cols["sample_token"].tolist())}
    missing = [t for t in tokens if t not in row_of_token]
    if missing or len(cols["sample_token"]) != len(tokens):
        raise RuntimeError(f"eval: {len(missing)} of {len(tokens)} {split} samples got no planning prediction "
                           f"(first: {missing[:3]}); {len(cols['sample_token'])} planning rows came back")
    order = np.array([row_of_token[t] for t in tokens])
    cols = {k: v[order] for k, v in cols.items()}
    cols["reference"] = np.full(len(order), "", dtype=object)
    return cols


def _predict_figures(cols: dict, parsed: np.ndarray, seconds: float, rows: int, temporal: bool) -> dict:
    """``predict/...``: samples, malformed answers, the pass's time and pace over all ``rows``, tokens generated."""
    return {"predict/samples": float(len(parsed)), "predict/temporal": float(temporal),
            "predict/malformed": float((~parsed).sum()),
            "predict/malformed_rate": float((~parsed).mean()), "predict/seconds": seconds,
            "predict/rows_per_s": rows / max(seconds, 1e-9),
            "predict/mean_generated_tokens": float(cols["num_generated_tokens"].mean())}


def _report_malformed(cols: dict, parsed: np.ndarray, out: Path) -> None:
    """Answers that did not parse are not scored: they are counted, logged and listed in ``malformed.txt``."""
    if not (~parsed).any():
        return
    bad = [f"{t}: {e}" for t, e in zip(cols["sample_token"][~parsed], cols["error"][~parsed])]
    log.warning("eval: %d of %d answers did not parse into a trajectory (not scored, counted in "
                "predict/malformed): %s", len(bad), len(parsed), "; ".join(bad[:5]))
    (out / "malformed.txt").write_text("\n".join(bad) + "\n")


def _write_official_inputs(official_out, val: pa.Table, truth: PlanningTruth, pred: np.ndarray, parsed: np.ndarray,
                           force: bool) -> dict:
    """The released evaluation's input files (``official_export.py``); returns the ``official/...`` figures."""
    from odvla.platform.eval.official_export import write_official

    rows = val.select(["sample_token", "command", "ego_state", "agent_boxes", "agent_class", "agent_visibility",
                       "lidar2ego"]).to_pylist()
    summary = write_official(official_out, rows, truth, pred, parsed, force=force)
    return {"official/samples": float(summary["samples"]),
            "official/fallback_constant_velocity": float(summary["fallback_constant_velocity"])}


def _score_qa(qa: pa.Table, qa_columns: dict) -> dict:
    """Caption metrics of the QA answers against every reference of their (sample, task, question); adds the
    joined references to ``qa_columns['reference']``. A QA prediction that matches no example is a RuntimeError."""
    from odvla.platform.eval.qa_metrics import compute_qa_metrics

    by_key: dict = {}
    for tok, task, q, a in zip(qa.column("sample_token").to_pylist(), qa.column("task").to_pylist(),
                               qa.column("question").to_pylist(), qa.column("answer").to_pylist()):
        by_key.setdefault((tok, task, q), []).append(a)
    keys = list(zip(qa_columns["sample_token"].tolist(), qa_columns["task"].tolist(),
                    qa_columns["question"].tolist()))
    unknown = [k for k in keys if k not in by_key]
    if unknown or len(keys) != qa.num_rows:
        raise RuntimeError(f"eval: QA predictions do not match the {qa.num_rows} examples "
                           f"({len(keys)} came back; unknown: {unknown[:3]})")
    qa_columns["reference"] = np.asarray(["\n".join(by_key[k]) for k in keys], dtype=object)
    return compute_qa_metrics([by_key[k] for k in keys], qa_columns["answer"].tolist(),
                              ids=[f"{i}:{k[0]}" for i, k in enumerate(keys)])


def _plots(data: DataConfig, split: str, val: pa.Table, pred: np.ndarray, folder: Path, count: int) -> list[Path]:
    """BEV and front-camera PNGs for ``count`` samples of ``val`` (evenly spread over the split ``split`` of
    ``data.shards``, its cameras under ``data``'s dataroot)."""
    if count <= 0:
        return []
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.eval.plots import bev_plot, camera_plot

    full = read_split_table(data.shards, split)
    idx = np.unique(np.linspace(0, val.num_rows - 1, min(count, val.num_rows)).round().astype(int))
    row_of_token = {t: i for i, t in enumerate(full.column("sample_token").to_pylist())}
    try:
        dataroot = resolve_dataroot(data)
    except (FileNotFoundError, KeyError, ValueError) as e:
        log.warning("eval: no dataroot for camera pictures (%s); BEV plots only", e)
        dataroot = None
    paths = []
    for i in idx:
        tok = val.column("sample_token")[int(i)].as_py()
        row = full.slice(row_of_token[tok], 1).to_pylist()[0]
        paths.append(bev_plot(row, pred[i], folder / f"bev_{i:04d}_{tok[:12]}.png"))
        if dataroot:
            paths.append(camera_plot(row, pred[i], dataroot, folder / f"cam_{i:04d}_{tok[:12]}.png"))
    return paths


def _log_mlflow(tracking_cfg: TrackingConfig, run_id: Optional[str], metrics: dict, out: Path) -> None:
    """Metrics, table, plots and predictions into the given run, else into the active run, else nowhere (the store of
    ``tracking_cfg.tracking_uri``)."""
    import mlflow

    from odvla.platform.tracking.resilient import ResilientTracker
    from odvla.platform.tracking.store import resolve_tracking_uri

    if run_id is None:
        active = mlflow.active_run()
        if active is None:
            return
        run_id = active.info.run_id
    tracker = ResilientTracker(resolve_tracking_uri(tracking_cfg.tracking_uri), run_id)
    tracker.log_metrics({f"eval/{k}": float(v) for k, v in metrics.items() if np.isfinite(v)}, step=0)
    tracker.log_artifacts(out, artifact_path="eval")
