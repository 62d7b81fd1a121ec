"""The ``rooms``, ``room_members``, ``room_inbox`` and ``room_messages`` tables: chat rooms,
their traffic and their history.

The contract (keys, roles, the inbox claim) is documented in ``migrations/0006_rooms.sql``,
the history's in ``migrations/0008_room_history.sql``, the member limit, history length and
flood control's in ``migrations/0011_room_limits.sql``.
The relay calls :func:`enqueue`; the imc worker claims with :func:`claim_next`, reads a room
with :func:`get_room` after :func:`lock_room`, and changes it with the other functions, all
in the claiming transaction. The API (rooms created there behave like ``#create``) uses the
same functions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.db.outbound import FANOUT_QUEUED, QUEUED_CHANNEL
from shared.db.types import Executor

#: NOTIFY channel woken when a room MESSAGE is queued (payload {"type": "queued", "id": ...}).
INBOX_CHANNEL = "room_inbox"


class Role(StrEnum):
    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"
    INVITED = "invited"  # invited, not yet accepted


@dataclass(frozen=True)
class Member:
    aor: str  # user@domain
    role: Role
    invited_by: str | None = None

    @property
    def user(self) -> str:
        return self.aor.rpartition("@")[0]

    def is_(self, aor: str) -> bool:
        return self.aor.lower() == aor.lower()


@dataclass(frozen=True)
class Room:
    """A room with its members in Kamailio's list order (IMC-M3: the first member added
    stays at the head, every later one is inserted right after it)."""

    id: int
    name: str
    domain: str
    owner: str
    private: bool
    topic: str | None
    members: tuple[Member, ...]
    banned: frozenset[str] = frozenset()  # lower-case addresses
    member_limit: int | None = None  # None: IMSTACK_IMC_MEMBER_LIMIT
    history_length: int | None = None  # None: IMSTACK_IMC_HISTORY

    @property
    def key(self) -> str:
        return f"{self.name}@{self.domain}"

    @property
    def uri(self) -> str:
        return f"sip:{self.key}"

    def find(self, aor: str) -> Member | None:
        for member in self.members:
            if member.is_(aor):
                return member
        return None


@dataclass(frozen=True)
class InboxMessage:
    id: int
    room: str  # name@domain, as addressed (Request-URI)
    sender: str  # user@domain, authenticated
    sender_display: str | None
    call_id: str
    content_type: str
    body: bytes
    received_at: datetime
    #: Whether :func:`claim_next` took the room's lock (:func:`lock_room`) with the row.
    locked: bool = False


def split_key(key: str) -> tuple[str, str]:
    name, _, domain = key.lower().rpartition("@")
    return name, domain


async def enqueue(
    conn: Executor,
    *,
    room: str,
    sender: str,
    sender_display: str | None,
    call_id: str,
    content_type: str,
    body: bytes,
) -> int:
    """Queue a MESSAGE for ``room`` and wake imc (NOTIFY on commit); the row's id. One
    statement, atomic by itself: no transaction is needed around it."""
    new_id = await conn.fetchval(
        """WITH queued AS (
               INSERT INTO room_inbox (room, sender, sender_display, call_id, content_type,
                   body)
               VALUES ($1, $2, $3, $4, $5, $6) RETURNING id)
           SELECT id FROM queued, LATERAL (SELECT pg_notify($7,
               json_build_object('type', 'queued', 'id', id)::text)) AS woken""",
        room.lower(),
        sender,
        sender_display,
        call_id,
        content_type,
        body,
        INBOX_CHANNEL,
    )
    return int(new_id)


async def claim_next(conn: Executor, *, chat_lock: bytes | None = None) -> InboxMessage | None:
    """Take the oldest queued MESSAGE of some room (inside a transaction): the row is
    deleted by this transaction, so it is gone once the transaction commits and queued
    again when it rolls back.

    Only the head of each room is a candidate, and a head another transaction holds is
    skipped — so that room's later messages wait for it (order) and no worker handles a
    room another worker is at.

    The transaction that takes a row commits without waiting for its WAL flush
    (``synchronous_commit`` off for it alone): everything it does is redone from the row
    should a crash lose it, and whatever it queued for the relay is durable before the
    relay can send it (the relay's claim commits synchronously, which flushes the WAL up
    to and past this commit). It saves a disk flush per room MESSAGE.

    With ``chat_lock`` (the command prefix), a row whose body does not start with it (chat:
    it acts on its own room) also takes its room's lock (:func:`lock_room`) in the same
    statement: ``locked`` says so, and the caller reads the room in its next statement
    (which sees everything committed before the lock was granted), a round trip saved."""
    row = await conn.fetchrow(
        """DELETE FROM room_inbox WHERE id = (
               SELECT id FROM room_inbox
               WHERE id IN (SELECT min(id) FROM room_inbox GROUP BY room)
               ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED)
           RETURNING *, set_config('synchronous_commit', 'off', true) AS relaxed,
               CASE WHEN length($1::bytea) > 0 AND substring(body FROM 1 FOR length($1)) <> $1
                    THEN (SELECT true FROM (SELECT pg_advisory_xact_lock(
                              hashtextextended(room, 6))) AS l)
                    ELSE false END AS locked""",
        chat_lock,
    )
    if row is None:
        return None
    data = dict(row)
    del data["relaxed"]
    data["locked"] = bool(data["locked"])
    data["body"] = bytes(data["body"])
    return InboxMessage(**data)


async def delete_inbox(conn: Executor, message_id: int) -> None:
    """Delete a queued MESSAGE (:func:`claim_next` already does for the one it takes)."""
    await conn.execute("DELETE FROM room_inbox WHERE id = $1", message_id)


async def inbox_count(conn: Executor) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM room_inbox"))


async def lock_room(conn: Executor, key: str) -> None:
    """Serialise changes to room ``key`` (name@domain) until the transaction ends; taken
    before reading it, also when it does not exist yet (two ``#create`` at once)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))", key.lower())


async def get_room(conn: Executor, key: str) -> Room | None:
    """The room and its members (one query), or None."""
    name, domain = split_key(key)
    rows = await conn.fetch(
        """SELECT r.id, r.name, r.domain, r.owner, r.private, r.topic, r.member_limit,
                  r.history_length, m.id AS member_id, m.member, m.role, m.state,
                  m.invited_by
           FROM rooms r LEFT JOIN room_members m ON m.room_id = r.id
           WHERE r.name = $1 AND r.domain = $2""",
        name,
        domain,
    )
    if not rows:
        return None
    row = rows[0]
    # IMC-M3 order: the first member, then the others newest first.
    listed = sorted((r for r in rows if r["member_id"] is not None), key=lambda r: -r["member_id"])
    if listed:
        listed.insert(0, listed.pop())
    members = tuple(
        Member(r["member"], Role(r["role"]), r["invited_by"])
        for r in listed
        if r["state"] == "active"
    )
    banned = frozenset(r["member"].lower() for r in listed if r["state"] == "banned")
    return Room(
        id=row["id"],
        name=row["name"],
        domain=row["domain"],
        owner=row["owner"],
        private=row["private"],
        topic=row["topic"],
        members=members,
        banned=banned,
        member_limit=row["member_limit"],
        history_length=row["history_length"],
    )


async def create_room(conn: Executor, key: str, *, owner: str, private: bool) -> int:
    """Create the room with ``owner`` as its first member (role owner); the room's id."""
    name, domain = split_key(key)
    room_id = await conn.fetchval(
        """INSERT INTO rooms (name, domain, owner, private) VALUES ($1, $2, $3, $4)
           RETURNING id""",
        name,
        domain,
        owner,
        private,
    )
    await add_member(conn, int(room_id), owner, Role.OWNER)
    return int(room_id)


async def delete_room(conn: Executor, room_id: int) -> None:
    await conn.execute("DELETE FROM rooms WHERE id = $1", room_id)


async def add_member(
    conn: Executor, room_id: int, aor: str, role: Role, *, invited_by: str | None = None
) -> None:
    await conn.execute(
        """INSERT INTO room_members (room_id, member, role, invited_by)
           VALUES ($1, $2, $3, $4)""",
        room_id,
        aor,
        role.value,
        invited_by,
    )


async def set_role(conn: Executor, room_id: int, aor: str, role: Role) -> None:
    await conn.execute(
        """UPDATE room_members SET role = $3, updated_at = now()
           WHERE room_id = $1 AND lower(member) = lower($2)""",
        room_id,
        aor,
        role.value,
    )


async def remove_member(conn: Executor, room_id: int, aor: str) -> None:
    await conn.execute(
        "DELETE FROM room_members WHERE room_id = $1 AND lower(member) = lower($2)",
        room_id,
        aor,
    )


async def ban_member(conn: Executor, room_id: int, aor: str) -> None:
    """``aor`` is banned from the room: a membership (invitation included) becomes the ban,
    someone not in the room gets a ban row."""
    await conn.execute(
        """INSERT INTO room_members (room_id, member, role, state) VALUES ($1, $2, 'member',
               'banned')
           ON CONFLICT (room_id, lower(member)) DO UPDATE
           SET state = 'banned', role = 'member', invited_by = NULL, updated_at = now()""",
        room_id,
        aor,
    )


async def unban_member(conn: Executor, room_id: int, aor: str) -> bool:
    """Lift ``aor``'s ban (they are no member afterwards); False when there was none."""
    status = await conn.execute(
        """DELETE FROM room_members
           WHERE room_id = $1 AND lower(member) = lower($2) AND state = 'banned'""",
        room_id,
        aor,
    )
    return status != "DELETE 0"


@dataclass(frozen=True)
class HistoryMessage:
    """A chat message kept in a room's history (the body as the sender wrote it)."""

    id: int
    sender: str  # user@domain
    content_type: str
    body: bytes
    sent_at: datetime


@dataclass(frozen=True)
class Remembered:
    """A chat message for the room's history (:func:`remember`, :func:`queue_fanout`)."""

    room_id: int
    sender: str
    content_type: str
    body: bytes
    keep: int


async def remember(
    conn: Executor, room_id: int, *, sender: str, content_type: str, body: bytes, keep: int
) -> None:
    """Add a chat message to the room's history and forget all but the newest ``keep``
    (call under the room's lock: :func:`lock_room`). One statement: the trim does not see
    the row it inserts, so it keeps the newest ``keep - 1`` of the others."""
    await conn.execute(
        """WITH added AS (
               INSERT INTO room_messages (room_id, sender, content_type, body)
               VALUES ($1, $2, $3, $4) RETURNING id)
           DELETE FROM room_messages WHERE room_id = $1 AND id <= (
               SELECT id FROM room_messages WHERE room_id = $1
               ORDER BY id DESC OFFSET greatest($5::int - 1, 0) LIMIT 1)""",
        room_id,
        sender,
        content_type,
        body,
        keep,
    )


async def history(conn: Executor, room_id: int, limit: int) -> list[HistoryMessage]:
    """The newest ``limit`` messages of the room's history, oldest first."""
    rows = await conn.fetch(
        """SELECT id, sender, content_type, body, sent_at FROM (
               SELECT * FROM room_messages WHERE room_id = $1 ORDER BY id DESC LIMIT $2
           ) newest ORDER BY id""",
        room_id,
        limit,
    )
    return [
        HistoryMessage(
            id=r["id"],
            sender=r["sender"],
            content_type=r["content_type"],
            body=bytes(r["body"]),
            sent_at=r["sent_at"],
        )
        for r in rows
    ]


async def last_chat(conn: Executor, room_id: int, aor: str) -> datetime | None:
    """When ``aor``'s last chat message sent to the room was received (flood control)."""
    at: datetime | None = await conn.fetchval(
        """SELECT last_chat_at FROM room_members
           WHERE room_id = $1 AND lower(member) = lower($2)""",
        room_id,
        aor,
    )
    return at


async def set_last_chat(conn: Executor, room_id: int, aor: str, at: datetime) -> None:
    await conn.execute(
        """UPDATE room_members SET last_chat_at = $3
           WHERE room_id = $1 AND lower(member) = lower($2)""",
        room_id,
        aor,
        at,
    )


async def visible_rooms(conn: Executor, domain: str, viewer: str) -> list[str]:
    """Names of the rooms of ``domain`` that ``viewer`` may see listed: every public room,
    and the private rooms ``viewer`` is in (invited included). Sorted by name."""
    rows = await conn.fetch(
        """SELECT r.name FROM rooms r
           WHERE r.domain = $1
             AND (NOT r.private OR EXISTS (
                 SELECT 1 FROM room_members m WHERE m.room_id = r.id
                   AND lower(m.member) = lower($2) AND m.state = 'active'))
           ORDER BY r.name""",
        domain.lower(),
        viewer,
    )
    return [row["name"] for row in rows]


async def reachable(conn: Executor, aors: Sequence[str]) -> set[str]:
    """Which of ``aors`` have an unexpired binding right now."""
    rows = await conn.fetch(
        "SELECT DISTINCT aor FROM locations WHERE aor = ANY($1::text[]) AND expires_at > now()",
        list(aors),
    )
    return {row["aor"] for row in rows}


async def queue_fanout(
    conn: Executor,
    *,
    from_uri: str,
    recipients: Sequence[str],
    body: bytes,
    content_type: str,
    extra_headers: Sequence[tuple[str, str]],
    source: str,
    remember: Remembered | None = None,
) -> list[str]:
    """Queue one MESSAGE (the same From, body, type and headers) for those of
    ``recipients`` that have an unexpired binding, in ``recipients`` order, and wake the
    relay: ONE statement, ONE fan-out row (``migrations/0015_outbound_fanout.sql``: the
    relay claims it once, by id, and sends a copy to each), its ``outbound`` NOTIFY (type
    ``fanout``) sent when the transaction commits. ``to_aor`` of the row is the sender's
    AoR (``from_uri`` without its scheme: the room). Returns the recipients with no
    binding, in order: nothing was queued for them.

    With ``remember``, the same statement does what :func:`remember` does (call under the
    room's lock), also when no member has a binding."""
    if not recipients and remember is None:
        return []
    row = await conn.fetchrow(
        """WITH wanted AS (
               SELECT t.aor, t.n, EXISTS (
                   SELECT 1 FROM locations l WHERE l.aor = t.aor AND l.expires_at > now()
               ) AS online
               FROM unnest($1::text[]) WITH ORDINALITY AS t(aor, n)),
           online AS (
               SELECT array_agg(aor ORDER BY n) AS aors FROM wanted WHERE online),
           queued AS (
               INSERT INTO outbound_messages (from_uri, to_aor, content_type, body,
                   extra_headers, source, recipients)
               SELECT $2, $8, $3, $4, $5::jsonb, $6, aors FROM online
               WHERE aors IS NOT NULL
               RETURNING id),
           added AS (
               INSERT INTO room_messages (room_id, sender, content_type, body)
               SELECT $10, $11, $12, $13 WHERE $10::bigint IS NOT NULL
               RETURNING id),
           trimmed AS (  -- (does not see the row added: keeps the newest keep - 1 others)
               DELETE FROM room_messages WHERE $10::bigint IS NOT NULL AND room_id = $10
                   AND id <= (SELECT id FROM room_messages WHERE room_id = $10
                              ORDER BY id DESC OFFSET greatest($14::int - 1, 0) LIMIT 1)
               RETURNING id)
           SELECT (SELECT pg_notify($7, json_build_object('type', $9::text, 'id', id)::text)
                   FROM queued) AS notified,
                  (SELECT coalesce(array_agg(aor ORDER BY n), '{}') FROM wanted
                   WHERE NOT online) AS offline""",
        list(recipients),
        from_uri,
        content_type,
        body,
        json.dumps([list(pair) for pair in extra_headers]),
        source,
        QUEUED_CHANNEL,
        from_uri.split(":", 1)[-1],
        FANOUT_QUEUED,
        None if remember is None else remember.room_id,
        None if remember is None else remember.sender,
        None if remember is None else remember.content_type,
        None if remember is None else remember.body,
        0 if remember is None else remember.keep,
    )
    assert row is not None  # (an aggregate query: always one row)
    return list(row["offline"])


async def withdraw_invitation(conn: Executor, room_key: str, aor: str) -> str | None:
    """Remove ``aor`` from the room if still only invited; who invited them (None when the
    invitation was already accepted, rejected or the room is gone)."""
    name, domain = split_key(room_key)
    row = await conn.fetchrow(
        """DELETE FROM room_members m USING rooms r
           WHERE m.room_id = r.id AND r.name = $1 AND r.domain = $2
             AND lower(m.member) = lower($3) AND m.role = 'invited'
           RETURNING m.invited_by""",
        name,
        domain,
        aor,
    )
    if row is None:
        return None
    return str(row["invited_by"] or "")


# -- the control API (additive: imc does not use these) -----------------------------------


@dataclass(frozen=True)
class RoomSummary:
    """A room as listed: its options and how many are in it."""

    id: int
    name: str
    domain: str
    owner: str
    private: bool
    topic: str | None
    member_limit: int | None  # None: IMSTACK_IMC_MEMBER_LIMIT
    history_length: int | None  # None: IMSTACK_IMC_HISTORY
    created_at: datetime
    member_count: int  # active members that have joined (owners, admins, members)
    invited_count: int  # invited, not yet accepted

    @property
    def key(self) -> str:
        return f"{self.name}@{self.domain}"


@dataclass(frozen=True)
class MemberRow:
    """A ``room_members`` row, banned ones included."""

    member: str
    role: Role
    state: str  # active or banned
    invited_by: str | None
    created_at: datetime
    updated_at: datetime


_SUMMARY = """r.id, r.name, r.domain, r.owner, r.private, r.topic, r.member_limit,
    r.history_length, r.created_at,
    (SELECT count(*) FROM room_members m WHERE m.room_id = r.id AND m.state = 'active'
        AND m.role <> 'invited')::int AS member_count,
    (SELECT count(*) FROM room_members m WHERE m.room_id = r.id AND m.state = 'active'
        AND m.role = 'invited')::int AS invited_count"""


def _room_filter(
    domain: str, name: str | None, member: str | None, private: bool | None
) -> tuple[str, list[object]]:
    clauses = ["r.domain = $1"]
    args: list[object] = [domain.lower()]
    if name is not None:
        args.append(name.lower())
        clauses.append(f"strpos(r.name, ${len(args)}) > 0")
    if member is not None:
        args.append(member)
        clauses.append(
            f"""EXISTS (SELECT 1 FROM room_members m WHERE m.room_id = r.id
                AND lower(m.member) = lower(${len(args)}) AND m.state = 'active')"""
        )
    if private is not None:
        args.append(private)
        clauses.append(f"r.private = ${len(args)}")
    return " AND ".join(clauses), args


async def count_rooms(
    conn: Executor,
    domain: str,
    *,
    name: str | None = None,
    member: str | None = None,
    private: bool | None = None,
) -> int:
    """Rooms of ``domain`` matching the filters (``name``: substring of the name;
    ``member``: an active member, invited included)."""
    where, args = _room_filter(domain, name, member, private)
    return int(await conn.fetchval(f"SELECT count(*) FROM rooms r WHERE {where}", *args))


async def list_rooms(
    conn: Executor,
    domain: str,
    *,
    name: str | None = None,
    member: str | None = None,
    private: bool | None = None,
    limit: int,
    offset: int,
) -> list[RoomSummary]:
    """One page of the rooms :func:`count_rooms` counts, by name."""
    where, args = _room_filter(domain, name, member, private)
    rows = await conn.fetch(
        f"""SELECT {_SUMMARY} FROM rooms r WHERE {where}
            ORDER BY r.name LIMIT ${len(args) + 1} OFFSET ${len(args) + 2}""",
        *args,
        limit,
        offset,
    )
    return [RoomSummary(**dict(row)) for row in rows]


async def get_room_summary(conn: Executor, key: str) -> RoomSummary | None:
    name, domain = split_key(key)
    row = await conn.fetchrow(
        f"SELECT {_SUMMARY} FROM rooms r WHERE r.name = $1 AND r.domain = $2", name, domain
    )
    return None if row is None else RoomSummary(**dict(row))


async def set_options(
    conn: Executor, room_id: int, *, private: bool | None = None, topic: str | None = None
) -> None:
    """Change the room's options; ``None`` leaves one as it is (use :func:`clear_topic`)."""
    await conn.execute(
        """UPDATE rooms SET private = coalesce($2, private), topic = coalesce($3, topic)
           WHERE id = $1""",
        room_id,
        private,
        topic,
    )


async def clear_topic(conn: Executor, room_id: int) -> None:
    await conn.execute("UPDATE rooms SET topic = NULL WHERE id = $1", room_id)


#: The room options that may be NULL (the setting's default applies), see set_limits.
LIMITS = ("member_limit", "history_length")


async def set_limits(conn: Executor, room_id: int, limits: Mapping[str, int | None]) -> None:
    """Set the room's member limit and/or history length (keys of :data:`LIMITS`); a value
    of None gives the room the default of the setting again."""
    for column, value in limits.items():
        if column not in LIMITS:
            raise ValueError(f"not a room limit: {column}")
        await conn.execute(f"UPDATE rooms SET {column} = $2 WHERE id = $1", room_id, value)


async def member_rows(conn: Executor, room_id: int) -> list[MemberRow]:
    """Every row of the room's members (banned included), in the order they were added."""
    rows = await conn.fetch(
        """SELECT member, role, state, invited_by, created_at, updated_at FROM room_members
           WHERE room_id = $1 ORDER BY id""",
        room_id,
    )
    return [
        MemberRow(
            member=r["member"],
            role=Role(r["role"]),
            state=r["state"],
            invited_by=r["invited_by"],
            created_at=r["created_at"],
            updated_at=r["updated_at"],
        )
        for r in rows
    ]


async def remove_memberships(conn: Executor, aor: str) -> int:
    """Remove ``aor`` from every room (a user being deleted), bans included; how many rows."""
    status = await conn.execute("DELETE FROM room_members WHERE lower(member) = lower($1)", aor)
    return int(status.split()[-1])


async def history_count(conn: Executor, room_id: int, keep: int) -> int:
    """How many of the room's kept messages count as its history: at most the newest
    ``keep`` (IMSTACK_IMC_HISTORY; rows beyond it are ignored, as replay ignores them)."""
    count = await conn.fetchval("SELECT count(*) FROM room_messages WHERE room_id = $1", room_id)
    return min(int(count), max(keep, 0))


async def history_page(
    conn: Executor, room_id: int, *, keep: int, limit: int, offset: int
) -> list[HistoryMessage]:
    """One page of the room's history counted from the newest message (``offset`` newest
    skipped, then ``limit``), within the newest ``keep``; oldest first."""
    limit = max(0, min(limit, keep - offset))
    if limit == 0:
        return []
    rows = await conn.fetch(
        """SELECT id, sender, content_type, body, sent_at FROM (
               SELECT * FROM room_messages WHERE room_id = $1 ORDER BY id DESC
               LIMIT $2 OFFSET $3
           ) page ORDER BY id""",
        room_id,
        limit,
        offset,
    )
    return [
        HistoryMessage(
            id=r["id"],
            sender=r["sender"],
            content_type=r["content_type"],
            body=bytes(r["body"]),
            sent_at=r["sent_at"],
        )
        for r in rows
    ]
