"""Request body size limit (413).

The pinned FastAPI (0.165, on Starlette 1.10) has a body limit of its own: ``FastAPI(max_body_size=N)`` wraps the
app in Starlette's ``RequestBodyLimitMiddleware``, which refuses a ``Content-Length`` above N before reading the
body and counts streamed (chunked) bodies as they arrive, raising ``HTTPException(413)`` from inside the
endpoint's body read. The app uses it (``serve.max_body_bytes``) instead of a middleware of its own; this module
turns that bare ``413 Content Too Large`` into the API's error shape, naming the limit and the config key.
"""
from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request


def too_large_message(limit: int, request: Request) -> str:
    size = request.headers.get("content-length")
    got = f"{size} bytes" if size else "a streamed body"
    return f"body: request body too large ({got}); the limit is {limit} bytes (serve.max_body_bytes)"


def install_body_limit_errors(app: FastAPI, limit: int) -> None:
    """Register the handler that renders every ``HTTPException`` as ``{"message": ...}`` (413 names the limit)."""

    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:
            msg = too_large_message(limit, request)
        else:
            msg = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        return JSONResponse({"message": msg, "detail": exc.detail}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    app.add_exception_handler(StarletteHTTPException, http_error)
