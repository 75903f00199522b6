"""Planning with temporal state: each scene in keyframe order, carrying ``SceneState``, as UniAD's test does.

``plan_scene`` is the per-scene loop (one keyframe at a time through ``OpenDriveVLA.generate``, the same per-frame
step training and serving use); ``ScenePlanner`` wraps it as a Ray Data class UDF so a pool of actors each take
whole scenes (one block per scene, ``odvla.platform.data.clips.scene_tables``) in parallel. With
``temporal=False`` every keyframe starts from an empty state: the stateless evaluation.

Output columns: those of ``odvla.platform.eval.predict.OUTPUT_COLUMNS`` plus, per keyframe, the tracks after it:
``frame_index`` int64 and the ``predict.TRACK_COLUMNS`` (``track_ids`` [Q] int64, -1 = no track; ``track_xy`` and
``track_vel`` [Q*2], ``track_boxes`` [Q*9], ego frame, metres and m/s; ``track_scores``, ``track_labels`` [Q]).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Optional

import numpy as np

from odvla.model.constants import FUTURE_STEPS

if TYPE_CHECKING:
    from odvla.model.config import VisionConfig
    from odvla.platform.config.schema import DataConfig, EvalConfig
    from odvla.platform.data.rows import RowSpec


def plan_scene(model, rows: list[dict], temporal: bool, max_new_tokens: Optional[int] = None,
               device: str = "cpu") -> dict:
    """Plan the keyframes ``rows`` (training-ready rows of one scene, any order; ``collate.rows_from_table``) in
    ascending ``frame_index``. Returns column arrays (see the module docstring), keyframe order."""
    import torch

    from odvla.platform.data.collate import collate
    from odvla.platform.eval.predict import TRACK_COLUMNS, state_tracks

    rows = sorted(rows, key=lambda r: int(r["frame_index"]))
    scenes = {str(r["scene_token"]) for r in rows}
    if len(scenes) > 1:
        raise ValueError(f"plan_scene: rows of several scenes {sorted(scenes)[:3]}")
    states = None
    out: dict = {k: [] for k in ("sample_token", "scene_token", "task", "question", "answer", "pred_traj", "gt_traj",
                                 "gt_mask", "parsed", "error", "num_generated_tokens", "frame_index") + TRACK_COLUMNS}
    for r in rows:
        b = collate([r])
        b = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in b.items()}
        with torch.no_grad():
            g = model.generate(b, states=states if temporal else None, max_new_tokens=max_new_tokens)
        states = g.states
        s = g.states[0]
        out["sample_token"].append(str(r["sample_token"]))
        out["scene_token"].append(str(r["scene_token"]))
        for k in ("task", "question"):
            out[k].append(str(r[k]))
        out["answer"].append(g.answers[0])
        out["pred_traj"].append(np.asarray(g.trajectories[0], np.float32).reshape(FUTURE_STEPS * 2))
        out["gt_traj"].append(np.asarray(r["future_traj"], np.float32).reshape(FUTURE_STEPS * 2))
        out["gt_mask"].append(np.asarray(r["future_mask"], np.float32).reshape(FUTURE_STEPS))
        out["parsed"].append(bool(g.parsed[0]))
        out["error"].append(g.errors[0] or "")
        out["num_generated_tokens"].append(int(g.num_generated_tokens[0]))
        out["frame_index"].append(int(r["frame_index"]))
        for k, v in state_tracks(s).items():
            out[k].append(v)
    res = {}
    for k, v in out.items():
        res[k] = np.asarray(v, dtype=object) if isinstance(v[0], str) else np.stack(v) if isinstance(
            v[0], np.ndarray) else np.asarray(v)
    return res


class ScenePlanner:
    """Ray Data class UDF over blocks of one scene's shard rows: ``ds.map_batches(ScenePlanner, batch_size=None,
    batch_format='pyarrow', compute=ActorPoolStrategy(size=n), fn_constructor_kwargs={...})``."""

    def __init__(self, export_dir: str, spec: RowSpec, dataroot: str, temporal: bool,
                 max_new_tokens: Optional[int] = None, use_gpu: bool = False, tracking_uri: Optional[str] = None):
        import torch

        from odvla.platform.export import load_export
        from odvla.platform.log_setup import configure as configure_logging

        configure_logging()  # a Ray Data actor: the library's records go to its log
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, _ = load_export(export_dir, device=self.device, tracking_uri=tracking_uri)
        self.model.eval()
        self.spec, self.dataroot, self.temporal, self.max_new = spec, dataroot, temporal, max_new_tokens

    def __call__(self, table) -> dict:
        from odvla.platform.data.collate import rows_from_table

        return plan_scene(self.model, rows_from_table(table, self.dataroot, self.spec), self.temporal,
                          self.max_new, self.device)


def plan_scenes(data: DataConfig, vision: VisionConfig, eval_cfg: EvalConfig, export_ref: str, split: str,
                temporal: bool, tracking_uri: Optional[str] = None) -> dict:
    """Every scene of ``split`` of ``data.shards`` through the actor pool (``eval_cfg.concurrency`` replicas), rows
    sized for ``vision`` (the export's ``model.vision``); columns concatenated."""
    import ray

    from odvla.platform.data.clips import scene_tables
    from odvla.platform.data.pipeline import resolve_dataroot
    from odvla.platform.data.rows import SHARD_COLUMNS, RowSpec
    from odvla.platform.data.shards import read_split

    scenes = scene_tables(read_split(data.shards, split, columns=SHARD_COLUMNS))
    ds = ray.data.from_arrow(scenes).map_batches(
        ScenePlanner, batch_size=None, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=int(eval_cfg.concurrency)),
        num_gpus=eval_cfg.num_gpus_per_replica if eval_cfg.num_gpus_per_replica > 0 else None,
        fn_constructor_kwargs={"export_dir": str(export_ref), "spec": RowSpec.from_config(data, vision),
                               "dataroot": resolve_dataroot(data), "temporal": bool(temporal),
                               "max_new_tokens": eval_cfg.max_new_tokens,
                               "use_gpu": eval_cfg.num_gpus_per_replica > 0, "tracking_uri": tracking_uri})
    parts = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
