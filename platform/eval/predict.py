"""Model predictions for every row of a Ray Dataset: ``map_batches`` over an actor pool of model replicas.

Each actor (``PlannerPredictor``, a class-based UDF) loads the export once (``load_export``) on its device (GPU when
the pool asks for GPUs, else CPU) and runs ``OpenDriveVLA.generate`` on collated batches. Every input row gives one
output row, parsed or not: a malformed answer keeps its text, ``parsed=False`` and the codec's error message, so
the caller can count and report it.

Output columns (numpy batch): sample_token, scene_token, task, question (str); answer (generated text);
pred_traj float32 [B, 12] (6 x 2, ego frame, NaN where unparsed); gt_traj [B, 12]; gt_mask [B, 6]; parsed (bool);
error (str, '' when parsed); num_generated_tokens (int64); and the agent tracks each row's keyframe leaves
(``TRACK_COLUMNS``, from a fresh state: stateless): track_ids int64 [B, Q] (-1 = no track), track_xy and
track_vel float32 [B, 2Q] (ego frame, metres and m/s), track_boxes float32 [B, 9Q] (each slot's x, y, z, w, l, h,
yaw, vx, vy; ego frame, metres, rad, m/s), track_scores float32 [B, Q] and track_labels int64 [B, Q] (index into
``DETECTION_CLASSES``): the agent queries' boxes, which the nuScenes devkit's evaluators score
(``nusc_submission.py``).
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from odvla.model.constants import FUTURE_STEPS

OUTPUT_COLUMNS = ("sample_token", "scene_token", "task", "question", "answer", "pred_traj", "gt_traj", "gt_mask",
                  "parsed", "error", "num_generated_tokens")
TRACK_COLUMNS = ("track_ids", "track_xy", "track_vel", "track_boxes", "track_scores", "track_labels")


def state_tracks(s) -> dict:
    """One ``SceneState`` -> its ``TRACK_COLUMNS`` values (ids [Q]; centres, velocities [2Q]; boxes [9Q]; scores,
    labels [Q])."""
    boxes = s.track_boxes.float().cpu().numpy()
    q = len(boxes)
    labels = s.track_labels.cpu().numpy() if s.track_labels is not None else np.full(q, -1)
    scores = s.track_scores.float().cpu().numpy() if s.track_scores is not None else np.zeros(q)
    return {"track_ids": s.track_ids.cpu().numpy().astype(np.int64), "track_xy": boxes[:, 0:2].reshape(-1),
            "track_vel": boxes[:, 7:9].reshape(-1), "track_boxes": boxes.reshape(-1),
            "track_scores": scores.astype(np.float32), "track_labels": labels.astype(np.int64)}


def track_columns(states) -> dict:
    """Per-row ``SceneState`` list -> ``TRACK_COLUMNS`` arrays, one row per state (``state_tracks``)."""
    rows = [state_tracks(s) for s in states]
    return {k: np.stack([r[k] for r in rows]) for k in TRACK_COLUMNS}


def _to_device(batch: dict, device) -> dict:
    import torch

    return {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class PlannerPredictor:
    """Ray Data UDF: ``ds.map_batches(PlannerPredictor, fn_constructor_kwargs={...}, compute=ActorPoolStrategy(size=n),
    num_gpus=g)``. It holds the model only: the export's network config is ``self.model.config`` (``ModelConfig``),
    the rest of the export's config is not read here."""

    def __init__(self, export_dir: str, max_new_tokens: Optional[int] = None, constrained: bool = True,
                 use_gpu: bool = False, tracking_uri: Optional[str] = None):
        import torch

        from odvla.platform.export import load_export
        from odvla.platform.log_setup import configure as configure_logging

        configure_logging()  # a Ray Data actor: the library's records go to its log
        self.device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.model, _ = load_export(export_dir, device=self.device, tracking_uri=tracking_uri)
        self.model.eval()
        self.max_new_tokens = max_new_tokens
        self.constrained = constrained

    def __call__(self, batch: dict) -> dict:
        import torch

        from odvla.platform.data.collate import collate

        b = _to_device(collate(batch), self.device)
        n = len(b["sample_token"])
        with torch.no_grad():
            out = self.model.generate(b, states=None, max_new_tokens=self.max_new_tokens,
                                      constrained=self.constrained)
        traj = np.asarray(out.trajectories, dtype=np.float32).reshape(n, FUTURE_STEPS * 2)
        return {
            "sample_token": np.asarray(list(b["sample_token"]), dtype=object),
            "scene_token": np.asarray(list(b["scene_token"]), dtype=object),
            "task": np.asarray(list(b["task"]), dtype=object),
            "question": np.asarray(list(b["question"]), dtype=object),
            "answer": np.asarray(list(out.answers), dtype=object),
            "pred_traj": traj,
            "gt_traj": np.asarray(batch["future_traj"], dtype=np.float32).reshape(n, FUTURE_STEPS * 2),
            "gt_mask": np.asarray(batch["future_mask"], dtype=np.float32).reshape(n, FUTURE_STEPS),
            "parsed": np.asarray(out.parsed, dtype=bool),
            "error": np.asarray([e or "" for e in out.errors], dtype=object),
            "num_generated_tokens": np.asarray(out.num_generated_tokens, dtype=np.int64),
            **track_columns(out.states),
        }


def predict_dataset(ds, export_dir: str, batch_size: int, concurrency: int, num_gpus: float,
                    max_new_tokens: Optional[int] = None, tracking_uri: Optional[str] = None) -> dict:
    """Run the replicas over ``ds`` and gather the outputs into column arrays (one entry per input row).

    ``export_dir``: a folder every replica can read, or a ``runs:/`` / ``models:/`` URI each replica downloads
    (multi-node clusters without a shared filesystem)."""
    import ray.data

    out = ds.map_batches(
        PlannerPredictor,
        fn_constructor_kwargs={"export_dir": str(export_dir), "max_new_tokens": max_new_tokens,
                               "use_gpu": num_gpus > 0, "tracking_uri": tracking_uri},
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=int(concurrency)),
        num_gpus=num_gpus if num_gpus > 0 else None,
    )
    cols: dict = {k: [] for k in OUTPUT_COLUMNS + TRACK_COLUMNS}
    for batch in out.iter_batches(batch_size=None, batch_format="numpy"):
        for k in OUTPUT_COLUMNS + TRACK_COLUMNS:
            cols[k].append(batch[k])
    return {k: (np.concatenate(v) if v else np.zeros((0,))) for k, v in cols.items()}
