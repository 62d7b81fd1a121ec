"""The ``outbound_messages`` table: MESSAGEs that workers queue for the relay to send.

The contract (statuses, NOTIFY channels, lease) is documented in
``migrations/0003_outbound_messages.sql``. Workers call :func:`queue_message`; the relay
calls :func:`claim_batch` and :func:`finish`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

import asyncpg

from shared.db.listen import notify
from shared.db.types import Connection, Executor

#: NOTIFY channel woken when a row is queued (payload {"type": "queued", "id": ...}).
QUEUED_CHANNEL = "outbound"
#: NOTIFY channel told the outcome (payload {"type": "delivered" | "failed", "id": ...}).
DONE_CHANNEL = "outbound_done"
#: ``source`` of the control API's sends (``POST /api/v1/messages``) to a registered user:
#: when such a row fails, the relay stores it offline in the transaction that records the
#: outcome, so msilo delivers it later (nothing the API answered 202 for is lost).
STORE_ON_FAILURE_SOURCE = "api"


class OutboundStatus(StrEnum):
    QUEUED = "queued"
    SENDING = "sending"
    DELIVERED = "delivered"
    FAILED = "failed"


@dataclass(frozen=True)
class OutboundMessage:
    id: int
    from_uri: str
    from_display: str | None
    to_aor: str
    content_type: str
    body: bytes
    extra_headers: tuple[tuple[str, str], ...]
    source: str | None
    source_id: int | None
    status: OutboundStatus
    attempts: int
    last_status: int | None
    last_reason: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    data = json.loads(value) if isinstance(value, str) else value
    pairs: list[tuple[str, str]] = []
    if isinstance(data, list):
        for item in data:
            if isinstance(item, list | tuple) and len(item) == 2:
                pairs.append((str(item[0]), str(item[1])))
    return tuple(pairs)


def _message(row: asyncpg.Record) -> OutboundMessage:
    data = dict(row)
    data["extra_headers"] = _headers(data["extra_headers"])
    data["status"] = OutboundStatus(data["status"])
    data["body"] = bytes(data["body"])
    return OutboundMessage(**data)


async def queue_message(
    conn: Executor,
    *,
    from_uri: str,
    to_aor: str,
    body: bytes,
    content_type: str = "text/plain;charset=UTF-8",
    from_display: str | None = None,
    extra_headers: list[tuple[str, str]] | None = None,
    source: str | None = None,
    source_id: int | None = None,
) -> int:
    """Queue a MESSAGE for ``to_aor`` (``user@domain``) and wake the relay; the row's id.

    The NOTIFY is delivered when the caller's transaction commits.
    """
    new_id = await conn.fetchval(
        """INSERT INTO outbound_messages (from_uri, from_display, to_aor, content_type, body,
               extra_headers, source, source_id)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8) RETURNING id""",
        from_uri,
        from_display,
        to_aor,
        content_type,
        body,
        json.dumps([list(pair) for pair in extra_headers or []]),
        source,
        source_id,
    )
    await notify(conn, QUEUED_CHANNEL, "queued", new_id)
    return int(new_id)


async def get_message(conn: Executor, message_id: int) -> OutboundMessage | None:
    row = await conn.fetchrow("SELECT * FROM outbound_messages WHERE id = $1", message_id)
    return None if row is None else _message(row)


async def claim_batch(conn: Connection, *, limit: int, lease: float) -> list[OutboundMessage]:
    """Mark up to ``limit`` rows as being sent (call inside a transaction, then commit).

    Takes queued rows and rows left 'sending' for longer than ``lease`` seconds by a relay
    that died, oldest first, skipping rows another relay is claiming right now.
    """
    rows = await conn.fetch(
        """UPDATE outbound_messages SET status = 'sending', attempts = attempts + 1,
               updated_at = now()
           WHERE id IN (
               SELECT id FROM outbound_messages
               WHERE status = 'queued'
                  OR (status = 'sending' AND updated_at < now() - make_interval(secs => $2))
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        limit,
        lease,
    )
    return sorted((_message(row) for row in rows), key=lambda m: m.id)


async def finish(
    conn: Executor, message_id: int, *, delivered: bool, status: int, reason: str
) -> None:
    """Record the outcome of a delivery and tell the queueing worker (``outbound_done``)."""
    outcome = OutboundStatus.DELIVERED if delivered else OutboundStatus.FAILED
    await conn.execute(
        """UPDATE outbound_messages SET status = $2, last_status = $3, last_reason = $4,
               updated_at = now(), finished_at = now()
           WHERE id = $1""",
        message_id,
        outcome.value,
        status,
        reason,
    )
    await notify(conn, DONE_CHANNEL, outcome.value, message_id)


async def purge_finished(conn: Executor, *, older_than: float, limit: int = 1000) -> int:
    """Delete up to ``limit`` delivered or failed rows finished more than ``older_than``
    seconds ago (the send log's retention); how many. Rows still queued or being sent are
    never touched."""
    status = await conn.execute(
        """DELETE FROM outbound_messages WHERE id IN (
               SELECT id FROM outbound_messages
               WHERE status IN ('delivered', 'failed')
                 AND finished_at < now() - make_interval(secs => $1::float8)
               ORDER BY id LIMIT $2)""",
        float(older_than),
        limit,
    )
    return int(status.rsplit(" ", 1)[-1])
