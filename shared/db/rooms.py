"""The ``rooms``, ``room_members`` and ``room_inbox`` tables: chat rooms and their traffic.

The contract (keys, roles, the inbox claim) is documented in ``migrations/0006_rooms.sql``.
The relay calls :func:`enqueue`; the imc worker claims with :func:`claim_next`, reads a room
with :func:`get_room` after :func:`lock_room`, and changes it with the other functions, all
in the claiming transaction. The API (rooms created there behave like ``#create``) uses the
same functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from shared.db.listen import notify
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
    """Queue a MESSAGE for ``room`` and wake imc (NOTIFY on commit); the row's id."""
    new_id = await conn.fetchval(
        """INSERT INTO room_inbox (room, sender, sender_display, call_id, content_type, body)
           VALUES ($1, $2, $3, $4, $5, $6) RETURNING id""",
        room.lower(),
        sender,
        sender_display,
        call_id,
        content_type,
        body,
    )
    await notify(conn, INBOX_CHANNEL, "queued", new_id)
    return int(new_id)


async def claim_next(conn: Executor) -> InboxMessage | None:
    """Lock the oldest queued MESSAGE of some room (inside a transaction).

    Only the head of each room is a candidate, and a head another transaction holds is
    skipped — so that room's later messages wait for it (order) and no worker handles a
    room another worker is at."""
    row = await conn.fetchrow(
        """SELECT * FROM room_inbox
           WHERE id IN (SELECT min(id) FROM room_inbox GROUP BY room)
           ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED"""
    )
    if row is None:
        return None
    data = dict(row)
    data["body"] = bytes(data["body"])
    return InboxMessage(**data)


async def delete_inbox(conn: Executor, message_id: int) -> None:
    await conn.execute("DELETE FROM room_inbox WHERE id = $1", message_id)


async def inbox_count(conn: Executor) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM room_inbox"))


async def lock_room(conn: Executor, key: str) -> None:
    """Serialise changes to room ``key`` (name@domain) until the transaction ends; taken
    before reading it, also when it does not exist yet (two ``#create`` at once)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))", key.lower())


async def get_room(conn: Executor, key: str) -> Room | None:
    name, domain = split_key(key)
    row = await conn.fetchrow("SELECT * FROM rooms WHERE name = $1 AND domain = $2", name, domain)
    if row is None:
        return None
    # IMC-M3 order: the first member, then the others newest first.
    rows = await conn.fetch(
        """SELECT member, role, state, invited_by FROM room_members WHERE room_id = $1
           ORDER BY id = (SELECT min(id) FROM room_members WHERE room_id = $1) DESC, id DESC""",
        row["id"],
    )
    members = tuple(
        Member(r["member"], Role(r["role"]), r["invited_by"])
        for r in rows
        if r["state"] == "active"
    )
    banned = frozenset(r["member"].lower() for r in rows if r["state"] == "banned")
    return Room(
        id=row["id"],
        name=row["name"],
        domain=row["domain"],
        owner=row["owner"],
        private=row["private"],
        topic=row["topic"],
        members=members,
        banned=banned,
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
