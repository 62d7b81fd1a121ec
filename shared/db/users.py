"""The ``users`` table: one profile for SIP and MSRP, digest HA1s instead of passwords."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.address import Address as Address  # re-exported: it was defined here
from shared.db.listen import notify
from shared.db.types import Executor
from shared.digest import Algorithm, ha1

_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")  # RFC 3261 user part, unescaped
_DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9\-.]*[a-z0-9])?$|^\[[0-9a-f:.]+\]$")


class UserError(Exception):
    """Bad input or a conflict; the message is meant for the person who typed the command."""


class InvalidUser(UserError):
    """An address, password or field that cannot be accepted."""


class WeakPassword(InvalidUser):
    """A password a person chose that the password rule (``check_password``) refuses."""


class UserExists(UserError):
    """A user with that address exists already."""


class UserNotFound(UserError):
    """No user has that address."""


#: NOTIFY channel for user changes: ``{"type": ..., "id": address}`` with type ``created``,
#: ``updated``, ``password``, ``disabled``, ``enabled`` or ``deleted``. Every function here
#: that changes a user sends it after the change: in the caller's transaction when given a
#: connection in one (where PostgreSQL folds it with an identical NOTIFY of the caller),
#: else right after the change commits. The SIP edge's credential cache depends on it.
USERS_CHANNEL = "users"


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
        raise InvalidUser(f"not a valid user name in {text!r}")
    if not domain or not _DOMAIN.match(domain):
        raise InvalidUser(f"not a valid domain in {text!r} (expected user@domain)")
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
    #: E-mail notices of messages stored while offline (msilo), when there is an address.
    notify_email: bool = True

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


_PUBLIC = (
    "id, username, domain, display_name, email, disabled, created_at, updated_at, notify_email"
)


def _user(row: asyncpg.Record) -> User:
    return User(**dict(row))


def check_password(address: Address, password: str, min_length: int) -> None:
    """The password rule for passwords people choose (``IMSTACK_PASSWORD_MIN_LENGTH``).

    At least ``min_length`` characters (Unicode code points), and not the user name or the
    address itself, in any case. Raises ``WeakPassword`` with a message naming the rule, never
    the password. The API and the CLI call this before they create a user or set a password;
    ``create_user`` and ``set_password`` themselves only refuse an empty password, so programs
    that make accounts (tests, benchmarks) are not bound by an operator's setting.
    """
    if len(password) < min_length:
        unit = "character" if min_length == 1 else "characters"
        raise WeakPassword(f"the password must be at least {min_length} {unit} long")
    if password.casefold() in (address.username.casefold(), str(address).casefold()):
        raise WeakPassword("the password must not be the user name or address")


def _ha1s(address: Address, password: str) -> tuple[str, str]:
    if not password:
        raise InvalidUser("the password must not be empty")
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
    notify_email: bool = True,
) -> User:
    md5, sha256 = _ha1s(address, password)
    try:
        row = await conn.fetchrow(
            f"""INSERT INTO users (username, domain, display_name, email, ha1_md5, ha1_sha256,
                                   notify_email)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {_PUBLIC}""",
            address.username,
            address.domain,
            display_name,
            email,
            md5,
            sha256,
            notify_email,
        )
    except asyncpg.UniqueViolationError:
        raise UserExists(f"user {address} already exists") from None
    assert row is not None
    await notify(conn, USERS_CHANNEL, "created", str(address))
    return _user(row)


async def get_user(conn: Executor, address: Address) -> User | None:
    row = await conn.fetchrow(
        f"SELECT {_PUBLIC} FROM users WHERE username = $1 AND domain = $2",
        address.username,
        address.domain,
    )
    return None if row is None else _user(row)


_FILTER = """($1::text IS NULL OR domain = $1)
    AND ($2::text IS NULL
         OR strpos(lower(username || '@' || domain), lower($2)) > 0
         OR strpos(lower(coalesce(display_name, '')), lower($2)) > 0
         OR strpos(lower(coalesce(email, '')), lower($2)) > 0)"""


async def list_users(
    conn: Executor,
    *,
    domain: str | None = None,
    search: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[User]:
    """Users ordered by domain and name; ``search`` matches a substring (any case) of the
    address, the display name or the e-mail address."""
    rows = await conn.fetch(
        f"""SELECT {_PUBLIC} FROM users WHERE {_FILTER}
            ORDER BY domain, username LIMIT $3 OFFSET $4""",
        domain,
        search or None,
        limit,
        offset,
    )
    return [_user(row) for row in rows]


async def count_users(
    conn: Executor, *, domain: str | None = None, search: str | None = None
) -> int:
    """How many users ``list_users`` would find with the same filters and no limit."""
    count = await conn.fetchval(
        f"SELECT count(*) FROM users WHERE {_FILTER}", domain, search or None
    )
    return int(count)


async def count_users_by_state(conn: Executor) -> dict[str, int]:
    """``{"active": n, "disabled": m}`` over all users."""
    row = await conn.fetchrow(
        "SELECT count(*) FILTER (WHERE NOT disabled) AS active, "
        "count(*) FILTER (WHERE disabled) AS disabled FROM users"
    )
    assert row is not None
    return {"active": int(row["active"]), "disabled": int(row["disabled"])}


class _Unset:
    """The default of a field an update leaves alone (``None`` clears it)."""

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset()


async def update_user(
    conn: Executor,
    address: Address,
    *,
    display_name: str | _Unset | None = UNSET,
    email: str | _Unset | None = UNSET,
    notify_email: bool | _Unset = UNSET,
) -> User:
    """Change the profile fields given (``None`` clears one); return the updated user."""
    row = await conn.fetchrow(
        f"""UPDATE users SET
                display_name = CASE WHEN $3 THEN $4 ELSE display_name END,
                email = CASE WHEN $5 THEN $6 ELSE email END,
                notify_email = CASE WHEN $7 THEN $8 ELSE notify_email END,
                updated_at = now()
            WHERE username = $1 AND domain = $2 RETURNING {_PUBLIC}""",
        address.username,
        address.domain,
        not isinstance(display_name, _Unset),
        None if isinstance(display_name, _Unset) else display_name,
        not isinstance(email, _Unset),
        None if isinstance(email, _Unset) else email,
        not isinstance(notify_email, _Unset),
        None if isinstance(notify_email, _Unset) else notify_email,
    )
    if row is None:
        raise UserNotFound(f"no such user: {address}")
    await notify(conn, USERS_CHANNEL, "updated", str(address))
    return _user(row)


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
    await notify(conn, USERS_CHANNEL, "password", str(address))


async def set_disabled(conn: Executor, address: Address, disabled: bool) -> None:
    status = await conn.execute(
        "UPDATE users SET disabled = $3, updated_at = now() WHERE username = $1 AND domain = $2",
        address.username,
        address.domain,
        disabled,
    )
    _require_one(status, address)
    await notify(conn, USERS_CHANNEL, "disabled" if disabled else "enabled", str(address))


async def delete_user(conn: Executor, address: Address) -> None:
    status = await conn.execute(
        "DELETE FROM users WHERE username = $1 AND domain = $2", address.username, address.domain
    )
    _require_one(status, address)
    await notify(conn, USERS_CHANNEL, "deleted", str(address))


def _require_one(status: str, address: Address) -> None:
    if status.rsplit(" ", 1)[-1] == "0":
        raise UserNotFound(f"no such user: {address}")
