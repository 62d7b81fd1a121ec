"""The ``offline_messages`` table: MESSAGEs stored for users who were not reachable.

The contract (ordering key, head-of-queue claim, states) is documented in
``migrations/0005_offline_messages.sql``. The relay calls :func:`store_message`; the msilo
worker calls :func:`claim_head` and the ``mark_*`` functions, one short transaction per step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from shared.db.types import Executor

#: Header on every MESSAGE the bundle generates itself (msilo deliveries and notices; room
#: fan-out should carry it too). A request carrying it never causes an offline notice, so a
#: notice can never answer a notice (Kamailio issue #61: a notice/room loop).
GENERATED_HEADER = "X-Imstack-Generated"
#: ``outbound_messages.source`` of msilo's deliveries and of its notices.
DELIVERY_SOURCE = "msilo"
NOTICE_SOURCE = "msilo-notice"


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


@dataclass(frozen=True)
class Head:
    """A recipient's oldest live message, locked by the current transaction."""

    message: OfflineMessage
    due: bool  # retry_at has passed (or was never set)
    registered: bool  # the recipient has an unexpired binding right now


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
    last_attempt_at, retry_at"""


def _message(row: asyncpg.Record) -> OfflineMessage:
    data = {name: row[name] for name in OfflineMessage.__dataclass_fields__}
    data["extra_headers"] = _headers(data["extra_headers"])
    data["state"] = OfflineState(data["state"])
    data["body"] = bytes(data["body"])
    return OfflineMessage(**data)


async def lock_recipient(conn: Executor, recipient: str) -> None:
    """Serialise stores for ``recipient`` until the end of the current transaction (exact
    quota; id order = commit order)."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 5))", recipient)


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
) -> int | None:
    """Store a message (call inside a transaction); its id, or None when ``recipient``
    already has ``max_messages`` stored (0: no limit)."""
    await lock_recipient(conn, recipient)
    if max_messages > 0:
        count = await conn.fetchval(
            """SELECT count(*) FROM offline_messages
               WHERE recipient = $1 AND expires_at > now()""",
            recipient,
        )
        if count >= max_messages:
            return None
    new_id = await conn.fetchval(
        """INSERT INTO offline_messages (recipient, sender_uri, sender_display, call_id,
               received_at, expires_at, content_type, body, extra_headers)
           VALUES ($1, $2, $3, $4, now(), now() + make_interval(secs => $5), $6, $7, $8::jsonb)
           RETURNING id""",
        recipient,
        sender_uri,
        sender_display,
        call_id,
        float(lifetime),
        content_type,
        body,
        json.dumps([list(pair) for pair in extra_headers]),
    )
    return int(new_id)


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


async def claim_head(conn: Executor, recipient: str) -> Head | None:
    """Lock ``recipient``'s oldest unexpired message (inside a transaction).

    None when there is none, or when another transaction holds it (FOR UPDATE SKIP LOCKED):
    then that transaction's worker is advancing this recipient, and skipping to the next
    message would break the order.
    """
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS}, (retry_at IS NULL OR retry_at <= now()) AS due,
               EXISTS (SELECT 1 FROM locations l
                       WHERE l.aor = offline_messages.recipient AND l.expires_at > now())
                   AS registered
            FROM offline_messages
            WHERE id = (SELECT min(id) FROM offline_messages
                        WHERE recipient = $1 AND expires_at > now())
            FOR UPDATE SKIP LOCKED""",
        recipient,
    )
    if row is None:
        return None
    return Head(_message(row), bool(row["due"]), bool(row["registered"]))


async def mark_sending(conn: Executor, message_id: int, outbound_id: int) -> None:
    await conn.execute(
        """UPDATE offline_messages SET state = 'sending', outbound_id = $2,
               attempts = attempts + 1, last_attempt_at = now(), retry_at = NULL
           WHERE id = $1""",
        message_id,
        outbound_id,
    )


async def mark_failed(
    conn: Executor, message_id: int, *, status: int | None, reason: str | None, retry_in: float
) -> None:
    """Back to 'stored' after a failed delivery; offered again after ``retry_in`` seconds
    (or at the recipient's next registration)."""
    await conn.execute(
        """UPDATE offline_messages SET state = 'stored', outbound_id = NULL, last_status = $2,
               last_reason = $3, retry_at = now() + make_interval(secs => $4)
           WHERE id = $1""",
        message_id,
        status,
        reason,
        retry_in,
    )


async def delete_message(conn: Executor, message_id: int) -> None:
    await conn.execute("DELETE FROM offline_messages WHERE id = $1", message_id)


async def clear_retry(conn: Executor, recipient: str) -> None:
    """The recipient registered: failed messages may be offered again at once."""
    await conn.execute(
        """UPDATE offline_messages SET retry_at = NULL
           WHERE recipient = $1 AND retry_at IS NOT NULL""",
        recipient,
    )


async def recipients_of_outbound(conn: Executor, outbound_ids: list[int]) -> list[str]:
    """The recipients of these outbound rows, when msilo queued them (a delivery's ``to_aor``
    is the stored message's recipient). Looked up by the outbound rows' primary key:
    ``offline_messages.outbound_id`` has no index, and a scan per outcome made a drain
    quadratic in the number of stored messages."""
    rows = await conn.fetch(
        """SELECT DISTINCT to_aor FROM outbound_messages
           WHERE id = ANY($1::bigint[]) AND source = $2""",
        outbound_ids,
        DELIVERY_SOURCE,
    )
    return [row["to_aor"] for row in rows]


async def recipients_needing_work(conn: Executor, *, limit: int) -> list[str]:
    """Recipients msilo should look at: a message in flight (its outcome may have been
    missed), or a message due for delivery to a user who is registered now."""
    rows = await conn.fetch(
        """SELECT DISTINCT o.recipient FROM offline_messages o
           WHERE o.expires_at > now()
             AND (o.state = 'sending'
                  OR ((o.retry_at IS NULL OR o.retry_at <= now())
                      AND EXISTS (SELECT 1 FROM locations l
                                  WHERE l.aor = o.recipient AND l.expires_at > now())))
           LIMIT $1""",
        limit,
    )
    return [row["recipient"] for row in rows]


async def purge_expired(conn: Executor) -> int:
    """Delete expired messages (never delivered); how many."""
    result = await conn.execute("DELETE FROM offline_messages WHERE expires_at <= now()")
    return int(result.split()[-1])


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
