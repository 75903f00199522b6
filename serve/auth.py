"""Optional bearer-token auth for the ``/v1`` endpoints.

The token is read from the environment variable ``ODVLA_SERVE_TOKEN`` of the ingress replica (``odvla serve``
forwards it from the shell that starts the app through the deployment's runtime env). Unset or empty: no auth.
``/healthz`` and ``/readyz`` stay open for load balancers and probes.
"""
from __future__ import annotations

import hmac
import os
from typing import Optional

from fastapi import Depends, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

TOKEN_ENV = "ODVLA_SERVE_TOKEN"

bearer_scheme = HTTPBearer(auto_error=False, description=f"the token in ${TOKEN_ENV} of the server")


def token_from_env(env: str = TOKEN_ENV) -> Optional[str]:
    return os.environ.get(env) or None


def make_auth_dependency(token: Optional[str]):
    """FastAPI dependency that accepts every request when ``token`` is None, else only ``Bearer <token>``."""

    async def require_token(creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer_scheme)) -> None:
        if token is None:
            return
        if creds is None:
            raise HTTPException(401, "Authorization: missing bearer token (header 'Authorization: Bearer <token>')",
                                headers={"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(401, "Authorization: invalid bearer token", headers={"WWW-Authenticate": "Bearer"})

    return require_token
