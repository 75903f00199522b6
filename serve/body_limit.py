"""Request body size limit: 413 with the API's JSON error shape, naming the limit and its config key.

The pinned FastAPI (0.165, Starlette 1.10) does have a limit (``FastAPI(max_body_size=N)``, Starlette's
``RequestBodyLimitMiddleware``), but it answers a declared ``Content-Length`` above the limit with a bare
``text/plain`` "Content Too Large" from outside the app's exception handlers, so clients would get two error
shapes. This ASGI middleware does the same two checks and always answers JSON:

- a ``Content-Length`` above the limit is refused before the body is read;
- a streamed (chunked) body is counted as it arrives; the read that crosses the limit raises ``BodyTooLarge``
  (an ``HTTPException(413)``, which FastAPI's body parsing re-raises as is), rendered by the app's handler.
"""
from __future__ import annotations

import time

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONFIG_KEY = "serve.max_body_bytes"


def too_large_message(limit: int, size: int | None = None) -> str:
    got = f"{size} bytes" if size is not None else "a body that kept streaming"
    return f"body: request body too large ({got}); the limit is {limit} bytes ({CONFIG_KEY})"


class BodyTooLarge(StarletteHTTPException):
    def __init__(self, limit: int, size: int | None = None):
        super().__init__(413, too_large_message(limit, size))


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.limit = int(max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})["t_received"] = time.perf_counter()  # request.state.t_received: stage timings
        declared = None
        for k, v in scope.get("headers") or ():
            if k == b"content-length":
                try:
                    declared = int(v)
                except ValueError:
                    declared = None
        if declared is not None and declared > self.limit:
            await JSONResponse({"message": too_large_message(self.limit, declared)}, status_code=413)(
                scope, receive, send)
            return
        total = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal total
            msg = await receive()
            if msg["type"] == "http.request":
                total += len(msg.get("body", b""))
                if total > self.limit:
                    raise BodyTooLarge(self.limit)
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as e:
            if started:
                raise
            await JSONResponse({"message": e.detail}, status_code=413)(scope, receive, send)


def install_body_limit(app: FastAPI, limit: int) -> None:
    """Add the middleware and render every ``HTTPException`` as ``{"message": ..., "detail": ...}``."""
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=limit)

    async def http_error(request: Request, exc: StarletteHTTPException):
        msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"message": msg, "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(StarletteHTTPException, http_error)
