"""The ``users`` table: one profile for SIP and MSRP, digest HA1s instead of passwords."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.types import Executor
from shared.digest import Algorithm, ha1

_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")  # RFC 3261 user part, unescaped
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9\-.]*[a-z0-9])?$|^\[[0-9a-f:.]+\]$")


class UserError(Exception):
    """Bad input or a conflict; the message is meant for the person who typed the command."""


@dataclass(frozen=True)
class Address:
    username: str
    domain: str

    def __str__(self) -> str:
        return f"{self.username}@{self.domain}"


def parse_address(text: str, default_domain: str | None = None) -> Address:
    """``alice@example.com`` or ``sip:alice@example.com`` (or ``alice`` with a default domain)."""
    value = text.strip()
    if value.lower().startswith(("sip:", "sips:")):
        value = value.split(":", 1)[1]
    username, at, domain = value.rpartition("@")
    if not at:
        username, domain = value, default_domain or ""
    domain = domain.lower()
    if not username or not _USER.match(username) or "@" in username:
        raise UserError(f"not a valid user name in {text!r}")
    if not domain or not _DOMAIN.match(domain):
        raise UserError(f"not a valid domain in {text!r} (expected user@domain)")
    return Address(username, domain)


@dataclass(frozen=True)
class User:
    id: int
    username: str
    domain: str
    display_name: str | None
    email: str | None
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @property
    def address(self) -> Address:
        return Address(self.username, self.domain)


@dataclass(frozen=True)
class Credentials:
    """What digest authentication needs for one user (realm = domain)."""

    user_id: int
    ha1_md5: str
    ha1_sha256: str
    disabled: bool


_PUBLIC = "id, username, domain, display_name, email, disabled, created_at, updated_at"


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


def _ha1s(address: Address, password: str) -> tuple[str, str]:
    if not password:
        raise UserError("the password must not be empty")
    return (
        ha1(Algorithm.MD5, address.username, address.domain, password),
        ha1(Algorithm.SHA256, address.username, address.domain, password),
    )


async def create_user(
    conn: Executor,
    address: Address,
    password: str,
    *,
    display_name: str | None = None,
    email: str | None = None,
) -> User:
    md5, sha256 = _ha1s(address, password)
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO users (username, domain, display_name, email, ha1_md5, ha1_sha256)
                VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_PUBLIC}""",
            address.username,
            address.domain,
            display_name,
            email,
            md5,
            sha256,
        )
    except asyncpg.UniqueViolationError:
        raise UserError(f"user {address} already exists") from None
    assert row is not None
    return _user(row)


async def get_user(conn: Executor, address: Address) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_PUBLIC} FROM users WHERE username = $1 AND domain = $2",
        address.username,
        address.domain,
    )
    return None if row is None else _user(row)


async def list_users(
    conn: Executor,
    *,
    domain: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[User]:
    rows = await conn.fetch(
        f"""SELECT {_PUBLIC} FROM users WHERE $1::text IS NULL OR domain = $1
            ORDER BY domain, username LIMIT $2 OFFSET $3""",
        domain,
        limit,
        offset,
    )
    return [_user(row) for row in rows]


async def get_credentials(conn: Executor, address: Address) -> Credentials | None:
    row = await conn.fetchrow(
        """SELECT id AS user_id, ha1_md5, ha1_sha256, disabled FROM users
           WHERE username = $1 AND domain = $2""",
        address.username,
        address.domain,
    )
    return None if row is None else Credentials(**dict(row))


async def set_password(conn: Executor, address: Address, password: str) -> None:
    md5, sha256 = _ha1s(address, password)
    status = await conn.execute(
        """UPDATE users SET ha1_md5 = $3, ha1_sha256 = $4, updated_at = now()
           WHERE username = $1 AND domain = $2""",
        address.username,
        address.domain,
        md5,
        sha256,
    )
    _require_one(status, address)


async def set_disabled(conn: Executor, address: Address, disabled: bool) -> None:
    status = await conn.execute(
        "UPDATE users SET disabled = $3, updated_at = now() WHERE username = $1 AND domain = $2",
        address.username,
        address.domain,
        disabled,
    )
    _require_one(status, address)


async def delete_user(conn: Executor, address: Address) -> None:
    status = await conn.execute(
        "DELETE FROM users WHERE username = $1 AND domain = $2", address.username, address.domain
    )
    _require_one(status, address)


def _require_one(status: str, address: Address) -> None:
    if status.rsplit(" ", 1)[-1] == "0":
        raise UserError(f"no such user: {address}")
