"""Request dependencies as ``Annotated`` aliases: the pool, the settings, the caller's token.

Every ``/api/v1`` route requires a bearer token (``ReaderDep`` on the v1 router); routes that
change something also take ``AdminDep``. Tokens are those made with ``imstack token create``
(stored hashed, with a scope; an accepted one is remembered for IMSTACK_API_TOKEN_CACHE_SECONDS,
see :class:`TokenCache`) and those in ``IMSTACK_API_TOKENS`` (admin scope).
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Annotated, cast

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.api.errors import Forbidden, Unauthorized
from shared.config import Settings
from shared.db import tokens as tokens_db
from shared.db.tokens import Scope

# Dependencies are ``async def`` even when they do not await: FastAPI runs a plain ``def``
# dependency in its thread pool, a thread hop per dependency per request.


async def get_pool(request: Request) -> asyncpg.Pool:
    return cast(asyncpg.Pool, request.app.state.pool)


async def get_settings(request: Request) -> Settings:
    return cast(Settings, request.app.state.settings)


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
SettingsDep = Annotated[Settings, Depends(get_settings)]

_bearer = HTTPBearer(
    auto_error=False,
    description="A token from `imstack token create` or IMSTACK_API_TOKENS.",
)

#: RFC 6750 §3: the challenge a 401 carries.
_CHALLENGE = 'Bearer realm="imstack"'


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name (``IMSTACK_API_TOKENS`` ones are "configured")."""

    name: str
    scope: Scope


class TokenCache:
    """Database tokens checked in the last ``ttl`` seconds (IMSTACK_API_TOKEN_CACHE_SECONDS),
    by the SHA-256 of the secret: a request with one of them skips the lookup. Only accepted
    tokens are kept (a new token works at once); a revoked one is refused once its entry is
    ``ttl`` old. ``ttl`` 0 keeps nothing. At most :attr:`MAX_ENTRIES` at once."""

    MAX_ENTRIES = 1024

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    def get(self, key: bytes) -> Principal | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[key]
            return None
        return entry[1]

    def put(self, key: bytes, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.MAX_ENTRIES:
            self._entries.clear()
        self._entries[key] = (time.monotonic() + self.ttl, principal)


async def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any valid token; 401 with a ``WWW-Authenticate: Bearer`` challenge otherwise.

    Reads the pool and the settings from the app's state itself rather than through
    ``PoolDep``/``SettingsDep``: FastAPI solves a dependency's own dependencies each time it
    appears, cached or not, and this one runs twice on every admin request (the v1 router's
    and ``AdminDep``'s), so two sub-dependencies fewer here are four fewer solves a request."""
    settings = cast(Settings, request.app.state.settings)
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    secret = credentials.credentials
    if settings.api_tokens and tokens_db.check_configured(secret, settings.api_tokens):
        return Principal("configured", Scope.ADMIN)
    cache: TokenCache = request.app.state.token_cache
    key = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
    cached = cache.get(key)
    if cached is not None:
        return cached
    token = await tokens_db.authenticate(cast(asyncpg.Pool, request.app.state.pool), secret)
    if token is None:
        raise Unauthorized(
            "the token is unknown or revoked",
            code="invalid_token",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    principal = Principal(token.name, token.scope)
    cache.put(key, principal)
    return principal


ReaderDep = Annotated[Principal, Depends(require_token)]


async def require_admin(principal: ReaderDep) -> Principal:
    """A token with the admin scope; 403 for a read-only one."""
    if principal.scope is not Scope.ADMIN:
        raise Forbidden(
            f"token {principal.name!r} is read-only; this needs an admin token",
            code="insufficient_scope",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope"'},
        )
    return principal


AdminDep = Annotated[Principal, Depends(require_admin)]
