"""Reading a ``/v1/plan`` or ``/v1/chat`` body: ``application/json`` (base64 JPEGs inside) or ``multipart/form-data``.

A multipart body has seven parts: one JPEG per camera, named after the camera (``CAM_FRONT`` ... ``CAM_BACK_RIGHT``,
see ``CAMERAS``; ``Content-Type: image/jpeg``, a ``filename`` is optional), and ``request``: the JSON body
without the images (``PlanForm`` / ``ChatForm``: the cameras carry only their name and calibration). Sending
the JPEGs as bytes saves the client the base64 encoding and the ingress the JSON scan and base64 decode of
~0.5 MB per request.

Errors name what is wrong: 400 for a body that cannot be parsed (malformed JSON or multipart), 415 for another
content type, 422 for a missing, duplicated, unknown or non-JPEG part (``part CAM_BACK: ...``) and for every
schema violation (``request.ego_state.speed: ...``). Nothing here touches the model.

Stage timings (``Stages``): ``http`` is the wall time from the ingress receiving the request to the body being
read; ``parse`` is JSON parsing + validation + base64 decoding (multipart: part splitting + JSON part), in the
ingress's worker thread (``cpu`` = that thread's CPU time).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError

from odvla.model.constants import CAMERAS

REQUEST_PART = "request"
JPEG_MAGIC = b"\xff\xd8\xff"
MAX_PARTS = 16


class BodyError(Exception):
    """A body the API cannot use: ``status`` 400 (unparsable), 415 (content type) or 422 (a part); ``message``
    names the part or field."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Scene:
    """A parsed request: the validated model (``PlanRequest``/``ChatRequest`` or their ``*Form``), the six JPEGs
    in ``CAMERAS`` order, what an error about each image names, and the stage times so far (ms)."""

    req: Any
    jpegs: list[bytes]
    part_names: list[str]
    stages: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)


def _validation_error(e: ValidationError, prefix: tuple = ()) -> RequestValidationError:
    errors = []
    for err in e.errors(include_url=False):
        err = dict(err)
        err["loc"] = ("body", *prefix, *err.get("loc", ()))
        errors.append(err)
    return RequestValidationError(errors)


def parse_json_body(raw: bytes, model: type[BaseModel]) -> tuple[Any, list[bytes]]:
    """JSON body -> (validated request, JPEG bytes of the six cameras). Malformed JSON is a ``BodyError(400)``."""
    from odvla.serve.preprocess import json_jpegs

    try:
        req = model.model_validate_json(raw)
    except ValidationError as e:
        if any(err.get("type") == "json_invalid" for err in e.errors()):
            err = next(err for err in e.errors() if err.get("type") == "json_invalid")
            where = f" at position {err['loc'][-1]}" if err.get("loc") else ""
            raise BodyError(400, f"body: malformed JSON ({(err.get('ctx') or {}).get('error', err['msg'])}){where}") \
                from None
        if any(err.get("type") == "model_type" and not err.get("loc") for err in e.errors()):
            raise BodyError(422, "body: expected a JSON object") from None
        raise _validation_error(e) from None
    return req, json_jpegs(req)


def _part_bytes(name: str, value) -> bytes:
    """A form part as bytes: file parts are read as they are; a part without a filename arrives as text that the
    form parser decoded as UTF-8 or, failing that, Latin-1 (JPEG bytes are never valid UTF-8), which is undone."""
    if isinstance(value, str):
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise BodyError(422, f"part {name}: not a JPEG image (text part)") from None
    return value.file.read()


async def read_multipart(request: Request, form_model: type[BaseModel]) -> tuple[Scene, float]:
    """``multipart/form-data`` -> (``Scene``, when the body was read); see the module docstring for the parts."""
    from starlette.formparsers import MultiPartException

    t0 = time.perf_counter()
    try:
        form = await request.form(max_files=MAX_PARTS, max_fields=MAX_PARTS, max_part_size=1024 * 1024)
    except MultiPartException as e:
        raise BodyError(400, f"body: malformed multipart/form-data ({e.message})") from None
    except AssertionError as e:  # python-multipart asserts on some malformed inputs
        raise BodyError(400, f"body: malformed multipart/form-data ({e})") from None
    t1 = time.perf_counter()
    c0 = time.thread_time()
    try:
        names = list(form.keys())
        allowed = (*CAMERAS, REQUEST_PART)
        for name in names:
            if name not in allowed:
                raise BodyError(422, f"part {name!r}: unknown part; expected one JPEG per camera {list(CAMERAS)} "
                                     f"and the JSON part {REQUEST_PART!r}")
        for name in allowed:
            n = len(form.getlist(name))
            if n == 0:
                what = "the JSON part (the request without images)" if name == REQUEST_PART else "a JPEG image"
                raise BodyError(422, f"part {name}: missing ({what})")
            if n > 1:
                raise BodyError(422, f"part {name}: given {n} times (once per request)")
        meta = form[REQUEST_PART]
        meta_raw = meta.encode("utf-8") if isinstance(meta, str) else meta.file.read()
        try:
            req = form_model.model_validate_json(meta_raw)
        except ValidationError as e:
            bad = [err for err in e.errors() if err.get("type") == "json_invalid"]
            if bad:
                raise BodyError(400, f"part {REQUEST_PART}: malformed JSON ({(bad[0].get('ctx') or {}).get('error')})") \
                    from None
            if any(err.get("type") == "model_type" and not err.get("loc") for err in e.errors()):
                raise BodyError(422, f"part {REQUEST_PART}: expected a JSON object") from None
            raise _validation_error(e, (REQUEST_PART,)) from None
        jpegs = []
        for cam in CAMERAS:
            data = _part_bytes(cam, form[cam])
            if not data.startswith(JPEG_MAGIC):
                raise BodyError(422, f"part {cam}: not a JPEG image (a JPEG starts with FF D8 FF, got "
                                     f"{data[:4].hex(' ') or 'no bytes'})")
            jpegs.append(data)
    finally:
        await form.close()
    stages = {"parse_ms": (time.perf_counter() - t1) * 1e3}
    return Scene(req, jpegs, list(CAMERAS), stages, {"parse_ms": (time.thread_time() - c0) * 1e3}), t1


async def read_scene(request: Request, json_model: type[BaseModel], form_model: type[BaseModel]) -> Scene:
    """Either body -> ``Scene``; ``stages['http_ms']`` from the ingress receiving the request (``t_received``,
    stamped by the body-limit middleware) to the body being read."""
    import asyncio

    t_received = getattr(request.state, "t_received", None) or time.perf_counter()
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        scene, t_read = await read_multipart(request, form_model)
        scene.stages["http_ms"] = (t_read - t_received) * 1e3
        return scene
    if ctype not in ("application/json", ""):
        raise BodyError(415, f"Content-Type: {ctype!r} is not accepted; send application/json or "
                             f"multipart/form-data")
    raw = await request.body()
    http_ms = (time.perf_counter() - t_received) * 1e3

    def parse():
        t, c = time.perf_counter(), time.thread_time()
        req, jpegs = parse_json_body(raw, json_model)
        return req, jpegs, (time.perf_counter() - t) * 1e3, (time.thread_time() - c) * 1e3

    req, jpegs, wall, cpu = await asyncio.to_thread(parse)
    names = [f"cameras.{i}.image" for i in range(len(CAMERAS))]
    return Scene(req, jpegs, names, {"http_ms": http_ms, "parse_ms": wall}, {"parse_ms": cpu})


def body_schema(json_model: type[BaseModel], form_model: type[BaseModel]) -> dict:
    """The OpenAPI ``requestBody`` of an endpoint that takes either content type."""
    parts = {REQUEST_PART: {"$ref": f"#/components/schemas/{form_model.__name__}"}}
    for i, cam in enumerate(CAMERAS):
        parts[cam] = {"type": "string", "format": "binary", "contentMediaType": "image/jpeg",
                      "description": f"camera {i}: a JPEG"}
    return {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": f"#/components/schemas/{json_model.__name__}"}},
            "multipart/form-data": {
                "schema": {"type": "object", "properties": parts, "required": [REQUEST_PART, *CAMERAS],
                           "additionalProperties": False},
                "encoding": {REQUEST_PART: {"contentType": "application/json"},
                             **{cam: {"contentType": "image/jpeg"} for cam in CAMERAS}},
            },
        },
    }


def component_schemas(*models: type[BaseModel]) -> dict:
    """JSON schemas of ``models`` and everything they use, keyed for ``#/components/schemas``."""
    out: dict = {}
    for m in models:
        s = m.model_json_schema(ref_template="#/components/schemas/{model}")
        out.update(s.pop("$defs", {}))
        out[m.__name__] = s
    return out
