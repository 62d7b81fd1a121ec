"""Room operations for the control API (and the CLI): the rows and MESSAGEs of imc's commands.

Each function runs inside the caller's transaction, locks the room first (as the imc worker
does, so an API change and a ``#`` command on the same room are serialised) and leaves the
room exactly as the matching command would: ``#create`` (:func:`create_room`), ``#destroy``
(:func:`destroy_room`), ``#add`` (:func:`add_member`), ``#invite`` (:func:`invite_member`),
``#modify`` (:func:`set_member_role`), ``#remove`` (:func:`remove_member`), ``#ban``
(:func:`ban_member`), ``#unban`` (:func:`unban_member`). The notices are
imc's own texts (imported from :mod:`services.imc.commands`), queued in ``outbound_messages``
from the room's URI with imc's sources and headers, so the imc worker acts on their outcomes
(a failed invitation is withdrawn and the inviter told) as for its own.

The caller is an operator, not a member: permission checks of the commands do not apply;
their rules about the room do (no second owner-less room, no removing the owner, no adding
a member twice or a banned user).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from services.imc import commands as text
from services.imc.commands import BadAddress, build_address
from services.imc.executor import MANAGERS, NOTICE_TYPE, Config, Kind, member_limit
from services.imc.worker import GENERATED_VALUE
from shared.db import rooms as rooms_db
from shared.db.offline import GENERATED_HEADER
from shared.db.outbound import queue_message
from shared.db.rooms import Member, Role, Room
from shared.db.types import Executor

#: The headers imc puts on its MESSAGEs (no In-Reply-To: no MESSAGE is being answered).
HEADERS = [("Supported", "kamailio/imc"), (GENERATED_HEADER, GENERATED_VALUE)]


class RoomError(Exception):
    """A room operation that cannot be carried out; the message is for the operator."""


class InvalidRoom(RoomError):
    """A room name or member address that cannot be accepted."""


class RoomNotFound(RoomError):
    pass


class RoomExists(RoomError):
    pass


class MemberNotFound(RoomError):
    pass


class BanNotFound(MemberNotFound):
    """The user is not banned from the room."""


class MemberExists(RoomError):
    """Already a member, already invited, or banned from the room."""


class RoomFull(RoomError):
    """The room has reached its member limit (its own, else IMSTACK_IMC_MEMBER_LIMIT)."""


class OwnerRequired(RoomError):
    """The change would remove the room's owner or leave it with none."""


@dataclass(frozen=True)
class Notice:
    """A MESSAGE from the room to one address."""

    to: str
    body: str
    kind: Kind = Kind.NOTICE


def room_key(config: Config, value: str) -> str:
    """``name@conference-domain`` for ``name`` or ``name@domain`` (imc's room argument rules)."""
    try:
        key = build_address(value, config.conference_domain).lower()
    except BadAddress:
        raise InvalidRoom(
            f"invalid room {value!r}: rooms are <name> or <name>@{config.conference_domain}"
        ) from None
    name, _, domain = key.rpartition("@")
    if domain != config.conference_domain or name.startswith("."):
        raise InvalidRoom(
            f"invalid room {value!r}: rooms are <name> or <name>@{config.conference_domain}"
        )
    return key


def user_address(config: Config, value: str) -> str:
    """``user@host`` for a member argument, as ``#add``/``#invite`` read it."""
    try:
        return build_address(value, config.domain)
    except BadAddress:
        raise InvalidRoom(f"invalid user {value!r}") from None


async def _load(conn: Executor, key: str) -> Room:
    await rooms_db.lock_room(conn, key)
    room = await rooms_db.get_room(conn, key)
    if room is None:
        raise RoomNotFound(f"no such room: {key}")
    return room


def _broadcast(members: list[Member], body: str) -> list[Notice]:
    """imc's broadcast: every member except the invited."""
    return [Notice(m.aor, body) for m in members if m.role is not Role.INVITED]


async def _send(conn: Executor, room: Room, notices: list[Notice]) -> None:
    for notice in notices:
        await queue_message(
            conn,
            from_uri=room.uri,
            to_aor=notice.to,
            body=notice.body.encode(),
            content_type=NOTICE_TYPE,
            extra_headers=HEADERS,
            source=notice.kind.value,
        )


async def create_room(
    conn: Executor,
    key: str,
    *,
    owner: str,
    private: bool,
    topic: str | None = None,
    limits: Mapping[str, int | None] | None = None,
) -> int:
    """``#create``: the room with ``owner`` as its first member; the room's id. ``limits``:
    its member limit and/or history length (:data:`shared.db.rooms.LIMITS`)."""
    await rooms_db.lock_room(conn, key)
    if await rooms_db.get_room(conn, key) is not None:
        raise RoomExists(f"the room exists already: {key}")
    room_id = await rooms_db.create_room(conn, key, owner=owner, private=private)
    if topic is not None:
        await rooms_db.set_options(conn, room_id, topic=topic)
    if limits:
        await rooms_db.set_limits(conn, room_id, limits)
    return room_id


#: ``#create`` in one statement: the room's lock (as :func:`rooms_db.lock_room` takes it, so
#: imc's ``#create`` of the same name is serialised with it), the room with its options, the
#: owner's membership; a name taken already (committed before, or while the lock was awaited)
#: inserts nothing (``ON CONFLICT``), and no row comes back.
_CREATE_ROOM = """
WITH locked AS MATERIALIZED (SELECT pg_advisory_xact_lock(hashtextextended($1, 6))),
room AS (
    INSERT INTO rooms (name, domain, owner, private, topic, member_limit, history_length)
    SELECT $2, $3, $4, $5, $6, $7, $8 FROM locked
    ON CONFLICT (name, domain) DO NOTHING
    RETURNING id, name, domain, owner, private, topic, member_limit, history_length, created_at
), membership AS (
    INSERT INTO room_members (room_id, member, role) SELECT id, owner, 'owner' FROM room
)
SELECT room.*, 1 AS member_count, 0 AS invited_count FROM room"""


async def create_room_summary(
    conn: Executor,
    key: str,
    *,
    owner: str,
    private: bool,
    topic: str | None = None,
    member_limit: int | None = None,
    history_length: int | None = None,
) -> rooms_db.RoomSummary:
    """``#create`` as :func:`create_room` does it, in one statement and round trip (atomic
    on its own: no transaction needed); the new room as listed."""
    name, domain = rooms_db.split_key(key)
    row = await conn.fetchrow(
        _CREATE_ROOM, key.lower(), name, domain, owner, private, topic, member_limit, history_length
    )
    if row is None:
        raise RoomExists(f"the room exists already: {key}")
    return rooms_db.RoomSummary(**dict(row))


async def update_room(
    conn: Executor,
    key: str,
    *,
    private: bool | None,
    topic: str | None,
    clear_topic: bool,
    limits: Mapping[str, int | None] | None = None,
) -> None:
    """Change the options; ``limits``: the member limit and/or history length to set (None:
    back to the setting's default)."""
    room = await _load(conn, key)
    await rooms_db.set_options(conn, room.id, private=private, topic=topic)
    if clear_topic:
        await rooms_db.clear_topic(conn, room.id)
    if limits:
        await rooms_db.set_limits(conn, room.id, limits)


async def destroy_room(conn: Executor, key: str) -> int:
    """``#destroy``: every member but the invited is told; how many notices were queued."""
    room = await _load(conn, key)
    notices = _broadcast(list(room.members), text.DESTROYED)
    await rooms_db.delete_room(conn, room.id)
    await _send(conn, room, notices)
    return len(notices)


def _check_newcomer(config: Config, room: Room, aor: str) -> None:
    existing = room.find(aor)
    if existing is not None:
        what = "invited to" if existing.role is Role.INVITED else "a member of"
        raise MemberExists(f"{existing.aor} is already {what} {room.key}")
    if aor.lower() in room.banned:
        raise MemberExists(f"{aor} is banned from {room.key}")
    # As #add and #invite: the invited do not count, a full room takes no newcomer.
    limit = member_limit(config, room)
    joined = sum(1 for m in room.members if m.role is not Role.INVITED)
    if limit and joined >= limit:
        raise RoomFull(f"{room.key} is full ({limit} members at most)")


async def add_member(conn: Executor, config: Config, key: str, aor: str) -> None:
    """``#add``: ``aor`` becomes a member; the room (the newcomer included) is told."""
    room = await _load(conn, key)
    _check_newcomer(config, room, aor)
    await rooms_db.add_member(conn, room.id, aor, Role.MEMBER)
    after = [*room.members, Member(aor, Role.MEMBER)]
    await _send(conn, room, _broadcast(after, text.joined(aor)))


def _inviter(room: Room, inviter: str | None) -> str:
    if inviter is not None:
        member = room.find(inviter)
        if member is None or member.role not in MANAGERS:
            raise InvalidRoom(f"{inviter} is no owner or admin of {room.key}")
        return member.aor
    owners = [m.aor for m in room.members if m.role is Role.OWNER]
    return owners[0] if owners else room.owner


async def invite_member(
    conn: Executor, config: Config, key: str, aor: str, *, inviter: str | None = None
) -> str:
    """``#invite`` on behalf of ``inviter`` (an owner or admin; default: the room's first
    owner): ``aor`` is added as invited and sent the invitation; who invited."""
    room = await _load(conn, key)
    by = _inviter(room, inviter)
    _check_newcomer(config, room, aor)
    await rooms_db.add_member(conn, room.id, aor, Role.INVITED, invited_by=by)
    invitation = Notice(aor, text.invitation(by, config.command_char), Kind.INVITE)
    await _send(conn, room, [invitation])
    return by


async def set_member_role(conn: Executor, key: str, aor: str, role: Role) -> str:
    """``#modify``: ``aor``'s role becomes owner, admin or member; the room is told. The
    member's address as stored."""
    if role is Role.INVITED:
        raise InvalidRoom("a role is owner, admin or member")
    room = await _load(conn, key)
    member = room.find(aor)
    if member is None:
        raise MemberNotFound(f"{aor} is not a member of {room.key}")
    after = [Member(m.aor, role) if m is member else m for m in room.members]
    if not any(m.role is Role.OWNER for m in after):
        raise OwnerRequired(f"{room.key} would have no owner left")
    await rooms_db.set_role(conn, room.id, member.aor, role)
    await _send(conn, room, _broadcast(after, text.modified(member.aor, role.value)))
    return member.aor


async def remove_member(conn: Executor, key: str, aor: str) -> None:
    """``#remove``: not the owner; the removed member is told, then the room."""
    room = await _load(conn, key)
    member = room.find(aor)
    if member is None:
        raise MemberNotFound(f"{aor} is not a member of {room.key}")
    if member.role is Role.OWNER:
        raise OwnerRequired(f"an owner of {room.key} cannot be removed (change the role first)")
    await rooms_db.remove_member(conn, room.id, member.aor)
    after = [m for m in room.members if m is not member]
    await _send(
        conn, room, [Notice(member.aor, text.REMOVED), *_broadcast(after, text.left(member.aor))]
    )


async def ban_member(conn: Executor, key: str, aor: str) -> str:
    """``#ban``: ``aor`` (not an owner) is put out of the room until unbanned — a membership
    or invitation becomes the ban, someone not in the room is banned beforehand; they are
    told, then the room. The address as stored."""
    room = await _load(conn, key)
    if aor.lower() in room.banned:
        raise MemberExists(f"{aor} is already banned from {room.key}")
    member = room.find(aor)
    if member is not None:
        if member.role is Role.OWNER:
            raise OwnerRequired(f"an owner of {room.key} cannot be banned (change the role first)")
        aor = member.aor
    await rooms_db.ban_member(conn, room.id, aor)
    after = [m for m in room.members if m is not member]
    await _send(
        conn, room, [Notice(aor, text.YOU_ARE_BANNED), *_broadcast(after, text.was_banned(aor))]
    )
    return aor


async def unban_member(conn: Executor, key: str, aor: str) -> None:
    """``#unban``: lift ``aor``'s ban (they may join, be added or invited again); they are
    told, then the room."""
    room = await _load(conn, key)
    if aor.lower() not in room.banned:
        raise BanNotFound(f"{aor} is not banned from {room.key}")
    await rooms_db.unban_member(conn, room.id, aor)
    await _send(
        conn,
        room,
        [
            Notice(aor, text.YOU_ARE_UNBANNED),
            *_broadcast(list(room.members), text.was_unbanned(aor)),
        ],
    )


async def history(
    conn: Executor, key: str, *, keep: int, limit: int, offset: int
) -> tuple[int, list[rooms_db.HistoryMessage]]:
    """The room's history as imc replays it (its newest messages: the room's own history
    length, else ``keep``, IMSTACK_IMC_HISTORY): how many, and one page counted from the
    newest (oldest first on the page)."""
    room = await rooms_db.get_room_summary(conn, key)
    if room is None:
        raise RoomNotFound(f"no such room: {key}")
    if room.history_length is not None:
        keep = room.history_length
    count = await rooms_db.history_count(conn, room.id, keep)
    page = await rooms_db.history_page(conn, room.id, keep=keep, limit=limit, offset=offset)
    return count, page
