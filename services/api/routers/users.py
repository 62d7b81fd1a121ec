"""``/api/v1/users``: create, list, show, update, set password, disable/enable, delete.

Every change is one transaction that also NOTIFYs ``users`` with ``{"type", "id": address}``.
Reading needs any token; changing needs an admin token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status

from services.api.deps import AdminDep, PoolDep, SettingsDep
from services.api.errors import ErrorBody
from services.api.schemas.users import (
    PasswordSet,
    UserCreate,
    UserPublic,
    UsersPublic,
    UserUpdate,
)
from shared.config import Settings
from shared.db import locations as locations_db
from shared.db import offline as offline_db
from shared.db import rooms as rooms_db
from shared.db import users as users_db
from shared.db.listen import notify
from shared.db.users import USERS_CHANNEL, Address, parse_address

router = APIRouter(prefix="/users", tags=["users"])

MAX_PAGE = 1000

AddressPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="user@domain, or a bare user name for the server's domain.",
        examples=["alice@example.com"],
    ),
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such user."}
}

_WEAK_PASSWORD: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorBody,
        "description": "Invalid input; code weak_password: the password is shorter than "
        "IMSTACK_PASSWORD_MIN_LENGTH or is the user name or address.",
    }
}


def _address(settings: Settings, text: str) -> Address:
    return parse_address(text, settings.domain)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={
        409: {"model": ErrorBody, "description": "The user exists already."},
        **_WEAK_PASSWORD,
    },
)
async def create_user(
    body: UserCreate,
    pool: PoolDep,
    settings: SettingsDep,
    _: AdminDep,
    request: Request,
    response: Response,
) -> UserPublic:
    """Create a user. The password is kept only as digest HA1s (MD5 and SHA-256)."""
    if body.address is not None:
        address = _address(settings, body.address)
    else:
        address = parse_address(f"{body.username}@{body.domain or settings.domain}")
    password = body.password.get_secret_value()
    users_db.check_password(address, password, settings.password_min_length)
    async with pool.acquire() as conn, conn.transaction():
        user = await users_db.create_user(
            conn,
            address,
            password,
            display_name=body.display_name,
            email=body.email,
            notify_email=body.notify_email,
        )
        await notify(conn, USERS_CHANNEL, "created", str(address))
    response.headers["Location"] = str(request.url_for("get_user", address=str(address)))
    return UserPublic.of(user)


@router.get("")
async def list_users(
    pool: PoolDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Users to skip.")] = 0,
    domain: Annotated[
        str | None,
        Query(max_length=253, pattern=r"^[^\x00-\x1f\x7f]*$", description="Only this domain."),
    ] = None,
    search: Annotated[
        str | None,
        Query(
            max_length=200,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="Substring (any case) of the address, display name or e-mail.",
        ),
    ] = None,
) -> UsersPublic:
    """Users ordered by domain, then name; ``count`` is the total matching the filters."""
    wanted = domain.lower() if domain else None
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        count = await users_db.count_users(conn, domain=wanted, search=search)
        found = await users_db.list_users(
            conn, domain=wanted, search=search, limit=limit, offset=offset
        )
    return UsersPublic(
        data=[UserPublic.of(u) for u in found], count=count, limit=limit, offset=offset
    )


@router.get("/{address}", responses=_NOT_FOUND)
async def get_user(address: AddressPath, pool: PoolDep, settings: SettingsDep) -> UserPublic:
    """One user (never their credentials)."""
    addr = _address(settings, address)
    user = await users_db.get_user(pool, addr)
    if user is None:
        raise users_db.UserNotFound(f"no such user: {addr}")
    return UserPublic.of(user)


@router.patch("/{address}", responses=_NOT_FOUND)
async def update_user(
    address: AddressPath, body: UserUpdate, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> UserPublic:
    """Change the display name, e-mail address (``null`` clears one) and e-mail notices."""
    addr = _address(settings, address)
    changes = body.model_dump(include=body.model_fields_set)
    async with pool.acquire() as conn, conn.transaction():
        user = await users_db.update_user(conn, addr, **changes)
        await notify(conn, USERS_CHANNEL, "updated", str(addr))
    return UserPublic.of(user)


@router.put(
    "/{address}/password",
    status_code=status.HTTP_204_NO_CONTENT,
    responses={**_NOT_FOUND, **_WEAK_PASSWORD},
)
async def set_password(
    address: AddressPath, body: PasswordSet, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Set a new password (for SIP and MSRP alike)."""
    addr = _address(settings, address)
    password = body.password.get_secret_value()
    users_db.check_password(addr, password, settings.password_min_length)
    async with pool.acquire() as conn, conn.transaction():
        await users_db.set_password(conn, addr, password)
        await notify(conn, USERS_CHANNEL, "password", str(addr))


@router.post("/{address}/disable", responses=_NOT_FOUND)
async def disable_user(
    address: AddressPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> UserPublic:
    """Disable a user: registration, messages and MSRP AUTH are refused."""
    return await _set_disabled(pool, _address(settings, address), True)


@router.post("/{address}/enable", responses=_NOT_FOUND)
async def enable_user(
    address: AddressPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> UserPublic:
    """Enable a disabled user again."""
    return await _set_disabled(pool, _address(settings, address), False)


async def _set_disabled(pool: PoolDep, addr: Address, disabled: bool) -> UserPublic:
    async with pool.acquire() as conn, conn.transaction():
        await users_db.set_disabled(conn, addr, disabled)
        user = await users_db.get_user(conn, addr)
        await notify(conn, USERS_CHANNEL, "disabled" if disabled else "enabled", str(addr))
    assert user is not None
    return UserPublic.of(user)


@router.delete("/{address}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def delete_user(
    address: AddressPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Delete a user with their bindings, stored messages and room memberships (invitations
    and bans included), in one transaction. Rooms they own stay (their other owners, or the
    API, manage them)."""
    addr = _address(settings, address)
    async with pool.acquire() as conn, conn.transaction():
        await users_db.delete_user(conn, addr)
        await locations_db.delete_aor_bindings(conn, str(addr))
        await offline_db.delete_recipient_messages(conn, str(addr))
        await rooms_db.remove_memberships(conn, str(addr))
        await notify(conn, USERS_CHANNEL, "deleted", str(addr))
