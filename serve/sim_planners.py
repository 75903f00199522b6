"""The model as a closed-loop ``Planner`` (``platform/sim/rollout.py``), two ways, through Serve's request path.

- :class:`ExportPlanner` (entry point ``export``): an export loaded in this process. Each observation's
  ``/v1/plan`` body (``platform/sim/planners.py``, ``request_body``) goes through what the endpoint does with a
  multipart request: the JSON part validated by ``PlanForm`` (``serve/schemas.py``), ``serve.preprocess.scene_item``
  (JPEG decode and resize, intrinsics scaled, history mask), the replica's ``SessionStore`` (checkout and commit of
  the ``SceneState``, ``serve/sessions.py``), ``collate_items`` and ``model.generate`` as ``serve/deployment.py``
  runs them, and the same reading of the answer (parsed and finite, else the "did not parse" warning).
- :class:`HttpPlanner` (entry point ``http``): the same body posted to a running ``odvla serve`` endpoint with
  ``PlannerClient``, one session per rollout.

An answer that did not parse, a body the schema refuses, an HTTP error or a lost connection is returned as
``PlanResult(error=...)`` (``platform/sim/planners.py``, ``plan_result``): the rollout counts it.
"""
from __future__ import annotations

import json
import logging
import uuid
from typing import Optional

import numpy as np

from odvla.model.constants import CAMERAS
from odvla.platform.sim.planners import plan_result, request_body
from odvla.platform.sim.rollout import PlanResult
from odvla.platform.sim.sensors import check_cameras

log = logging.getLogger(__name__)


def _session_id(scenario) -> str:
    return f"sim-{scenario.name}-{uuid.uuid4().hex[:8]}"


def check_model_cameras(image_hw, what: str) -> tuple[int, int]:
    """The model's input size (H, W), after checking the renderer can produce it (``check_cameras``); the
    ValueError names ``what`` (the export or the endpoint)."""
    try:
        return check_cameras(image_hw)
    except ValueError as e:
        raise ValueError(f"{what}: the simulator's renderer cannot produce this model's cameras: {e}") from None


class ExportPlanner:
    """The model of export ``ref`` (folder, ``runs:/``, ``models:/``) in this process (module docstring).
    ``torch_threads`` > 0 sets torch's intra-op threads, as a Serve replica does (``serve.torch_threads``)."""

    name = "model"

    def __init__(self, ref: str, tracking_uri: Optional[str] = None, torch_threads: int = 0, device: str = "cpu"):
        import torch

        from odvla.platform.export import load_export
        from odvla.serve.sessions import SessionStore

        if torch_threads > 0:
            torch.set_num_threads(int(torch_threads))
        self.ref = str(ref)
        self.device = device
        self.model, _ = load_export(self.ref, device=device, tracking_uri=tracking_uri)
        self.model.eval()
        v = self.model.config.vision
        self.image_hw = check_model_cameras((int(v.image_height), int(v.image_width)), f"model export {self.ref}")
        self.sessions = SessionStore(idle_s=float("inf"))
        self.session_id: Optional[str] = None

    def reset(self, scenario) -> None:
        self.session_id = _session_id(scenario)

    def answer(self, body: dict) -> dict:
        """The replica's answer to one ``/v1/plan`` body (with ``image`` JPEG bytes): ``waypoints``, ``parsed``,
        ``answer``, ``warnings``, ``session``; an ``input_error`` when the schema or preprocessing refuses it."""
        import torch
        from pydantic import ValidationError

        from odvla.serve.deployment import collate_items
        from odvla.serve.preprocess import RequestError, scene_item
        from odvla.serve.schemas import PlanForm

        meta = {**body, "cameras": [{k: v for k, v in c.items() if k != "image"} for c in body["cameras"]]}
        try:
            req = PlanForm.model_validate_json(json.dumps(meta))
            item = scene_item(req, [c["image"] for c in body["cameras"]], list(CAMERAS), req.command, "planning",
                              req.question or "", self.image_hw)
        except ValidationError as e:
            err = e.errors(include_url=False)[0]
            where = ".".join(str(p) for p in err.get("loc", ()))
            return {"input_error": f"{where}: {err.get('msg')} (input {err.get('input')!r})"}
        except RequestError as e:
            return {"input_error": str(e)}
        sid = req.session_id
        co = self.sessions.checkout(sid, item["scene_token"], item["frame_index_given"]) if sid else None
        batch = collate_items([item])
        batch = {k: (v.to(self.device) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
        with torch.inference_mode():
            gen = self.model.generate(batch, states=[co.state if co else None], max_new_tokens=None)
        traj = np.asarray(gen.trajectories[0], dtype=np.float64)
        ok = bool(gen.parsed[0]) and bool(np.isfinite(traj).all())
        warnings = [] if ok else [f"the answer did not parse as a trajectory: {gen.errors[0]}"]
        session = None
        if sid:
            state = gen.states[0] if gen.states is not None else None
            frames = self.sessions.commit(sid, state, item["scene_token"], item["frame_index_given"],
                                          co.frames_before)
            session = {"session_id": sid, "state": co.status, "frames": frames}
            if co.warning:
                warnings.append(co.warning)
        return {"answer": gen.answers[0], "waypoints": traj.tolist() if ok else None, "parsed": ok,
                "warnings": warnings, "session": session}

    def plan(self, obs) -> PlanResult:
        out = self.answer(request_body(obs, self.session_id))
        if "input_error" in out:
            return PlanResult(None, f"request refused: {out['input_error']}")
        return plan_result(out)


class HttpPlanner:
    """The model served at ``url`` (``odvla serve``), one session per rollout (module docstring)."""

    name = "model"

    def __init__(self, url: str, token: Optional[str] = None, timeout_s: float = 120.0, upload: str = "multipart"):
        from odvla.serve.client import PlannerClient

        self.url = url
        self.client = PlannerClient(url, token=token, timeout_s=timeout_s, upload=upload)
        self.model_info = self.client.model()  # the endpoint answers (the ingress resizes to the model's input)
        self.session_id: Optional[str] = None
        self.last_session: Optional[dict] = None
        self.warnings: list = []

    def reset(self, scenario) -> None:
        """A new session; ``warnings`` [(tick, text)] collects what the endpoint said during the rollout (a replica
        lost and the tracking state rebuilt on another, ...)."""
        self.session_id = _session_id(scenario)
        self.warnings = []

    def plan(self, obs) -> PlanResult:
        import httpx

        from odvla.serve.client import PlannerError

        try:
            out = self.client.plan(**request_body(obs, self.session_id))
        except PlannerError as e:
            return PlanResult(None, f"HTTP {e.status}: {e.message}")
        except httpx.HTTPError as e:
            return PlanResult(None, f"{type(e).__name__}: {e}")
        self.last_session = out.get("session")  # session_id, state, frames and the replica that holds it
        self.warnings += [(int(obs.frame_index), str(w)) for w in out.get("warnings") or ()]
        return plan_result(out)
