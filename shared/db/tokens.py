"""The ``api_tokens`` table: control API bearer tokens, stored as SHA-256 hashes only.

``create_token`` returns the plaintext once; afterwards nobody, the server included, can
read it back. Tokens from ``IMSTACK_API_TOKENS`` are not stored: ``check_configured`` compares
against them in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from shared.db.types import Executor

#: Prefix of generated tokens, so secret scanners and people can tell what one is.
TOKEN_PREFIX = "imst_"
#: Random bytes in a generated token (256 bits).
TOKEN_BYTES = 32
#: How stale ``last_used_at`` may get before a request refreshes it (saves a write per request).
LAST_USED_RESOLUTION_SECONDS = 60

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$")


class TokenError(Exception):
    """Bad input or a conflict; the message is meant for the person who typed the command."""


class Scope(StrEnum):
    ADMIN = "admin"  #: may read and change everything
    READ = "read"  #: may only read


@dataclass(frozen=True)
class ApiToken:
    id: int
    name: str
    scope: Scope
    created_at: datetime
    last_used_at: datetime | None
    revoked: bool


@dataclass(frozen=True)
class NewToken:
    token: ApiToken
    secret: str  #: the plaintext bearer token, shown once


def token_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogatepass")).hexdigest()


def generate_secret() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise TokenError(
            f"not a valid token name: {name!r} (letters, digits, '.', '_', '@', '-'; "
            "at most 100 characters)"
        )
    return name


_COLUMNS = "id, name, scope, created_at, last_used_at, revoked"


def _token(row: asyncpg.Record) -> ApiToken:
    values = dict(row)
    values["scope"] = Scope(values["scope"])
    return ApiToken(**values)


async def create_token(conn: Executor, name: str, scope: Scope = Scope.ADMIN) -> NewToken:
    """A new token named ``name`` (unique among tokens not revoked)."""
    check_name(name)
    secret = generate_secret()
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO api_tokens (name, token_sha256, scope) VALUES ($1, $2, $3)
                RETURNING {_COLUMNS}""",
            name,
            token_hash(secret),
            scope.value,
        )
    except asyncpg.UniqueViolationError:
        raise TokenError(f"a token named {name!r} exists already (revoke it first)") from None
    assert row is not None
    return NewToken(_token(row), secret)


async def list_tokens(conn: Executor) -> list[ApiToken]:
    """Every token, revoked ones included, oldest first."""
    rows = await conn.fetch(f"SELECT {_COLUMNS} FROM api_tokens ORDER BY created_at, id")
    return [_token(row) for row in rows]


async def revoke_token(conn: Executor, name: str) -> None:
    """Revoke the active token named ``name`` (a running API refuses it within
    IMSTACK_API_TOKEN_CACHE_SECONDS)."""
    status = await conn.execute(
        "UPDATE api_tokens SET revoked = true WHERE name = $1 AND NOT revoked", name
    )
    if status.rsplit(" ", 1)[-1] == "0":
        raise TokenError(f"no active token named {name!r}")


async def authenticate(conn: Executor, secret: str) -> ApiToken | None:
    """The active token whose plaintext is ``secret`` (``last_used_at`` refreshed), or None.

    The lookup is by hash: timing reveals nothing useful about a 256-bit random secret."""
    row = await conn.fetchrow(
        f"""WITH found AS (
                SELECT {_COLUMNS} FROM api_tokens WHERE token_sha256 = $1 AND NOT revoked
            ), touched AS (
                UPDATE api_tokens SET last_used_at = now() FROM found
                WHERE api_tokens.id = found.id
                  AND (found.last_used_at IS NULL
                       OR found.last_used_at < now() - make_interval(secs => $2))
            )
            SELECT * FROM found""",
        token_hash(secret),
        float(LAST_USED_RESOLUTION_SECONDS),
    )
    return None if row is None else _token(row)


def check_configured(secret: str, configured: Iterable[str]) -> bool:
    """Whether ``secret`` is one of the configured tokens, compared in constant time (the
    hashes are compared, so neither the length nor a prefix of a configured token leaks)."""
    given = hashlib.sha256(secret.encode("utf-8", "surrogatepass")).digest()
    found = False
    for token in configured:
        wanted = hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()
        found |= hmac.compare_digest(given, wanted)
    return found
