"""Sending a message from the control API through the bundle's normal routing.

:func:`send` decides as the relay's router does for a MESSAGE: to a room (the conference
domain) it is a committed ``room_inbox`` row for imc, as :func:`handover.deliver_to_room`
makes; to a registered user it is an ``outbound_messages`` row the relay sends at once —
with source :data:`STORE_ON_FAILURE_SOURCE`, so a failed delivery is stored offline by the
relay in the transaction that records the outcome; to an unregistered user it is an
``offline_messages`` row, as :func:`handover.store_offline` makes, delivered by msilo on
registration. A registered user who still has stored messages due for delivery gets the
new one stored behind them (msilo is told at once), so it cannot overtake them — as the
relay does. With a send time in the future the message is stored with ``not_before``
(scheduled): msilo delivers it once it is due and the recipient is registered.

A send is one round trip to the database and one transaction (its own, or the caller's
when the connection is in one): the lookups, the checks, the row and its NOTIFY are one
pipelined batch (see ``_SEND_TO_USER``), not a conversation.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from services.api.room_ops import RoomNotFound, room_key
from services.imc.worker import config_from
from services.relay.sip.handover import NO_NOTICE_TYPES, TRANSIENT_TYPES
from shared.config import Settings
from shared.db import rooms as rooms_db
from shared.db import users as users_db
from shared.db.offline import SCHEDULED_CHANNEL, STORED_CHANNEL, purge_received_before
from shared.db.outbound import QUEUED_CHANNEL, STORE_ON_FAILURE_SOURCE
from shared.db.types import Connection, Executor

#: Rows deleted per transaction by :func:`purge_before` (short transactions, no long lock).
PURGE_BATCH = 1000


class SendError(Exception):
    """The message cannot be sent as asked; the text is for the operator."""


class InvalidSend(SendError):
    """A recipient, sender or content the routing does not accept."""


class UserDisabled(SendError):
    pass


class MailboxFull(SendError):
    """The recipient has IMSTACK_MSILO_MAX_MESSAGES stored already."""


class Outcome(StrEnum):
    QUEUED = "queued"
    STORED = "stored"
    SCHEDULED = "scheduled"
    ROOM = "room"


@dataclass(frozen=True)
class Sent:
    outcome: Outcome
    recipient: str  # user@domain, or the room's name@domain
    sender: str  # the From URI
    id: int  # the outbound, offline or room_inbox row


def system_address(settings: Settings) -> str:
    """The From of messages the server sends itself: msilo's notice address when set."""
    return settings.msilo_notice_from or f"sip:{settings.domain}"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _sender_uri(settings: Settings, text: str) -> str:
    """``sip:user@host`` for a sender as given (a bare name is a user of our domain)."""
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        scheme, rest = "sip", text
    if "@" not in rest:
        rest = f"{rest}@{settings.domain}"
    return f"{scheme.lower()}:{rest}"


def _local_address(settings: Settings, text: str) -> users_db.Address:
    address = users_db.parse_address(text, settings.domain)
    if address.domain != settings.domain:
        raise InvalidSend(f"{address} is not a user of {settings.domain}")
    return address


# One send is one round trip to the database. To a user: this statement, executed twice in
# one pipelined batch (``fetchmany``: Bind/Execute twice, then one Sync), which PostgreSQL
# runs as one implicit transaction. Execution 0 takes the recipient's store lock, the one
# ``offline.lock_recipient`` takes (id order = commit order, exact quota, shared with the
# relay's and imc's stores); execution 1 starts after it holds the lock, with a fresh
# snapshot (READ COMMITTED), and routes: the recipient's row, a binding, the drain check
# (``offline.drain_pending``), the quota count (``offline.store_message``), then the row
# (``outbound.queue_message`` or ``offline.store_message``) and the NOTIFYs they send.
# Keep it in step with those functions (tests/api/test_api_send_sql.py compares them).
#
# $1 execution (0: lock, 1: route and write), $2 user name, $3 domain, $4 user@domain,
# $5 From URI, $6 From display, $7 content type, $8 body, $9 transient (never stored),
# $10 not_before (scheduled), $11 lifetime (s), $12 quota (0: none), $13 Call-ID,
# $14 outbound source, $15/$16/$17 the queued/stored/scheduled NOTIFY channels.
_SEND_TO_USER = """
WITH arg AS MATERIALIZED (
    -- The switches as a row the planner cannot fold into a plan for one send: PostgreSQL
    -- keeps one generic plan for this statement instead of planning it at each execution.
    SELECT $1::int AS step, $9::boolean AS transient, $10::timestamptz AS not_before,
           $12::int AS quota, $4::text AS aor, 9223372036854775807::bigint AS last_id
),
locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(hashtextextended($4::text, 5)) FROM arg WHERE arg.step = 0
),
recipient AS MATERIALIZED (
    SELECT u.disabled,
           EXISTS (SELECT 1 FROM locations l
                   WHERE l.aor = $4 AND l.expires_at > now()) AS registered
    FROM arg, users u
    WHERE arg.step = 1 AND u.username = $2::text AND u.domain = $3::text
),
-- The recipient's stored messages are read through the (recipient, id) index, whatever
-- the statistics say (a generic plan must not scan the whole table for a recipient with no
-- rows because another one has thousands): "recipient = aor" is spelt as a range of
-- (recipient, id) rows ordered by (recipient, id), which only that index serves.
route AS MATERIALIZED (
    SELECT r.registered, CASE
        WHEN r.disabled THEN 'disabled'
        -- offline.drain_pending: stored messages due, and none waiting for a retry
        WHEN r.registered AND arg.not_before IS NULL AND (arg.transient
             OR (SELECT m.id FROM offline_messages m
                 WHERE (m.recipient, m.id) BETWEEN (arg.aor, 0) AND (arg.aor, arg.last_id)
                   AND m.expires_at > now()
                   AND (m.not_before IS NULL OR m.not_before <= now())
                 ORDER BY m.recipient, m.id LIMIT 1) IS NULL
             OR (SELECT m.id FROM offline_messages m
                 WHERE (m.recipient, m.id) BETWEEN (arg.aor, 0) AND (arg.aor, arg.last_id)
                   AND m.expires_at > now() AND m.retry_at > now()
                 ORDER BY m.recipient, m.id LIMIT 1) IS NOT NULL)
            THEN 'queued'
        WHEN arg.transient THEN 'transient'
        -- offline.store_message: the quota counts unexpired messages (enough to count
        -- the first quota of them)
        WHEN arg.quota > 0 AND (SELECT count(*) FROM (
                 SELECT 1 FROM offline_messages m
                 WHERE (m.recipient, m.id) BETWEEN (arg.aor, 0) AND (arg.aor, arg.last_id)
                   AND m.expires_at > now()
                 ORDER BY m.recipient, m.id LIMIT arg.quota) AS live) >= arg.quota
            THEN 'full'
        WHEN arg.not_before IS NOT NULL THEN 'scheduled'
        ELSE 'stored'
    END AS outcome
    FROM arg, recipient r
),
queued AS (
    INSERT INTO outbound_messages (from_uri, from_display, to_aor, content_type, body,
                                   extra_headers, source)
    SELECT $5::text, $6::text, $4, $7::text, $8::bytea, '[]'::jsonb, $14::text
    FROM route WHERE route.outcome = 'queued'
    RETURNING id
),
stored AS (
    INSERT INTO offline_messages (recipient, sender_uri, sender_display, call_id,
                                  received_at, expires_at, content_type, body,
                                  extra_headers, not_before)
    SELECT $4, $5, $6, $13::text, now(), now() + make_interval(secs => $11::float8), $7, $8,
           '[]'::jsonb, arg.not_before
    FROM arg, route WHERE route.outcome IN ('stored', 'scheduled')
    RETURNING id
),
notified AS (
    SELECT pg_notify($15::text, json_build_object('type', 'queued', 'id', id)::text)
    FROM queued
    UNION ALL
    SELECT pg_notify($16::text, json_build_object('type', 'stored', 'id', $4)::text)
    FROM stored, route WHERE route.outcome = 'stored' AND route.registered
    UNION ALL
    SELECT pg_notify($17::text, json_build_object('type', 'scheduled', 'id', $4)::text)
    FROM stored, route WHERE route.outcome = 'scheduled'
)
SELECT (SELECT outcome FROM route) AS outcome,
       (SELECT id FROM queued) AS outbound_id,
       (SELECT id FROM stored) AS offline_id,
       (SELECT count(*) FROM notified) AS notified,
       (SELECT count(*) FROM locked) AS locked
"""

# To a room: one statement (its own transaction): the sender's row, the room's, the
# ``room_inbox`` row and its NOTIFY, as ``rooms.enqueue`` makes them.
# $1/$2 the sender's name and domain, $3/$4 the room's, $5 the room (name@domain),
# $6 the sender (user@domain), $7 display name, $8 Call-ID, $9 content type, $10 body,
# $11 the room inbox NOTIFY channel.
_SEND_TO_ROOM = """
WITH sender AS (SELECT 1 FROM users WHERE username = $1::text AND domain = $2::text),
room AS (SELECT 1 FROM rooms WHERE name = $3::text AND domain = $4::text),
inbox AS (
    INSERT INTO room_inbox (room, sender, sender_display, call_id, content_type, body)
    SELECT $5::text, $6::text, $7::text, $8::text, $9::text, $10::bytea FROM sender, room
    RETURNING id
),
notified AS (
    SELECT pg_notify($11::text, json_build_object('type', 'queued', 'id', id)::text)
    FROM inbox
)
SELECT EXISTS (SELECT 1 FROM sender) AS sender_found,
       EXISTS (SELECT 1 FROM room) AS room_found,
       (SELECT id FROM inbox) AS inbox_id,
       (SELECT count(*) FROM notified) AS notified
"""


async def send(
    conn: Executor,
    settings: Settings,
    *,
    to: str,
    sender: str | None,
    sender_display: str | None,
    content_type: str,
    body: bytes,
    deliver_at: datetime | None = None,
) -> Sent:
    """Route one message (see the module); what happened. ``deliver_at`` (timezone-aware)
    schedules it; a time already past means now. Raises :class:`SendError`,
    ``UserNotFound`` or ``RoomNotFound`` (having changed nothing).

    One round trip, one transaction: its own, or the caller's when ``conn`` is in one."""
    if not body:
        raise InvalidSend("the body is empty")
    delay = timedelta(0)
    if deliver_at is not None:
        if deliver_at.tzinfo is None:
            raise InvalidSend("deliver_at needs a time zone (e.g. 2030-01-01T09:00:00Z)")
        delay = max(deliver_at - datetime.now(UTC), timedelta(0))
    target = to.strip()
    if target.lower().startswith(("sip:", "sips:")):
        target = target.split(":", 1)[1]
    _, at, domain = target.rpartition("@")
    if at and domain.lower() == settings.conference_domain:
        if delay:
            raise InvalidSend("scheduled delivery to a room is not supported")
        return await _to_room(conn, settings, target, sender, sender_display, content_type, body)
    try:
        address = _local_address(settings, target)
    except users_db.InvalidUser as exc:
        raise InvalidSend(f"invalid recipient {to!r}: {exc}") from None
    aor = str(address)
    from_uri = _sender_uri(settings, sender) if sender is not None else system_address(settings)
    transient = _media_type(content_type) in TRANSIENT_TYPES
    if transient and delay:
        raise InvalidSend(f"{content_type} is only sent at once: it cannot be scheduled")
    args = [
        0,
        address.username,
        address.domain,
        aor,
        from_uri,
        sender_display,
        content_type,
        body,
        transient,
        deliver_at if delay else None,
        # A scheduled message lives IMSTACK_MSILO_EXPIRE from its send time.
        float(settings.msilo_expire + int(delay.total_seconds())),
        settings.msilo_max_messages,
        f"api-{secrets.token_hex(12)}",
        # Typing indicators only make sense at once: never stored (as the relay does).
        None if transient else STORE_ON_FAILURE_SOURCE,
        QUEUED_CHANNEL,
        STORED_CHANNEL,
        SCHEDULED_CHANNEL,
    ]
    _, row = await conn.fetchmany(_SEND_TO_USER, [args, [1, *args[1:]]])
    outcome = row["outcome"]
    if outcome is None:
        raise users_db.UserNotFound(f"no such user: {aor}")
    if outcome == "disabled":
        raise UserDisabled(f"{aor} is disabled")
    if outcome == "transient":
        raise InvalidSend(f"{aor} is not registered, and {content_type} is never stored")
    if outcome == "full":
        raise MailboxFull(
            f"the offline mailbox of {aor} is full ({settings.msilo_max_messages} messages)"
        )
    if outcome == "queued":
        return Sent(Outcome.QUEUED, aor, from_uri, int(row["outbound_id"]))
    return Sent(Outcome(outcome), aor, from_uri, int(row["offline_id"]))


async def _to_room(
    conn: Executor,
    settings: Settings,
    target: str,
    sender: str | None,
    sender_display: str | None,
    content_type: str,
    body: bytes,
) -> Sent:
    """As the relay hands a room MESSAGE to imc: a local user's, queued for the room worker
    (which checks membership and answers with a notice, as for a MESSAGE from a client)."""
    key = room_key(config_from(settings), target)
    if sender is None:
        raise InvalidSend("a message to a room needs a sender: a user of the server's domain")
    if _media_type(content_type) in NO_NOTICE_TYPES:
        raise InvalidSend(f"{content_type} is not chat: rooms take no {content_type}")
    try:
        address = _local_address(settings, sender)
    except users_db.InvalidUser as exc:
        raise InvalidSend(f"invalid sender {sender!r}: {exc}") from None
    name, domain = rooms_db.split_key(key)
    row = await conn.fetchrow(
        _SEND_TO_ROOM,
        address.username,
        address.domain,
        name,
        domain,
        key,
        str(address),
        sender_display,
        f"api-{secrets.token_hex(12)}",
        content_type,
        body,
        rooms_db.INBOX_CHANNEL,
    )
    assert row is not None
    if not row["sender_found"]:
        raise users_db.UserNotFound(f"no such user: {address}")
    if not row["room_found"]:
        raise RoomNotFound(f"no such room: {key}")
    return Sent(Outcome.ROOM, key, f"sip:{address}", int(row["inbox_id"]))


async def purge_before(
    conn: Connection, before: datetime, *, batch: int | None = None
) -> tuple[int, int]:
    """Delete every stored message received before ``before``, for all users, ``batch`` rows
    (default :data:`PURGE_BATCH`) per transaction; (how many, how many transactions)."""
    batch = batch or PURGE_BATCH
    purged = batches = 0
    while True:
        async with conn.transaction():
            done = await purge_received_before(conn, before, limit=batch)
        purged += done
        batches += 1
        if done < batch:
            return purged, batches
