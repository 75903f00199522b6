"""``Planner``: the model replica of the Serve app.

One replica holds one loaded export (``odvla.platform.export.load_export``), a ``SessionStore`` with the
per-scene tracking state of the sessions routed to it, and a dynamic batcher: concurrent requests wait up to
``batch_wait_timeout_s`` to run together in one ``model.generate`` of at most ``max_batch_size``.
Serve never sends a replica more than ``max_ongoing_requests`` at once, so the app sets it >= ``max_batch_size``.
Both batch settings come in through ``user_config`` (``reconfigure``), so they change without a restart (the
bench compares batched and unbatched that way).

Inputs arrive preprocessed by the ingress (uint8 images resized to the network input, intrinsics scaled); the
replica normalises, stacks the batch of ``odvla.model.batch`` and runs ``generate`` in a worker thread so the
replica keeps answering health checks and queue-length probes while the model runs.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, Optional

import numpy as np
from ray import serve

from odvla.platform.config.schema import ServeConfig
from odvla.serve.sessions import SessionStore

_DEFAULTS = ServeConfig()
"""Batch settings until ``reconfigure`` applies the deployment's ``user_config`` (from ``ServeConfig``)."""

log = logging.getLogger(__name__)


def resolve_version(ref: str, tracking_uri: Optional[str] = None) -> Optional[str]:
    """``models:/name/3`` -> '3'; ``models:/name/<alias>`` or ``models:/name@<alias>`` -> the version the alias
    points at (None when the registry cannot say: the ref itself still identifies the model)."""
    from odvla.platform.tracking.registry import parse_model_ref

    try:
        name, version, alias = parse_model_ref(ref)
    except ValueError:  # a folder, runs:/ URI or malformed reference: the ref itself identifies the model
        return None
    if version:
        return version
    try:
        from mlflow import MlflowClient

        return str(MlflowClient(tracking_uri).get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def weights_fingerprint(model) -> str:
    """sha256 (12 hex) over every tensor's name, dtype, shape and raw bytes: identifies the served weights
    exactly, whatever the device or thread count (sums of floats would not)."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def collate_items(items: list[dict]) -> dict:
    """Items of ``preprocess.scene_item`` -> the model batch (model/batch.py) for inference (no ground truth).
    Images go in as uint8 ``[B, 6, 3, H, W]``, as in training: the items' channel-last ``[6, H, W, 3]`` stacked and
    viewed channel-first without a copy (``collate.images_chw``), and the vision encoder applies its backbone's
    normalisation."""
    import torch

    from odvla.platform.data.collate import images_chw

    b = len(items)
    batch = {
        "images": images_chw(np.stack([it["images"] for it in items])),
        "intrinsics": torch.from_numpy(np.stack([it["intrinsics"] for it in items])),
        "sensor2ego": torch.from_numpy(np.stack([it["sensor2ego"] for it in items])),
        "ego_state": torch.from_numpy(np.stack([it["ego_state"] for it in items])),
        "command": torch.tensor([it["command"] for it in items], dtype=torch.int64),
        "past_traj": torch.from_numpy(np.stack([it["past_traj"] for it in items])),
        "past_mask": torch.from_numpy(np.stack([it["past_mask"] for it in items])),
        "future_traj": torch.zeros(b, 6, 2),
        "future_mask": torch.zeros(b, 6),
        "frame_index": torch.tensor([it["frame_index"] for it in items], dtype=torch.int64),
    }
    for key in ("sample_token", "scene_token", "task", "question", "answer"):
        batch[key] = [it[key] for it in items]
    return batch


@serve.deployment(name="Planner", max_ongoing_requests=_DEFAULTS.max_ongoing_requests,
                  health_check_period_s=_DEFAULTS.health_check_period_s, health_check_timeout_s=30)
class Planner:
    def __init__(self, model_ref: str, session_idle_s: float = 300.0, torch_threads: int = 1,
                 device: str = "auto", tracking_uri: Optional[str] = None):
        import torch

        from odvla.platform.export import load_export
        from odvla.platform.log_setup import configure as configure_logging

        configure_logging()  # a Serve replica: the library's records go to its log
        if torch_threads > 0:
            torch.set_num_threads(int(torch_threads))
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.model, _ = load_export(model_ref, device=device, tracking_uri=tracking_uri)
        self.model_cfg = self.model.config  # the export's ModelConfig: the one section the replica reads
        self.model.eval()
        self.sessions = SessionStore(session_idle_s)
        ctx = serve.get_replica_context()
        self.replica = ctx.replica_id.to_full_id_str()
        self.max_batch_size = _DEFAULTS.max_batch_size
        self.batch_wait_timeout_s = _DEFAULTS.batch_wait_timeout_s
        from odvla.model.constrained_decoding import PRE

        self.min_plan_tokens = int(self.model.grammar.min_to_finish(PRE)) + 1  # a whole trajectory + end of answer
        self._fatal: Optional[str] = None
        self.info = {
            "ref": str(model_ref),
            "version": resolve_version(str(model_ref), tracking_uri),
            "preset": self.model_cfg.preset,
            "checksum": weights_fingerprint(self.model),
            "image_hw": [int(self.model_cfg.vision.image_height), int(self.model_cfg.vision.image_width)],
        }
        log.info("Planner replica %s loaded %s (%s) on %s", self.replica, model_ref, self.info["checksum"], device)

    # ------------------------------------------------------------------ Serve hooks
    def reconfigure(self, user_config: dict) -> None:
        """``user_config``: ``max_batch_size``, ``batch_wait_timeout_s`` (applied without a restart)."""
        user_config = user_config or {}
        self.max_batch_size = int(user_config.get("max_batch_size", self.max_batch_size))
        self.batch_wait_timeout_s = float(user_config.get("batch_wait_timeout_s", self.batch_wait_timeout_s))
        self._run_batch.set_max_batch_size(self.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(self.batch_wait_timeout_s)

    async def check_health(self) -> None:
        """Serve restarts the replica when this raises: a model that hit a device error stays broken. Also the
        periodic sweep of idle sessions (every ``health_check_period_s``), so an idle replica frees their state."""
        evicted = self.sessions.evict_idle()
        if evicted:
            log.info("evicted %d idle session(s) after %.0f s: %s", len(evicted), self.sessions.idle_s, evicted[:5])
        if self._fatal:
            raise RuntimeError(f"planner replica unhealthy: {self._fatal}")
        if self.model is None:
            raise RuntimeError("planner replica has no model loaded")

    # ------------------------------------------------------------------ API
    def model_info(self) -> dict:
        return {**self.info, "max_batch_size": self.max_batch_size,
                "batch_wait_timeout_s": self.batch_wait_timeout_s, "replica": self.replica,
                "sessions": len(self.sessions)}

    async def infer(self, item: dict, session_id: Optional[str] = None) -> dict:
        """Run one request (an item of ``preprocess.scene_item``); with ``session_id``, carry its scene state.

        ``session_id`` is a keyword argument on purpose: ``SessionAffinityRouter`` reads it to pick this replica.
        """
        t0 = time.perf_counter()
        if tuple(item["images"].shape[1:3]) != tuple(self.info["image_hw"]):
            # the ingress resized for another model (this deployment was updated): it refreshes and retries
            return {"stale_image_hw": self.info["image_hw"]}
        if not session_id:
            out = await self._run_batch((item, None, t0))
            if "input_error" in out:
                return out
            out.pop("state", None)
            out["session"] = None
            return out
        async with self.sessions.lock(session_id):
            frame = item.get("frame_index_given")
            read_only = item["task"] != "planning"  # a question about the current frame does not advance it
            co = self.sessions.checkout(session_id, item["scene_token"], frame, read_only=read_only)
            if frame is None:  # frames counted by the session: the model continues its state on frame > 0
                n = co.frames_before - (1 if read_only and co.frames_before else 0)
                item = {**item, "frame_index": n if co.status == "continued" else 0}
            out = await self._run_batch((item, co.state, t0))
            if "input_error" in out:
                return out  # the session is left as it was
            state = out.pop("state")
            if read_only and co.status == "continued":
                frames = co.frames_before
            else:
                frames = self.sessions.commit(session_id, state, item["scene_token"], frame, co.frames_before)
        out["session"] = {"session_id": session_id, "state": co.status, "frames": frames, "replica": self.replica}
        if co.warning:
            out["warnings"].append(co.warning)
        return out

    @serve.batch(max_batch_size=_DEFAULTS.max_batch_size, batch_wait_timeout_s=_DEFAULTS.batch_wait_timeout_s)
    async def _run_batch(self, requests: list[tuple[dict, Any, float]]) -> list[dict]:
        return await self._process(requests)

    async def _process(self, requests: list[tuple[dict, Any, float]]) -> list[dict]:
        """One model batch -> one output dict per request (``input_error`` for a request the model cannot take:
        when a batch fails on its input, its requests run one by one so only the offending one fails)."""
        start = time.perf_counter()
        items = [r[0] for r in requests]
        states = [r[1] for r in requests]
        max_new = max((it.get("max_new_tokens") or 0) for it in items) or None
        raised = max_new is not None and max_new < self.min_plan_tokens and any(
            it["task"] == "planning" for it in items)
        if raised:
            max_new = self.min_plan_tokens
        try:
            gen, stages = await asyncio.to_thread(self._generate, items, states, max_new)
        except ValueError as e:  # an input the model cannot take: find it, and let the rest of the batch run
            if len(requests) == 1:
                return [{"input_error": f"{type(e).__name__}: {e}"}]
            return [(await self._process([r]))[0] for r in requests]
        outs = []
        for i, (item, _state, t0) in enumerate(requests):
            traj = np.asarray(gen.trajectories[i], dtype=np.float64)
            ok = bool(gen.parsed[i]) and bool(np.isfinite(traj).all())
            warnings = []
            asked = item.get("max_new_tokens")
            if item["task"] == "planning" and asked is not None and asked < self.min_plan_tokens:
                warnings.append(f"max_new_tokens={asked} cannot hold a trajectory; raised to "
                                f"{self.min_plan_tokens} for this model")
            if item["task"] == "planning" and not ok:
                warnings.append(f"the answer did not parse as a trajectory: {gen.errors[i]}")
            outs.append({
                "answer": gen.answers[i],
                "waypoints": traj.tolist() if ok else None,
                "parsed": ok,
                "state": gen.states[i] if gen.states is not None else None,
                "warnings": warnings,
                "queue_ms": (start - t0) * 1e3,
                **stages,
                "batch_size": len(requests),
                "generated_tokens": int(gen.num_generated_tokens[i]),
                "replica": self.replica,
                "model": {k: self.info[k] for k in ("ref", "version", "preset", "checksum")}
                | {"max_batch_size": self.max_batch_size, "batch_wait_timeout_s": self.batch_wait_timeout_s},
            })
        return outs

    def _generate(self, items: list[dict], states: list, max_new_tokens: Optional[int]):
        """-> (``GenerateOutput``, stage times: ``batch_ms``/``generate_ms`` wall, ``generate_parts`` (the model's
        own split of ``generate_ms``: ``GenerateOutput.timings``) and ``cpu_ms`` process CPU)."""
        import torch

        t0, c0 = time.perf_counter(), time.process_time()
        batch = collate_items(items)
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        t1, c1 = time.perf_counter(), time.process_time()
        try:
            with torch.inference_mode():
                gen = self.model.generate(batch, states=states, max_new_tokens=max_new_tokens)
            if self.device.startswith("cuda"):
                torch.cuda.synchronize()
            t2, c2 = time.perf_counter(), time.process_time()
            return gen, {"batch_ms": (t1 - t0) * 1e3, "generate_ms": (t2 - t1) * 1e3,
                         "generate_parts": dict(gen.timings),
                         "cpu_ms": {"batch_ms": (c1 - c0) * 1e3, "generate_ms": (c2 - c1) * 1e3}}
        except RuntimeError as e:
            msg = str(e)
            if "CUDA" in msg or "out of memory" in msg:
                self._fatal = f"{type(e).__name__}: {msg[:200]}"
            raise
