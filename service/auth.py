"""API keys as FastAPI dependencies (declared in the OpenAPI spec as the `X-API-Key` scheme).

- `ApiKey`: inference and /v1/models. Open when PULSEFM_API_KEYS is empty (the embedded default);
  otherwise an API key or an admin key is required (401 when missing or unknown).
- `AdminKey`: /v1/admin/*. Closed (403) unless PULSEFM_ADMIN_KEYS is set, or
  PULSEFM_ADMIN_FROM_LOOPBACK=true is opted into and the caller is on 127.0.0.1/::1.
  401 for a missing or unknown key, 403 for a valid API key without the admin role.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader

from service.errors import Forbidden, Unauthorized
from service.settings import Settings
from service.state import State


def key_digest(request: Request, keyless: str) -> str:
    """Who called, for logs and metric labels, without the key: the first 8 hex digits of its
    sha256, or `keyless` when the request carries none."""
    key = request.headers.get("x-api-key")
    return hashlib.sha256(key.encode()).hexdigest()[:8] if key else keyless


KEY_HEADER = APIKeyHeader(
    name="X-API-Key", auto_error=False, description="API key (PULSEFM_API_KEYS / PULSEFM_ADMIN_KEYS)"
)
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


def state_of(request: Request) -> State:
    state: State = request.app.state.pulse
    return state


async def get_state(request: Request) -> State:
    """The gateway's state as a dependency. `async`: FastAPI runs a plain `def` dependency in its
    thread pool, one thread hop per request for an attribute read."""
    return state_of(request)


def _known(key: str | None, keys: set[str]) -> bool:
    return key is not None and any(hmac.compare_digest(key.encode(), k.encode()) for k in keys)


def _settings(request: Request) -> Settings:
    return state_of(request).settings


async def api_key(request: Request, key: Annotated[str | None, Security(KEY_HEADER)]) -> None:
    s = _settings(request)
    api = s.keys(False)
    if api and not _known(key, api | s.keys(True)):
        raise Unauthorized("missing or unknown X-API-Key")


async def admin_key(request: Request, key: Annotated[str | None, Security(KEY_HEADER)]) -> None:
    s = _settings(request)
    admin = s.keys(True)
    if not admin:
        host = request.client.host if request.client else ""
        if s.admin_from_loopback and host in LOOPBACK:
            return
        raise Forbidden(
            "admin routes are closed: set PULSEFM_ADMIN_KEYS "
            "(or PULSEFM_ADMIN_FROM_LOOPBACK=true for local use)"
        )
    if _known(key, admin):
        return
    if _known(key, s.keys(False)):
        raise Forbidden("this key has no admin role")
    raise Unauthorized("missing or unknown X-API-Key (admin)")


ApiKey = Annotated[None, Depends(api_key)]
AdminKey = Annotated[None, Depends(admin_key)]
GatewayState = Annotated[State, Depends(get_state)]
