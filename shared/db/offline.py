"""The ``offline_messages`` table: MESSAGEs stored for users who were not reachable.

The contract (ordering key, states) is documented in ``migrations/0005_offline_messages.sql``;
scheduled messages (``not_before``) and delivery windows in
``migrations/0009_scheduled_messages.sql``. The relay calls :func:`store_message`; the msilo
worker, holding :func:`lock_delivery` for a recipient, reads :func:`in_flight`, applies
outcomes (:func:`delete_messages`, :func:`restore`) and queues the next window
(:func:`next_window_heads`, then :func:`queue_window`, which copies the bodies into
``outbound_messages`` inside the database), one short transaction per step; delivered
outcomes are applied without the lock by :func:`apply_delivered`, one statement per batch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from shared.db.listen import notify
from shared.db.types import Executor

#: Header on every MESSAGE the bundle generates itself (msilo deliveries and notices; room
#: fan-out should carry it too). A request carrying it never causes an offline notice, so a
#: notice can never answer a notice (Kamailio issue #61: a notice/room loop).
GENERATED_HEADER = "X-Imstack-Generated"
#: ``outbound_messages.source`` of msilo's deliveries and of its notices.
DELIVERY_SOURCE = "msilo"
NOTICE_SOURCE = "msilo-notice"
#: NOTIFY channel told when a scheduled message is stored (payload id: the recipient), so
#: msilo wakes up at its send time (or delivers it at once when that has passed).
SCHEDULED_CHANNEL = "offline_scheduled"
#: NOTIFY channel told (payload id: the recipient) when a message was stored for a user who
#: is registered, behind their stored messages still being delivered: msilo takes it next.
STORED_CHANNEL = "offline_stored"


def order_key(recipient: str) -> str:
    """The ``outbound_messages.order_key`` of msilo's deliveries to ``recipient``."""
    return f"{DELIVERY_SOURCE}:{recipient}"


class OfflineState(StrEnum):
    STORED = "stored"  # waiting for delivery (or for retry_at after a failure)
    SENDING = "sending"  # queued in outbound_messages (outbound_id), outcome not yet applied


@dataclass(frozen=True)
class OfflineMessage:
    id: int
    recipient: str
    sender_uri: str
    sender_display: str | None
    call_id: str
    received_at: datetime
    expires_at: datetime
    content_type: str
    body: bytes
    extra_headers: tuple[tuple[str, str], ...]
    state: OfflineState
    attempts: int
    outbound_id: int | None
    last_status: int | None
    last_reason: str | None
    last_attempt_at: datetime | None
    retry_at: datetime | None
    not_before: datetime | None = None  # a scheduled message: not delivered before


@dataclass(frozen=True)
class InFlight:
    """One of a recipient's messages queued for delivery, with its outbound row's state."""

    id: int
    outbound_id: int | None
    outbound_status: str | None  # None: the outbound row is gone
    last_status: int | None
    last_reason: str | None


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    data = json.loads(value) if isinstance(value, str) else value
    if not isinstance(data, list):
        return ()
    return tuple(
        (str(item[0]), str(item[1]))
        for item in data
        if isinstance(item, list | tuple) and len(item) == 2
    )


_COLUMNS = """id, recipient, sender_uri, sender_display, call_id, received_at, expires_at,
    content_type, body, extra_headers, state, attempts, outbound_id, last_status, last_reason,
    last_attempt_at, retry_at, not_before"""


def _message(row: asyncpg.Record) -> OfflineMessage:
    data = {name: row[name] for name in OfflineMessage.__dataclass_fields__}
    data["extra_headers"] = _headers(data["extra_headers"])
    data["state"] = OfflineState(data["state"])
    data["body"] = bytes(data["body"])
    return OfflineMessage(**data)


_STORED_COLUMNS = """(recipient, sender_uri, sender_display, call_id, received_at, expires_at,
    content_type, body, extra_headers, not_before)"""


async def lock_recipient(conn: Executor, recipient: str) -> None:
    """Serialise stores for ``recipient`` until the end of the current transaction (exact
    quota; id order = commit order)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 5))", recipient)


def _stored_args(
    recipient: str,
    sender_uri: str,
    sender_display: str | None,
    call_id: str,
    lifetime: int,
    content_type: str,
    body: bytes,
    extra_headers: list[tuple[str, str]],
    not_before: datetime | None,
) -> list[object]:
    """$1..$9 of the store statements (the ``_STORED_COLUMNS`` values)."""
    return [
        recipient,
        sender_uri,
        sender_display,
        call_id,
        float(lifetime),
        content_type,
        body,
        json.dumps([list(pair) for pair in extra_headers]),
        not_before,
    ]


async def store_message(
    conn: Executor,
    *,
    recipient: str,
    sender_uri: str,
    sender_display: str | None,
    call_id: str,
    content_type: str,
    body: bytes,
    extra_headers: list[tuple[str, str]],
    lifetime: int,
    max_messages: int = 0,
    not_before: datetime | None = None,
) -> int | None:
    """Store a message (call inside a transaction); its id, or None when ``recipient``
    already has ``max_messages`` stored (0: no limit).

    ``not_before`` (timezone-aware) schedules it: msilo delivers it once that time has come
    and the recipient is registered (at once if it is already past), in storage order
    with the other due messages; ``lifetime`` still counts from now.
    """
    # The recipient's lock is taken before the row gets its id and held until the commit
    # (ids in commit order); the statements hold it as briefly as they can: with a quota,
    # the lock, then one statement counting (in a snapshot taken under the lock) and
    # inserting; without, one statement that locks and inserts.
    values = """SELECT $1::text, $2::text, $3::text, $4::text, now(),
                       now() + make_interval(secs => $5::float8), $6::text, $7::bytea,
                       $8::jsonb, $9::timestamptz"""
    args = _stored_args(
        recipient,
        sender_uri,
        sender_display,
        call_id,
        lifetime,
        content_type,
        body,
        extra_headers,
        not_before,
    )
    if max_messages > 0:
        await lock_recipient(conn, recipient)
        new_id = await conn.fetchval(
            f"""INSERT INTO offline_messages {_STORED_COLUMNS}
                {values}
                WHERE (SELECT count(*) FROM offline_messages
                       WHERE recipient = $1 AND expires_at > now()) < $10
                RETURNING id""",
            *args,
            max_messages,
        )
        if new_id is None:
            return None
    else:
        new_id = await conn.fetchval(
            f"""WITH locked AS (SELECT pg_advisory_xact_lock(hashtextextended($1, 5)))
                INSERT INTO offline_messages {_STORED_COLUMNS}
                {values} FROM locked
                RETURNING id""",
            *args,
        )
    if not_before is not None:
        await notify(conn, SCHEDULED_CHANNEL, "scheduled", recipient)
    return int(new_id)


# ``store_message`` in ONE round trip, for a caller outside any transaction (the relay's
# store of a MESSAGE for an offline user, the common case): this statement executed twice
# in one pipelined batch (``fetchmany``: Bind/Execute twice, one Sync), which PostgreSQL
# runs as one implicit transaction. Execution 0 takes the recipient's lock (as
# ``lock_recipient``); execution 1 starts once it is held, with a fresh snapshot (READ
# COMMITTED), counts against the quota and inserts. The lock is held until the implicit
# commit: ids in commit order and an exact quota, as with ``store_message``. The stored
# messages are read as a (recipient, id) range, which only the (recipient, id) index
# serves: one generic plan, whatever one recipient with thousands of rows does to the
# statistics (the API's send does the same).
# $1 recipient .. $9 not_before as in store_message, $10 quota (0: none), $11 execution.
_STORE_ONCE = f"""
WITH arg AS MATERIALIZED (
    SELECT $11::int AS step, $1::text AS aor, $10::int AS quota,
           9223372036854775807::bigint AS last_id
),
locked AS MATERIALIZED (
    SELECT pg_advisory_xact_lock(hashtextextended(arg.aor, 5)) FROM arg WHERE arg.step = 0
),
stored AS (
    INSERT INTO offline_messages {_STORED_COLUMNS}
    SELECT $1::text, $2::text, $3::text, $4::text, now(),
           now() + make_interval(secs => $5::float8), $6::text, $7::bytea, $8::jsonb,
           $9::timestamptz
    FROM arg
    WHERE arg.step = 1 AND (arg.quota <= 0 OR (SELECT count(*) FROM (
              SELECT 1 FROM offline_messages m
              WHERE (m.recipient, m.id) BETWEEN (arg.aor, 0) AND (arg.aor, arg.last_id)
                AND m.expires_at > now()
              ORDER BY m.recipient, m.id LIMIT arg.quota) AS live) < arg.quota)
    RETURNING id
)
SELECT (SELECT id FROM stored) AS id, (SELECT count(*) FROM locked) AS locked
"""


async def store_message_once(
    conn: Executor,
    *,
    recipient: str,
    sender_uri: str,
    sender_display: str | None,
    call_id: str,
    content_type: str,
    body: bytes,
    extra_headers: list[tuple[str, str]],
    lifetime: int,
    max_messages: int = 0,
) -> int | None:
    """:func:`store_message` as its own transaction, in one round trip (``conn`` must not be
    in a transaction: the store commits when this returns); its id, or None when the
    mailbox is full."""
    args = _stored_args(
        recipient,
        sender_uri,
        sender_display,
        call_id,
        lifetime,
        content_type,
        body,
        extra_headers,
        None,
    )
    # Execution 0 only locks: it needs the recipient alone (no body sent twice).
    lock_args = [recipient, *[None] * (len(args) - 1), max_messages, 0]
    _, row = await conn.fetchmany(_STORE_ONCE, [lock_args, [*args, max_messages, 1]])
    new_id = row["id"]
    return None if new_id is None else int(new_id)


@dataclass(frozen=True)
class NewMessage:
    """One message to store (the values :func:`store_message` takes)."""

    recipient: str
    sender_uri: str
    sender_display: str | None
    call_id: str
    content_type: str
    body: bytes
    extra_headers: list[tuple[str, str]]
    lifetime: int


# ``store_message_once`` for several messages at once: ONE statement executed twice in one
# pipelined batch (one round trip, one implicit transaction, one commit), as _STORE_ONCE.
# Execution 0 takes the lock of every recipient of the batch (in the order of their lock
# keys: two batches never wait for each other crosswise); execution 1, with a fresh
# snapshot taken under the locks, counts each recipient's live messages once and inserts
# the messages in the order given, a recipient's first (quota - live) ones only (0: no
# quota). The ids are drawn in that order before the insert (a recipient's messages get
# increasing ids in the order given, the storage and delivery order). Execution 1's row:
# the positions (1-based) and the ids of the messages stored; a message missing was
# refused (mailbox full).
# $1..$8 the arrays of recipient .. lifetime, $9 quota, $10 execution.
_STORE_MANY = """
WITH arg AS MATERIALIZED (
    SELECT $10::int AS step, $9::int AS quota, 9223372036854775807::bigint AS last_id
),
input AS MATERIALIZED (
    SELECT i.* FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                           $6::bytea[], $7::text[], $8::float8[])
        WITH ORDINALITY AS i(recipient, sender_uri, sender_display, call_id, content_type,
                             body, extra_headers, lifetime, n)
),
locked AS MATERIALIZED (
    SELECT count(pg_advisory_xact_lock(k.key)) AS n FROM (
        SELECT DISTINCT hashtextextended(input.recipient, 5) AS key
        FROM input, arg WHERE arg.step = 0 ORDER BY 1) AS k
),
room AS MATERIALIZED (
    SELECT r.recipient, arg.quota - (SELECT count(*) FROM (
               SELECT 1 FROM offline_messages m
               WHERE (m.recipient, m.id) BETWEEN (r.recipient, 0) AND (r.recipient, arg.last_id)
                 AND m.expires_at > now()
               ORDER BY m.recipient, m.id LIMIT arg.quota) AS live) AS free
    FROM (SELECT DISTINCT recipient FROM input) AS r, arg
    WHERE arg.step = 1 AND arg.quota > 0
),
accepted AS MATERIALIZED (
    SELECT a.n, nextval(pg_get_serial_sequence('offline_messages', 'id')) AS id
    FROM (SELECT ranked.n FROM (
              SELECT input.n, input.recipient,
                     row_number() OVER (PARTITION BY input.recipient ORDER BY input.n) AS rank
              FROM input, arg WHERE arg.step = 1) AS ranked
          LEFT JOIN room USING (recipient)
          WHERE room.free IS NULL OR ranked.rank <= room.free
          ORDER BY ranked.n) AS a
),
stored AS (
    INSERT INTO offline_messages (id, recipient, sender_uri, sender_display, call_id,
        received_at, expires_at, content_type, body, extra_headers)
    OVERRIDING SYSTEM VALUE
    SELECT a.id, i.recipient, i.sender_uri, i.sender_display, i.call_id, now(),
           now() + make_interval(secs => i.lifetime), i.content_type, i.body,
           i.extra_headers::jsonb
    FROM accepted a JOIN input i USING (n)
    ORDER BY a.id
)
SELECT (SELECT n FROM locked) AS locked,
       (SELECT array_agg(a.n ORDER BY a.n) FROM accepted a) AS positions,
       (SELECT array_agg(a.id ORDER BY a.n) FROM accepted a) AS ids
"""


async def store_messages_once(
    conn: Executor, messages: list[NewMessage], *, max_messages: int = 0
) -> list[int | None]:
    """:func:`store_message_once` for each of ``messages``, in ONE round trip and ONE
    transaction (``conn`` must not be in one: they are committed when this returns, or
    none is); per message, in the same order, its id or None (its recipient's mailbox is
    full). A recipient's messages are stored in the order given."""
    columns: list[list[object]] = [[] for _ in range(8)]
    for m in messages:
        for column, value in zip(
            columns,
            (
                m.recipient,
                m.sender_uri,
                m.sender_display,
                m.call_id,
                m.content_type,
                m.body,
                json.dumps([list(pair) for pair in m.extra_headers]),
                float(m.lifetime),
            ),
            strict=True,
        ):
            column.append(value)
    # Execution 0 only locks: it needs the recipients alone (no body sent twice).
    lock_args = [columns[0], *[[] for _ in columns[1:]], max_messages, 0]
    _, row = await conn.fetchmany(_STORE_MANY, [lock_args, [*columns, max_messages, 1]])
    ids: list[int | None] = [None] * len(messages)
    for position, new_id in zip(row["positions"] or (), row["ids"] or (), strict=True):
        ids[position - 1] = int(new_id)
    return ids


async def drain_pending(conn: Executor, recipient: str) -> bool:
    """True when ``recipient`` has stored messages due for delivery (a drain in progress)
    that a message delivered directly now would overtake — but not while one of them waits
    for its retry time after the client refused it (a message the client keeps refusing
    must not hold up live chat)."""
    pending = await conn.fetchval(
        """SELECT EXISTS (SELECT 1 FROM offline_messages
                          WHERE recipient = $1 AND expires_at > now()
                            AND (not_before IS NULL OR not_before <= now()))
                  AND NOT EXISTS (SELECT 1 FROM offline_messages
                                  WHERE recipient = $1 AND expires_at > now()
                                    AND retry_at > now())""",
        recipient,
    )
    return bool(pending)


async def get_message(conn: Executor, message_id: int) -> OfflineMessage | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM offline_messages WHERE id = $1", message_id)
    return None if row is None else _message(row)


async def list_messages(conn: Executor, recipient: str) -> list[OfflineMessage]:
    """Everything stored for ``recipient`` (expired rows not yet purged included), in order."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM offline_messages WHERE recipient = $1 ORDER BY id", recipient
    )
    return [_message(row) for row in rows]


async def count_messages(conn: Executor, recipient: str) -> int:
    count = await conn.fetchval(
        "SELECT count(*) FROM offline_messages WHERE recipient = $1", recipient
    )
    return int(count)


async def lock_delivery(conn: Executor, recipient: str) -> None:
    """Serialise msilo's delivery steps for ``recipient`` (replicas, concurrent wake-ups)
    until the end of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 6))", recipient)


async def in_flight(conn: Executor, recipient: str) -> list[InFlight]:
    """``recipient``'s messages queued for delivery, in order, with their outbound state."""
    rows = await conn.fetch(
        """SELECT m.id, m.outbound_id, o.status, o.last_status, o.last_reason
           FROM offline_messages m LEFT JOIN outbound_messages o ON o.id = m.outbound_id
           WHERE m.recipient = $1 AND m.state = 'sending'
           ORDER BY m.id""",
        recipient,
    )
    return [
        InFlight(r["id"], r["outbound_id"], r["status"], r["last_status"], r["last_reason"])
        for r in rows
    ]


async def count_in_flight(conn: Executor, recipient: str) -> int:
    """How many of ``recipient``'s messages are queued for delivery."""
    count = await conn.fetchval(
        "SELECT count(*) FROM offline_messages WHERE recipient = $1 AND state = 'sending'",
        recipient,
    )
    return int(count)


async def next_window(
    conn: Executor, recipient: str, *, limit: int, max_bytes: int | None = None
) -> list[OfflineMessage]:
    """Up to ``limit`` of ``recipient``'s stored messages that may be queued now, in storage
    order, stopping once their bodies reach ``max_bytes`` (the first always comes); none
    when they are not registered. Expired and not yet scheduled messages are left out; the
    window ends before the first message waiting for its retry time (order)."""
    registered = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM locations WHERE aor = $1 AND expires_at > now())",
        recipient,
    )
    if not registered:
        return []
    rows = await conn.fetch(
        f"""SELECT * FROM (
                SELECT {_COLUMNS}, (retry_at IS NOT NULL AND retry_at > now()) AS waiting,
                       sum(octet_length(body)) OVER (ORDER BY id) - octet_length(body)
                           AS before
                FROM offline_messages
                WHERE recipient = $1 AND state = 'stored' AND expires_at > now()
                  AND (not_before IS NULL OR not_before <= now())
                ORDER BY id LIMIT $2) w
            WHERE $3::bigint IS NULL OR before = 0 OR before < $3::bigint
            ORDER BY id""",
        recipient,
        limit,
        max_bytes,
    )
    window: list[OfflineMessage] = []
    for row in rows:
        if row["waiting"]:
            break
        window.append(_message(row))
    return window


@dataclass(frozen=True)
class WindowHead:
    """What msilo needs to know of a message to queue it without reading its body."""

    id: int
    received_at: datetime
    content_type: str


async def next_window_heads(
    conn: Executor, recipient: str, *, limit: int, max_bytes: int
) -> list[WindowHead]:
    """:func:`next_window` without the bodies (the window :func:`queue_window` queues)."""
    rows = await conn.fetch(
        """SELECT id, received_at, content_type, waiting FROM (
               SELECT id, received_at, content_type,
                      (retry_at IS NOT NULL AND retry_at > now()) AS waiting,
                      sum(octet_length(body)) OVER (ORDER BY id) - octet_length(body)
                          AS before
               FROM offline_messages
               WHERE recipient = $1 AND state = 'stored' AND expires_at > now()
                 AND (not_before IS NULL OR not_before <= now())
                 AND EXISTS (SELECT 1 FROM locations WHERE aor = $1 AND expires_at > now())
               ORDER BY id LIMIT $2) w
           WHERE before = 0 OR before < $3
           ORDER BY id""",
        recipient,
        limit,
        max_bytes,
    )
    window: list[WindowHead] = []
    for row in rows:
        if row["waiting"]:
            break
        window.append(WindowHead(row["id"], row["received_at"], row["content_type"]))
    return window


async def queue_window(
    conn: Executor,
    ids: list[int],
    *,
    prefixes: list[bytes],
    dates: list[str],
    headers: list[tuple[str, str]],
    order: str,
) -> list[int]:
    """Queue stored messages ``ids`` (in this order) for delivery in one statement, their
    bodies copied inside the database: one ``outbound_messages`` row each in chain
    ``order`` (ids increasing in that order), the body ``prefixes[i]`` + the stored body,
    the extra headers a ``Date: dates[i]``, the stored ones, then ``headers``; and the
    stored rows marked 'sending'. Their outbound ids, in order. Call inside a transaction
    holding :func:`lock_delivery`; the caller NOTIFYs the relay."""
    if not ids:
        return []
    rows = await conn.fetch(
        """WITH queued AS (
               INSERT INTO outbound_messages (from_uri, from_display, to_aor, content_type,
                   body, extra_headers, source, source_id, order_key)
               SELECT m.sender_uri, m.sender_display, m.recipient, m.content_type,
                      t.prefix || m.body,
                      jsonb_build_array(jsonb_build_array('Date', t.date)) || m.extra_headers
                          || $4::jsonb,
                      $5, m.id, $6
               FROM unnest($1::bigint[], $2::bytea[], $3::text[]) WITH ORDINALITY
                        AS t(id, prefix, date, n)
                    JOIN offline_messages m ON m.id = t.id
               ORDER BY t.n
               RETURNING id, source_id)
           UPDATE offline_messages m SET state = 'sending', outbound_id = q.id,
               attempts = attempts + 1, last_attempt_at = now(), retry_at = NULL
           FROM queued q WHERE m.id = q.source_id
           RETURNING m.outbound_id""",
        ids,
        prefixes,
        dates,
        json.dumps([list(pair) for pair in headers]),
        DELIVERY_SOURCE,
        order,
    )
    return sorted(int(row["outbound_id"]) for row in rows)


async def mark_sending_many(conn: Executor, ids: list[int], outbound_ids: list[int]) -> None:
    """Messages ``ids`` are queued as outbound rows ``outbound_ids`` (same order)."""
    await conn.execute(
        """UPDATE offline_messages m SET state = 'sending', outbound_id = t.outbound_id,
               attempts = attempts + 1, last_attempt_at = now(), retry_at = NULL
           FROM unnest($1::bigint[], $2::bigint[]) AS t(id, outbound_id)
           WHERE m.id = t.id""",
        ids,
        outbound_ids,
    )


async def restore(
    conn: Executor,
    ids: list[int],
    *,
    failed: int | None,
    status: int | None,
    reason: str | None,
    retry_in: float,
) -> None:
    """Messages ``ids`` go back to 'stored'. ``failed`` (one of them, the one whose delivery
    failed) records ``status``/``reason`` and is offered again after ``retry_in`` seconds
    (or at the recipient's next registration); the others were not sent (their attempt
    is not counted) and wait behind it."""
    await conn.execute(
        """UPDATE offline_messages SET state = 'stored', outbound_id = NULL,
               attempts = CASE WHEN id = $2 THEN attempts ELSE greatest(attempts - 1, 0) END,
               last_status = CASE WHEN id = $2 THEN $3 ELSE last_status END,
               last_reason = CASE WHEN id = $2 THEN $4 ELSE last_reason END,
               retry_at = CASE WHEN id = $2 THEN now() + make_interval(secs => $5)
                               ELSE NULL END
           WHERE id = ANY($1::bigint[])""",
        ids,
        failed,
        status,
        reason,
        float(retry_in),
    )


async def delete_messages(conn: Executor, ids: list[int]) -> int:
    """Delete messages ``ids``; how many were still there."""
    status = await conn.execute("DELETE FROM offline_messages WHERE id = ANY($1::bigint[])", ids)
    return int(status.split()[-1])


@dataclass(frozen=True)
class Outcomes:
    """What the outcomes of some deliveries did for one recipient (:func:`apply_delivered`)."""

    recipient: str
    delivered: int  # messages deleted now (answered 2xx)
    failed: bool  # one of the outcomes is a failure: the recipient needs a full look
    last: int  # the highest outbound id among these outcomes


async def apply_delivered(conn: Executor, outbound_ids: list[int]) -> list[Outcomes]:
    """The relay finished outbound rows ``outbound_ids``: delete the stored messages whose
    delivery (one of msilo's rows among these) was answered 2xx, in one statement; per
    recipient, how many, whether one of the deliveries failed, and the highest row id.

    Deleting a message whose delivery row says 'delivered' is safe without the recipient's
    delivery lock: nothing else changes such a message, and a row deleted twice (a replica
    applying the same outcome) is counted once. Failures are left to the locked step."""
    rows = await conn.fetch(
        """WITH finished AS MATERIALIZED (  -- by primary key, whatever the statistics say
               SELECT id, source, source_id, to_aor, status FROM outbound_messages
               WHERE id = ANY($1::bigint[])),
           done AS (
               SELECT id, source_id, to_aor, status FROM finished
               WHERE source = $2 AND status IN ('delivered', 'failed')),
           gone AS (
               DELETE FROM offline_messages m USING done d
               WHERE d.status = 'delivered' AND m.id = d.source_id AND m.outbound_id = d.id
               RETURNING m.recipient)
           SELECT d.to_aor AS recipient,
                  (SELECT count(*) FROM gone g WHERE g.recipient = d.to_aor) AS delivered,
                  bool_or(d.status = 'failed') AS failed, max(d.id) AS last
           FROM done d GROUP BY d.to_aor""",
        outbound_ids,
        DELIVERY_SOURCE,
    )
    return [
        Outcomes(r["recipient"], int(r["delivered"]), bool(r["failed"]), int(r["last"]))
        for r in rows
    ]


async def next_scheduled(conn: Executor) -> datetime | None:
    """The earliest send time still to come of a live scheduled message, if any."""
    value = await conn.fetchval(
        """SELECT min(not_before) FROM offline_messages
           WHERE not_before > now() AND expires_at > now()"""
    )
    return value if isinstance(value, datetime) else None


async def clear_retry(conn: Executor, recipient: str) -> None:
    """The recipient registered: failed messages may be offered again at once."""
    await conn.execute(
        """UPDATE offline_messages SET retry_at = NULL
           WHERE recipient = $1 AND retry_at IS NOT NULL""",
        recipient,
    )


async def recipients_needing_work(conn: Executor, *, limit: int) -> list[str]:
    """Recipients msilo should look at: a message in flight (its outcome may have been
    missed), or a message due for delivery to a user who is registered now."""
    rows = await conn.fetch(
        """SELECT DISTINCT o.recipient FROM offline_messages o
           WHERE o.expires_at > now()
             AND (o.state = 'sending'
                  OR ((o.retry_at IS NULL OR o.retry_at <= now())
                      AND (o.not_before IS NULL OR o.not_before <= now())
                      AND EXISTS (SELECT 1 FROM locations l
                                  WHERE l.aor = o.recipient AND l.expires_at > now())))
           LIMIT $1""",
        limit,
    )
    return [row["recipient"] for row in rows]


# -- messages that cannot be delivered (migrations/0012_msilo_policies.sql) ----------------

#: Bytes of a body read for a notice's excerpt.
EXCERPT_BYTES = 512


@dataclass(frozen=True)
class Undelivered:
    """A message msilo removed undelivered (expired, or refused for good): what a notice to
    its sender tells."""

    id: int
    recipient: str
    sender_uri: str
    received_at: datetime
    content_type: str
    head: bytes  # the first EXCERPT_BYTES of the body
    size: int  # of the whole body
    notice: bool  # msilo's own notice: never noticed itself
    refusals: int


_UNDELIVERED = f"""id, recipient, sender_uri, received_at, content_type,
    substring(body FROM 1 FOR {EXCERPT_BYTES}) AS head, octet_length(body) AS size,
    notice, refusals"""


def _undelivered(row: asyncpg.Record) -> Undelivered:
    return Undelivered(
        id=row["id"],
        recipient=row["recipient"],
        sender_uri=row["sender_uri"],
        received_at=row["received_at"],
        content_type=row["content_type"],
        head=bytes(row["head"]),
        size=int(row["size"]),
        notice=bool(row["notice"]),
        refusals=int(row["refusals"]),
    )


async def take_expired(conn: Executor, *, limit: int) -> list[Undelivered]:
    """Delete up to ``limit`` expired messages not in flight (one in flight is taken once
    its outcome is applied: delivered after all, it is no longer undelivered); what they
    were. Call inside a transaction with whatever tells their senders."""
    rows = await conn.fetch(
        f"""DELETE FROM offline_messages WHERE id IN (
                SELECT id FROM offline_messages
                WHERE expires_at <= now() AND state = 'stored'
                ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
            RETURNING {_UNDELIVERED}""",
        limit,
    )
    return [_undelivered(row) for row in rows]


async def count_refusal(conn: Executor, message_id: int) -> int:
    """The recipient's client refused message ``message_id`` for good once more; how many
    times now."""
    value = await conn.fetchval(
        "UPDATE offline_messages SET refusals = refusals + 1 WHERE id = $1 RETURNING refusals",
        message_id,
    )
    return 0 if value is None else int(value)


async def give_up(conn: Executor, message_id: int) -> Undelivered | None:
    """Delete message ``message_id`` undelivered (refused too often); what it was."""
    row = await conn.fetchrow(
        f"DELETE FROM offline_messages WHERE id = $1 RETURNING {_UNDELIVERED}", message_id
    )
    return None if row is None else _undelivered(row)


async def store_notice(
    conn: Executor,
    *,
    recipient: str,
    sender_uri: str,
    body: bytes,
    lifetime: int,
    max_messages: int,
) -> int | None:
    """Store msilo's notice for ``recipient`` (offline) like a message (quota included);
    marked so that its own expiry or refusal is never noticed. Its id, or None (mailbox
    full)."""
    stored = await store_message(
        conn,
        recipient=recipient,
        sender_uri=sender_uri,
        sender_display=None,
        call_id="",
        content_type="text/plain;charset=UTF-8",
        body=body,
        extra_headers=[],
        lifetime=lifetime,
        max_messages=max_messages,
    )
    if stored is not None:
        await conn.execute("UPDATE offline_messages SET notice = true WHERE id = $1", stored)
    return stored


async def is_registered(conn: Executor, aor: str) -> bool:
    value = await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM locations WHERE aor = $1 AND expires_at > now())", aor
    )
    return bool(value)


# -- the control API (additive: the relay and msilo do not use these) -----------------------


async def list_messages_page(
    conn: Executor, recipient: str, *, limit: int, offset: int
) -> list[OfflineMessage]:
    """One page of :func:`list_messages` (storage order)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM offline_messages WHERE recipient = $1
            ORDER BY id LIMIT $2 OFFSET $3""",
        recipient,
        limit,
        offset,
    )
    return [_message(row) for row in rows]


async def delete_recipient_message(conn: Executor, recipient: str, message_id: int) -> bool:
    """Delete one of ``recipient``'s messages; False when they have none with that id."""
    status = await conn.execute(
        "DELETE FROM offline_messages WHERE id = $1 AND recipient = $2", message_id, recipient
    )
    return status != "DELETE 0"


async def delete_recipient_messages(conn: Executor, recipient: str) -> int:
    """Delete everything stored for ``recipient``; how many."""
    status = await conn.execute("DELETE FROM offline_messages WHERE recipient = $1", recipient)
    return int(status.split()[-1])


async def purge_received_before(conn: Executor, before: datetime, *, limit: int) -> int:
    """Delete up to ``limit`` of the oldest messages received before ``before``; how many
    (call repeatedly, one transaction each, until it returns less than ``limit``)."""
    status = await conn.execute(
        """DELETE FROM offline_messages WHERE id IN (
               SELECT id FROM offline_messages WHERE received_at < $1
               ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)""",
        before,
        limit,
    )
    return int(status.split()[-1])
