"""The planners of the closed loop, by name, and the model's request and answer as the simulator sees them.

    make_planner(PlannerSpec("model", "export", {"ref": "runs:/<id>/export"}))   # the model, in this process
    make_planner(PlannerSpec("model", "http", {"url": "http://127.0.0.1:8000"}))  # the served model
    make_planner(PlannerSpec("expert"))                                           # a baseline

The model drives two ways, through one code path for the plan:

- ``export``: an export (``load_export``: a folder, ``runs:/`` or ``models:/`` reference) loaded in this process.
  Each observation becomes the body of a ``/v1/plan`` request (:func:`request_body`), which then goes through
  Serve's own request path in process: the JSON part validated by the endpoint's schema, ``serve.preprocess``
  turning it into a model row, the replica's ``SessionStore`` carrying the ``SceneState`` across ticks, the
  replica's ``collate_items`` and ``model.generate``.
- ``http``: the same body posted to a running ``odvla serve`` endpoint with ``serve.client.PlannerClient``, with a
  session per rollout (``session_id``, ``scene_token`` = the scenario name, ``frame_index`` = the tick), so the
  replica carries the state.

Both answers (the replica's output dict, or the HTTP response) are read by :func:`plan_result`: waypoints that did
not parse, an HTTP error or an exception become ``PlanResult(error=...)``, which the rollout counts and reports per
scenario (``platform/sim/rollout.py``); nothing replaces them.

Both model planners need Serve's code, which lives above ``platform`` in the dependency order
(``docs/architecture.md``): they are in ``serve/sim_planners.py`` and reach this module through the
``odvla.sim_planners`` entry-point group of pyproject.toml, as ``odvla serve`` reaches the command line.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from importlib.metadata import entry_points

import numpy as np

from odvla.model.constants import CAMERAS, EGO_STATE_FIELDS, FUTURE_STEPS
from odvla.platform.sim.baselines import BASELINES, EgoMLPPlanner
from odvla.platform.sim.rollout import PlanResult
from odvla.platform.sim.sensors import Observation

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "odvla.sim_planners"
MODEL_KINDS = ("export", "http")
"""How the model drives: ``export`` in this process, ``http`` through a served endpoint."""


@dataclass(frozen=True)
class PlannerSpec:
    """A planner by name (what crosses to Ray workers, which build the planner themselves): ``name`` labels the
    table row; ``kind`` is a baseline (``BASELINES``) or a model kind (``MODEL_KINDS``); ``args`` its arguments
    (``ref``, ``tracking_uri``, ``torch_threads`` for ``export``; ``url``, ``token``, ``timeout_s`` for ``http``)."""

    name: str
    kind: str = ""
    args: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.kind:
            object.__setattr__(self, "kind", self.name)
        if self.kind not in (*BASELINES, *MODEL_KINDS):
            raise ValueError(f"planner {self.name!r}: unknown kind {self.kind!r}; choices: "
                             f"{', '.join((*BASELINES, *MODEL_KINDS))}")

    def __hash__(self):
        return hash((self.name, self.kind, tuple(sorted((k, repr(v)) for k, v in self.args.items()))))


def make_planner(spec: PlannerSpec, ego_mlp=None):
    """The planner of ``spec``. ``ego_mlp``: a fitted ``EgoMLPBaseline`` to reuse (default: fitted here)."""
    if spec.kind == "ego_mlp":
        return EgoMLPPlanner(ego_mlp)
    if spec.kind in BASELINES:
        return BASELINES[spec.kind]()
    found = {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}
    if spec.kind not in found:
        raise ValueError(f"planner {spec.name!r}: no {spec.kind!r} entry in the {ENTRY_POINT_GROUP!r} entry-point "
                         f"group (install the package: pip install -e .)")
    planner = found[spec.kind].load()(**spec.args)
    planner.name = spec.name
    return planner


def request_body(obs: Observation, session_id: str | None) -> dict:
    """The ``/v1/plan`` body of ``obs`` (``serve/schemas.py``): six cameras (JPEG bytes, intrinsics for the rendered
    size, ``extrinsics`` = sensor2ego), ``ego_state`` (``EGO_STATE_FIELDS``), the command text, the history (the
    past positions of ``past_traj``, None where ``past_mask`` is 0), and the session: ``session_id``,
    ``scene_token`` (the scenario) and ``frame_index`` (the tick)."""
    k = np.asarray(obs.intrinsics, np.float64).reshape(len(CAMERAS), 3, 3)
    t = np.asarray(obs.sensor2ego, np.float64).reshape(len(CAMERAS), 4, 4)
    cameras = [{"name": cam, "image": bytes(obs.jpegs[i]), "intrinsics": k[i].tolist(), "extrinsics": t[i].tolist()}
               for i, cam in enumerate(CAMERAS)]
    body = {"cameras": cameras,
            "ego_state": {f: float(v) for f, v in zip(EGO_STATE_FIELDS, np.asarray(obs.ego_state, np.float64))},
            "command": obs.command_text,
            "history": [[float(p[0]), float(p[1])] if m > 0 else None for p, m in zip(obs.past_traj, obs.past_mask)],
            "scene_token": obs.scene_token, "frame_index": int(obs.frame_index)}
    if session_id:
        body["session_id"] = session_id
    return body


def plan_result(answer: dict) -> PlanResult:
    """A ``/v1/plan`` answer (the HTTP response, or the replica's output in process) -> ``PlanResult``:
    ``waypoints`` [6, 2] when the answer parsed, else an error quoting the answer's warning."""
    wp = answer.get("waypoints")
    if not answer.get("parsed") or wp is None:
        why = "; ".join(w for w in answer.get("warnings", ()) if "did not parse" in w) or "no waypoints"
        return PlanResult(None, f"unparsed answer: {why} (answer {str(answer.get('answer', ''))[:120]!r})")
    w = np.asarray(wp, np.float64)
    if w.shape != (FUTURE_STEPS, 2) or not np.isfinite(w).all():
        return PlanResult(None, f"answer waypoints of shape {w.shape} (expected ({FUTURE_STEPS}, 2), finite)")
    return PlanResult(w)
