"""Request dependencies as ``Annotated`` aliases: the pool, the settings, the caller's token.

Every ``/api/v1`` route requires a bearer token (``ReaderDep`` on the v1 router); routes that
change something also take ``AdminDep``. Tokens are those made with ``imstack token create``
(stored hashed, with a scope) and those in ``IMSTACK_API_TOKENS`` (admin scope).
"""

from __future__ import annotations

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


async def require_token(
    pool: PoolDep,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """Any valid token; 401 with a ``WWW-Authenticate: Bearer`` challenge otherwise."""
    if credentials is None or not credentials.credentials:
        raise Unauthorized(
            "a bearer token is required (Authorization: Bearer <token>)",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    secret = credentials.credentials
    if settings.api_tokens and tokens_db.check_configured(secret, settings.api_tokens):
        return Principal("configured", Scope.ADMIN)
    token = await tokens_db.authenticate(pool, secret)
    if token is None:
        raise Unauthorized(
            "the token is unknown or revoked",
            code="invalid_token",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    return Principal(token.name, token.scope)


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
