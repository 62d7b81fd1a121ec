"""``/api/v1/rooms``: chat rooms, their members and bans, and their history, with imc's
semantics.

Rooms live in the conference domain; a room created here is the same rows ``#create``
makes. Member changes are ``#add``, ``#invite``, ``#modify``, ``#remove``, ``#ban`` and
``#unban`` done by an operator: the same rows, and the same notices queued for the relay
(:mod:`services.api.room_ops`). Every change is one transaction. Reading needs any token;
changing needs an admin token.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from starlette.datastructures import URLPath

from services.api import room_ops
from services.api.deps import AdminDep, PoolDep, SettingsDep
from services.api.errors import ErrorBody
from services.api.schemas.rooms import (
    BanCreate,
    HistoryMessagePublic,
    HistoryPublic,
    InvitationCreate,
    MemberCreate,
    MemberPublic,
    MembersPublic,
    MemberUpdate,
    RoomCreate,
    RoomPublic,
    RoomsPublic,
    RoomUpdate,
)
from services.imc.executor import Config
from services.imc.worker import config_from
from shared.config import Settings
from shared.db import rooms as rooms_db
from shared.db.rooms import Role
from shared.db.types import Executor

router = APIRouter(prefix="/rooms", tags=["rooms"])

MAX_PAGE = 1000

_TEXT = r"^[^\x00-\x1f\x7f]*$"
RoomPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=_TEXT,
        description="The room's name, or name@<conference domain>.",
        examples=["lobby"],
    ),
]
MemberPath = Annotated[
    str,
    Path(
        min_length=1,
        max_length=320,
        pattern=_TEXT,
        description="user@domain, or a bare user name for the server's domain.",
        examples=["alice@example.com"],
    ),
]
_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such room."}
}
_MEMBER_NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such room, or no such member in it."},
    409: {"model": ErrorBody, "description": "The room would be left without an owner."},
}
_MEMBER_EXISTS: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {
        "model": ErrorBody,
        "description": "Already a member or invited, banned, or the room is full.",
    },
}


def _config(settings: Settings) -> Config:
    return config_from(settings)


async def _summary(conn: Executor, key: str) -> RoomPublic:
    room = await rooms_db.get_room_summary(conn, key)
    if room is None:
        raise room_ops.RoomNotFound(f"no such room: {key}")
    return RoomPublic.of(room)


async def _member(conn: Executor, key: str, aor: str) -> MemberPublic:
    room = await rooms_db.get_room_summary(conn, key)
    assert room is not None
    for row in await rooms_db.member_rows(conn, room.id):
        if row.member.lower() == aor.lower():
            return MemberPublic.of(row)
    raise room_ops.MemberNotFound(f"{aor} is not a member of {key}")


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={409: {"model": ErrorBody, "description": "The room exists already."}},
)
async def create_room(
    body: RoomCreate,
    pool: PoolDep,
    settings: SettingsDep,
    _: AdminDep,
    request: Request,
    response: Response,
) -> RoomPublic:
    """Create a persistent room owned by ``owner`` (its first member), as ``#create`` does."""
    config = _config(settings)
    key = room_ops.room_key(config, body.name)
    owner = room_ops.user_address(config, body.owner)
    # One statement, one round trip (room_ops.create_room's rows, as #create makes them).
    summary = await room_ops.create_room_summary(
        pool,
        key,
        owner=owner,
        private=body.private,
        topic=body.topic,
        member_limit=body.member_limit,
        history_length=body.history_length,
    )
    # What request.url_for("get_room", room=key) gives, without searching the routes for it.
    response.headers["Location"] = str(
        URLPath(f"/api/v1/rooms/{key}").make_absolute_url(request.base_url)
    )
    return RoomPublic.of(summary)


@router.get("")
async def list_rooms(
    pool: PoolDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Rooms to skip.")] = 0,
    name: Annotated[
        str | None,
        Query(max_length=200, pattern=_TEXT, description="Substring (any case) of the name."),
    ] = None,
    member: Annotated[
        str | None,
        Query(
            max_length=320,
            pattern=_TEXT,
            description="Only rooms this user is in (invited included).",
        ),
    ] = None,
    private: Annotated[bool | None, Query(description="Only private (or public) rooms.")] = None,
) -> RoomsPublic:
    """Rooms ordered by name; ``count`` is the total matching the filters."""
    config = _config(settings)
    aor = room_ops.user_address(config, member) if member is not None else None
    domain = config.conference_domain
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        count = await rooms_db.count_rooms(conn, domain, name=name, member=aor, private=private)
        found = await rooms_db.list_rooms(
            conn, domain, name=name, member=aor, private=private, limit=limit, offset=offset
        )
    return RoomsPublic(
        data=[RoomPublic.of(r) for r in found], count=count, limit=limit, offset=offset
    )


@router.get("/{room}", responses=_NOT_FOUND)
async def get_room(room: RoomPath, pool: PoolDep, settings: SettingsDep) -> RoomPublic:
    """One room with its member count."""
    return await _summary(pool, room_ops.room_key(_config(settings), room))


@router.patch("/{room}", responses=_NOT_FOUND)
async def update_room(
    room: RoomPath, body: RoomUpdate, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> RoomPublic:
    """Change whether the room is private, its topic (``null`` clears it), member limit
    and history length (``null``: the settings' defaults)."""
    key = room_ops.room_key(_config(settings), room)
    changes = body.model_fields_set
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.update_room(
            conn,
            key,
            private=body.private,
            topic=body.topic,
            clear_topic="topic" in changes and body.topic is None,
            limits={f: getattr(body, f) for f in rooms_db.LIMITS if f in changes},
        )
        return await _summary(conn, key)


@router.delete("/{room}", status_code=status.HTTP_204_NO_CONTENT, responses=_NOT_FOUND)
async def destroy_room(room: RoomPath, pool: PoolDep, settings: SettingsDep, _: AdminDep) -> None:
    """Destroy the room; its members (not the invited) are told, as ``#destroy`` does."""
    key = room_ops.room_key(_config(settings), room)
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.destroy_room(conn, key)


@router.get("/{room}/members", responses=_NOT_FOUND)
async def list_members(room: RoomPath, pool: PoolDep, settings: SettingsDep) -> MembersPublic:
    """Every member with their role and state (invited and banned users included)."""
    key = room_ops.room_key(_config(settings), room)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        summary = await rooms_db.get_room_summary(conn, key)
        if summary is None:
            raise room_ops.RoomNotFound(f"no such room: {key}")
        rows = await rooms_db.member_rows(conn, summary.id)
    return MembersPublic(data=[MemberPublic.of(r) for r in rows], count=len(rows))


@router.post("/{room}/members", status_code=status.HTTP_201_CREATED, responses=_MEMBER_EXISTS)
async def add_member(
    room: RoomPath, body: MemberCreate, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> MemberPublic:
    """Add a user as a member, as ``#add`` does: the room (the newcomer too) is told."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, body.user)
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.add_member(conn, config, key, aor)
        return await _member(conn, key, aor)


@router.post("/{room}/invitations", status_code=status.HTTP_201_CREATED, responses=_MEMBER_EXISTS)
async def invite_member(
    room: RoomPath, body: InvitationCreate, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> MemberPublic:
    """Invite a user, as ``#invite`` does: they are added as invited and sent the invitation
    MESSAGE; if it cannot be delivered the invitation is withdrawn and the inviter told."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, body.user)
    inviter = room_ops.user_address(config, body.inviter) if body.inviter else None
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.invite_member(conn, config, key, aor, inviter=inviter)
        return await _member(conn, key, aor)


@router.patch("/{room}/members/{member}", responses=_MEMBER_NOT_FOUND)
async def set_member_role(
    room: RoomPath,
    member: MemberPath,
    body: MemberUpdate,
    pool: PoolDep,
    settings: SettingsDep,
    _: AdminDep,
) -> MemberPublic:
    """Change a member's role, as ``#modify`` does: the room is told."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, member)
    async with pool.acquire() as conn, conn.transaction():
        stored = await room_ops.set_member_role(conn, key, aor, Role(body.role.value))
        return await _member(conn, key, stored)


@router.delete(
    "/{room}/members/{member}",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=_MEMBER_NOT_FOUND,
)
async def remove_member(
    room: RoomPath, member: MemberPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Remove a member (not an owner), as ``#remove`` does: they are told, then the room."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, member)
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.remove_member(conn, key, aor)


_BAN: dict[int | str, dict[str, Any]] = {
    **_NOT_FOUND,
    409: {"model": ErrorBody, "description": "Already banned, or an owner of the room."},
}
_UNBAN: dict[int | str, dict[str, Any]] = {
    404: {"model": ErrorBody, "description": "No such room, or the user is not banned."}
}


@router.post("/{room}/bans", status_code=status.HTTP_201_CREATED, responses=_BAN)
async def ban_member(
    room: RoomPath, body: BanCreate, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> MemberPublic:
    """Ban a user, as ``#ban`` does: a member or invitee is out of the room at once, anyone
    else is banned beforehand; they cannot ``#join``, be added or invited until unbanned.
    The user is told, then the room. Owners cannot be banned."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, body.user)
    async with pool.acquire() as conn, conn.transaction():
        stored = await room_ops.ban_member(conn, key, aor)
        return await _member(conn, key, stored)


@router.delete("/{room}/bans/{member}", status_code=status.HTTP_204_NO_CONTENT, responses=_UNBAN)
async def unban_member(
    room: RoomPath, member: MemberPath, pool: PoolDep, settings: SettingsDep, _: AdminDep
) -> None:
    """Lift a ban, as ``#unban`` does: the user may join again (they are no member until
    they do); they are told, then the room."""
    config = _config(settings)
    key = room_ops.room_key(config, room)
    aor = room_ops.user_address(config, member)
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.unban_member(conn, key, aor)


@router.get("/{room}/history", responses=_NOT_FOUND)
async def room_history(
    room: RoomPath,
    pool: PoolDep,
    settings: SettingsDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Newest messages to skip.")] = 0,
) -> HistoryPublic:
    """The room's last chat messages (what a joining member is replayed): pages counted
    from the newest, each page oldest first."""
    key = room_ops.room_key(_config(settings), room)
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        count, page = await room_ops.history(
            conn, key, keep=settings.imc_history, limit=limit, offset=offset
        )
    return HistoryPublic(
        data=[HistoryMessagePublic.of(m) for m in page], count=count, limit=limit, offset=offset
    )
