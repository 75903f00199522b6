"""The Serve application: ``PlannerAPI`` (FastAPI ingress) in front of ``Planner`` (model replicas).

    serve run serve/config.yaml                       # Serve config file: import_path odvla.serve.app:build_app
    odvla serve --model models:/odvla-planner/champion

HTTP API v1 (OpenAPI at ``/openapi.json``, docs at ``/docs``):
    POST /v1/plan   six cameras + ego state + command (+ history, question, session) -> six waypoints
    POST /v1/chat   scene question answering on the same inputs
    GET  /v1/model  what is served (ref, registry version, weights checksum, batch settings)
    GET  /healthz   the ingress is up;  GET /readyz: a model replica answers (503 until then)

The ingress validates (pydantic, 422 naming the field), decodes and resizes the images like training does, and
calls the ``Planner`` handle with ``session_id`` as a keyword, which the ``SessionAffinityRouter`` uses to keep a
scene on the replica holding its state. Overload at the handle (``max_queued_requests``) is a 503 with
``Retry-After``; a request that outlives ``serve.request_timeout_s`` is a 504; a replica that dies mid-request
is retried on another one. Bad input never reaches the model and never produces a 5xx.
"""
from __future__ import annotations

import asyncio
import logging
import time
import uuid
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from odvla.serve.auth import TOKEN_ENV, make_auth_dependency, token_from_env
from odvla.serve.body_limit import install_body_limit
from odvla.serve.deployment import Planner
from odvla.serve.schemas import (
    POSITION_LIMIT_M,
    ChatResponse,
    ErrorResponse,
    Health,
    ModelInfo,
    PlanResponse,
    SessionInfo,
    Timings,
    encoding_note,
    history_limits,
    request_models,
)
from odvla.serve.upload import BodyError, Scene, body_schema, component_schemas, read_scene

log = logging.getLogger(__name__)

API_TITLE = "OpenDriveVLA planner"
ERROR_STATUSES = {
    400: "the body cannot be parsed (malformed JSON or multipart/form-data)",
    413: "the body is larger than serve.max_body_bytes",
    415: "Content-Type is neither application/json nor multipart/form-data",
    422: "the body breaks the schema, or a camera image or part is missing, duplicated or not a JPEG "
         "(the message names the field or part)",
    503: "no model replica ready, overloaded or being updated (Retry-After says when to retry)",
    504: "the planner did not answer within serve.request_timeout_s",
}
AUTH_ERROR = {401: "missing or wrong bearer token"}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}


def error_responses(codes, auth: bool) -> dict:
    """OpenAPI ``responses`` of the error statuses ``codes`` an endpoint returns (401 only with auth on)."""
    table = {**ERROR_STATUSES, **(AUTH_ERROR if auth else {})}
    out = {}
    for code in sorted(set(codes) | (set(AUTH_ERROR) if auth else set())):
        out[code] = {"model": ErrorResponse, "description": table[code]}
        if code == 503:
            out[code]["headers"] = RETRY_AFTER
    return out
RETRYABLE_REPLICA_ERRORS = 3


def _loc_name(loc) -> str:
    parts = [str(p) for p in loc]
    if parts and parts[0] == "body":
        parts = parts[1:]
    return ".".join(parts) or "body"


def validation_message(errors: list[dict]) -> str:
    """Pydantic errors -> 'cameras.2.image: not valid base64; ego_state.speed: ...' (one line)."""
    out = []
    for e in errors[:10]:
        msg = str(e.get("msg", "invalid")).removeprefix("Value error, ")
        if e.get("type") == "json_invalid":
            ctx = e.get("ctx") or {}
            msg = f"malformed JSON ({ctx.get('error', msg)})"
            out.append(f"body: {msg} at position {e['loc'][-1]}" if len(e.get("loc", ())) > 1 else f"body: {msg}")
            continue
        out.append(f"{_loc_name(e.get('loc', ()))}: {msg}")
    more = f" (+{len(errors) - 10} more)" if len(errors) > 10 else ""
    return "; ".join(out) + more


def _plain_errors(errors) -> list[dict]:
    """Validation errors made JSON-safe (ctx may hold exceptions, input may hold bytes or NaN)."""
    out = []
    for e in errors:
        out.append({"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": e.get("type")})
    return out


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers


@serve.deployment(name="PlannerAPI", max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25})
@serve.ingress()
class PlannerAPI:
    def __init__(self, planner: DeploymentHandle, settings: Optional[dict] = None):
        from odvla.platform.log_setup import configure as configure_logging

        configure_logging()  # a Serve replica: the library's records go to its log
        self.planner = planner
        self.settings = dict(settings or {})
        self.token = token_from_env(self.settings.get("token_env", TOKEN_ENV))
        self.timeout_s = float(self.settings.get("request_timeout_s", 30.0))
        self.max_body_bytes = int(self.settings.get("max_body_bytes", 16 * 1024 * 1024))
        self._info: Optional[dict] = None
        self._session_replica: dict[str, str] = {}
        # the request models: history points bounded by what the served model's encoding can write
        limits = tuple(self.settings.get("history_limits", (POSITION_LIMIT_M, POSITION_LIMIT_M)))
        self.models = request_models(limits, self.settings.get("history_note", ""))

    def __serve_build_asgi_app__(self) -> FastAPI:
        return create_api(self)

    # ------------------------------------------------------------------ planner calls
    async def model_info(self, timeout_s: float = 10.0) -> dict:
        if self._info is None:
            self._info = await asyncio.wait_for(_await(self.planner.model_info.remote()), timeout_s)
        return self._info

    async def call_planner(self, item: dict, session_id: Optional[str]) -> dict:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError

        from odvla.serve.failures import lost_replica_response, replica_lost

        last: Exception | None = None
        for attempt in range(RETRYABLE_REPLICA_ERRORS):
            try:
                resp = self.planner.infer.remote(item, session_id=session_id)
                return await asyncio.wait_for(_await(resp), self.timeout_s)
            except BackPressureError as e:
                raise ApiError(503, f"overloaded: {e.message}; retry later", {"Retry-After": "1"}) from None
            except DeploymentUnavailableError as e:
                raise ApiError(503, f"model deployment unavailable: {e}", {"Retry-After": "5"}) from None
            except asyncio.TimeoutError:
                raise ApiError(504, f"the planner did not answer within {self.timeout_s:g} s "
                                    f"(serve.request_timeout_s)") from None
            except Exception as e:
                if not replica_lost(e):  # the model's own error: not retried
                    raise
                last = e  # the replica (or its node) died under this request: the router drops it, try another
                log.warning("planner replica lost under a request (attempt %d): %s", attempt + 1,
                            type(e).__name__)
                await asyncio.sleep(0.2 * (attempt + 1))
        raise ApiError(*lost_replica_response(last, RETRYABLE_REPLICA_ERRORS)) from None

    async def run(self, scene: Scene, task: str, question: str, command: str,
                  request: Request) -> tuple[dict, dict, list]:
        """Decode and resize the JPEGs (a worker thread of the ingress), run the request on a ``Planner`` replica;
        -> (the replica's answer, ``Timings`` fields, warnings)."""
        from odvla.serve.preprocess import RequestError, scene_item

        req = scene.req
        try:
            info = await self.model_info()
        except Exception as e:
            raise ApiError(503, f"no model replica ready yet ({type(e).__name__}); retry later",
                           {"Retry-After": "5"}) from None

        def prepare(hw):
            t, c = time.perf_counter(), time.thread_time()
            item = scene_item(req, scene.jpegs, scene.part_names, command, task, question, hw)
            return item, (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3

        for _ in range(2):
            try:
                item, decode_ms, decode_cpu = await asyncio.to_thread(prepare, tuple(info["image_hw"]))
            except RequestError as e:
                raise ApiError(422, str(e)) from None
            t1 = time.perf_counter()
            out = await self.call_planner(item, req.session_id)
            roundtrip_ms = (time.perf_counter() - t1) * 1e3
            if "input_error" in out:  # passed every check here, but the model could not take it
                raise ApiError(422, f"the model cannot take this input: {out['input_error']}")
            if "stale_image_hw" not in out:
                break
            self._info = None  # the model deployment changed under this ingress: refresh what it needs
            info = await self.model_info()
        else:
            raise ApiError(503, "the model deployment is being updated; retry", {"Retry-After": "2"})
        if self._info is not None:  # batch settings may have changed (user_config) since the ingress asked
            self._info.update({k: out["model"][k] for k in ("max_batch_size", "batch_wait_timeout_s")})
        warnings = list(out.get("warnings", []))
        session = out.get("session")
        if session:
            prev = self._session_replica.get(req.session_id)
            if session["state"] == "rebuilt" and prev and prev != session["replica"]:
                warnings = [w for w in warnings if "no tracking state" not in w]
                warnings.append(f"session {req.session_id!r}: the replica that held its tracking state ({prev}) is "
                                f"gone; state rebuilt from this frame on {session['replica']}")
            self._session_replica[req.session_id] = session["replica"]
            if len(self._session_replica) > 100_000:
                self._session_replica.pop(next(iter(self._session_replica)))
        t_received = getattr(request.state, "t_received", None) or t1
        timings = {
            **scene.stages,
            "decode_ms": decode_ms,
            "queue_ms": max(0.0, roundtrip_ms - out["batch_ms"] - out["generate_ms"]),
            "batch_ms": out["batch_ms"],
            "generate_ms": out["generate_ms"],
            "generate_parts": out["generate_parts"],
            "total_ms": (time.perf_counter() - t_received) * 1e3,
            "cpu_ms": {**scene.cpu, "decode_ms": decode_cpu, **out["cpu_ms"]},
            "batch_size": out["batch_size"],
            "generated_tokens": out["generated_tokens"],
        }
        return out, timings, warnings

    def model_block(self, served: Optional[dict] = None) -> ModelInfo:
        """What served a request (``served``: the replica's own record) or, without one, what a replica said."""
        i = served or self._info or {}
        return ModelInfo(ref=i.get("ref", ""), version=i.get("version"), preset=i.get("preset", ""),
                         checksum=i.get("checksum", ""), max_batch_size=int(i.get("max_batch_size", 0)),
                         batch_wait_timeout_s=float(i.get("batch_wait_timeout_s", 0.0)))


async def _await(resp):
    return await resp


def create_api(owner: PlannerAPI) -> FastAPI:
    """The FastAPI app of one ingress replica (routes close over ``owner``)."""
    app = FastAPI(
        title=API_TITLE, version="1",
        description="Six-camera end-to-end planner: waypoints in the nuScenes ego frame (x forward, y left, m).",
    )
    auth_on = owner.token is not None
    deps = [Depends(make_auth_dependency(owner.token))] if auth_on else []  # no security scheme without a token
    install_body_limit(app, owner.max_body_bytes)
    v1_errors = error_responses((400, 413, 415, 422, 503, 504), auth_on)
    # the request models of the served encoding (an owner without them: the encoding-independent bound)
    models = getattr(owner, "models", None) or request_models((POSITION_LIMIT_M, POSITION_LIMIT_M))
    PlanRequest, PlanForm, ChatRequest, ChatForm = models  # noqa: N806

    def openapi() -> dict:
        """FastAPI's document plus the request bodies the v1 routes read themselves (JSON or multipart)."""
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            spec.setdefault("components", {}).setdefault("schemas", {}).update(
                component_schemas(PlanRequest, PlanForm, ChatRequest, ChatForm))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi

    @app.exception_handler(BodyError)
    async def _body_error(request: Request, exc: BodyError):
        return JSONResponse({"message": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = list(exc.errors())
        return JSONResponse({"message": validation_message(errors), "detail": _plain_errors(errors)},
                            status_code=422)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse({"message": exc.message}, status_code=exc.status, headers=exc.headers)

    @app.get("/healthz", response_model=Health, tags=["ops"])
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, responses={503: {"model": Health, "description": "no model replica "
                                                                   "answered"}}, tags=["ops"])
    async def readyz():
        try:  # readiness means a model replica answers now (not a cached answer)
            info = await asyncio.wait_for(_await(owner.planner.model_info.remote()), 5.0)
        except Exception as e:
            return JSONResponse({"status": "not ready", "detail": f"no model replica answered: {type(e).__name__}"},
                                status_code=503)
        owner._info = info
        return Health(status="ready", detail=info["ref"])

    @app.get("/v1/model", response_model=ModelInfo, responses=error_responses((503,), auth_on), dependencies=deps,
             tags=["v1"])
    async def model():
        try:
            info = await owner.model_info()
        except Exception as e:
            raise ApiError(503, f"no model replica ready yet ({type(e).__name__})", {"Retry-After": "5"}) from None
        return owner.model_block(info)

    @app.post("/v1/plan", response_model=PlanResponse, responses=v1_errors, dependencies=deps, tags=["v1"],
              openapi_extra={"requestBody": body_schema(PlanRequest, PlanForm)})
    async def plan(request: Request) -> PlanResponse:
        """Six waypoints for a scene: JSON (base64 JPEGs) or multipart/form-data (one JPEG part per camera and
        a ``request`` JSON part)."""
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        scene = await read_scene(request, PlanRequest, PlanForm)
        req = scene.req
        out, timings, warnings = await owner.run(scene, "planning", req.question or "", req.command, request)
        wp = out["waypoints"]
        return PlanResponse(
            waypoints=wp,
            waypoints_text_frame=[[-y, x] for x, y in wp] if wp is not None else None,
            answer=out["answer"], parsed=out["parsed"], model=owner.model_block(out["model"]),
            timings=Timings(**timings),
            session=SessionInfo(**out["session"]) if out.get("session") else None,
            warnings=warnings, request_id=rid)

    @app.post("/v1/chat", response_model=ChatResponse, responses=v1_errors, dependencies=deps, tags=["v1"],
              openapi_extra={"requestBody": body_schema(ChatRequest, ChatForm)})
    async def chat(request: Request) -> ChatResponse:
        """Scene question answering on the same inputs as ``/v1/plan`` (JSON or multipart/form-data)."""
        rid = request.headers.get("x-request-id") or uuid.uuid4().hex
        scene = await read_scene(request, ChatRequest, ChatForm)
        req = scene.req
        out, timings, warnings = await owner.run(scene, "qa", req.question, req.command, request)
        return ChatResponse(
            answer=out["answer"], model=owner.model_block(out["model"]), timings=Timings(**timings),
            session=SessionInfo(**out["session"]) if out.get("session") else None,
            warnings=[w for w in warnings if "did not parse" not in w], request_id=rid)

    return app


# ---------------------------------------------------------------------- building the application
class AppArgs(BaseModel):
    """Arguments of ``build_app`` (the ``args:`` block of serve/config.yaml)."""

    model: Optional[str] = Field(None, description="export folder, runs:/<id>/export or models:/odvla-planner/<v>")
    config: list[str] = Field(default_factory=list, description="config YAML files (the serve: section is used)")
    set: list[str] = Field(default_factory=list, description="overrides, e.g. serve.max_batch_size=16")


def planner_options(s) -> dict:
    """Deployment options of ``Planner`` from a ``ServeConfig``."""
    from ray.serve.config import RequestRouterConfig

    from odvla.serve.routing import SessionAffinityRouter

    opts = dict(
        # one batch running and the next one filling at the replica: requests that wait in the caller's router
        # instead arrive one by one and the batcher (waiting only batch_wait_timeout_s) starts small batches
        max_ongoing_requests=max(int(s.max_ongoing_requests), 2 * int(s.max_batch_size)),
        max_queued_requests=int(s.max_queued_requests),
        user_config={"max_batch_size": int(s.max_batch_size), "batch_wait_timeout_s": float(s.batch_wait_timeout_s)},
        ray_actor_options={"num_cpus": float(s.num_cpus), "num_gpus": float(s.num_gpus),
                           **({"resources": {k: float(v) for k, v in dict(s.replica_resources).items()}}
                              if s.replica_resources else {})},
        health_check_period_s=float(s.health_check_period_s),
        health_check_timeout_s=30.0,
        request_router_config=RequestRouterConfig(
            request_router_class=SessionAffinityRouter,
            request_router_kwargs={"session_idle_s": float(s.session_idle_s)},
        ),
    )
    if s.autoscaling:
        opts["autoscaling_config"] = {
            "min_replicas": int(s.min_replicas), "max_replicas": int(s.max_replicas),
            "target_ongoing_requests": float(s.target_ongoing_requests),
            "upscale_delay_s": 5.0, "downscale_delay_s": 60.0,
        }
        opts["num_replicas"] = None
    else:
        opts["num_replicas"] = int(s.num_replicas)
    return opts


def served_history(ref: str, tracking_uri: Optional[str]) -> dict:
    """The ingress settings that bound a request's history by what the export ``ref``'s trajectory encoding can
    write (``schemas.history_limits``); the OpenAPI schema states them."""
    from odvla.model.config import TextConfig
    from odvla.platform.config.loader import read_yaml
    from odvla.platform.export import CONFIG, resolve_export

    path = resolve_export(ref, tracking_uri) / CONFIG  # only its model.text section is read
    text = TextConfig(**((read_yaml(path).get("model") or {}).get("text") or {}))
    return {"history_limits": list(history_limits(text)), "history_note": encoding_note(text)}


def build_app(args: dict | AppArgs | None = None):
    """Application builder (``import_path: odvla.serve.app:build_app``, ``args:`` of the Serve config, or
    ``serve run odvla.serve.app:build_app model=REF``): config files + overrides -> bound ingress + planner."""
    from odvla.platform.config import load_config

    args = args if isinstance(args, AppArgs) else AppArgs(**(args or {}))
    if isinstance(args.set, str):
        args.set = [args.set]
    cfg = load_config(model=None, files=args.config, overrides=args.set)
    return build_app_from_config(args, cfg.serve, cfg.tracking)


def build_app_from_config(args: AppArgs, serve_cfg, tracking_cfg):
    """The application for the ``serve`` and ``tracking`` sections of a resolved config; ``args.model`` wins over
    ``serve.model``; ``tracking_cfg.tracking_uri`` resolves ``models:/`` and ``runs:/`` references."""
    s = serve_cfg
    ref = args.model or s.model
    if not ref:
        raise ValueError("no model to serve: pass --model REF (export folder or models:/odvla-planner/<version>) "
                         "or set serve.model")
    tracking_uri = None
    if ref.startswith(("models:/", "runs:/", "mlflow-artifacts:/")):
        from odvla.platform.tracking.store import resolve_tracking_uri

        tracking_uri = resolve_tracking_uri(tracking_cfg.tracking_uri)  # absolute: replicas run elsewhere
    elif Path(ref).exists():
        ref = str(Path(ref).resolve())
    planner = Planner.options(**planner_options(s)).bind(
        ref, session_idle_s=float(s.session_idle_s), torch_threads=int(s.torch_threads), device=s.device,
        tracking_uri=tracking_uri)
    token = token_from_env()
    ingress_actor = {"num_cpus": 0.25}
    if token:  # hand the token to the ingress replicas only (never into the config or the logs)
        ingress_actor["runtime_env"] = {"env_vars": {TOKEN_ENV: token}}
    settings = {"request_timeout_s": float(s.request_timeout_s), "max_body_bytes": int(s.max_body_bytes),
                "token_env": TOKEN_ENV, **served_history(ref, tracking_uri)}
    return PlannerAPI.options(
        num_replicas=int(s.ingress_replicas), ray_actor_options=ingress_actor,
        max_queued_requests=int(s.max_queued_requests) * 4,
    ).bind(planner, settings)
