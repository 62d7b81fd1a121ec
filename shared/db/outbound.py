"""The ``outbound_messages`` table: MESSAGEs that workers queue for the relay to send.

The contract (statuses, NOTIFY channels, lease) is documented in
``migrations/0003_outbound_messages.sql``, ordered chains (``order_key``) in
``migrations/0009_scheduled_messages.sql``. Workers call :func:`queue_message` (one row) or
:func:`queue_messages` (many rows, one statement, one NOTIFY), or queue a fan-out row (one
MESSAGE for many AoRs, ``migrations/0015_outbound_fanout.sql``; imc's
:func:`shared.db.rooms.queue_fanout`); the relay calls :func:`claim_batch`, then
:func:`finish_many` (or :func:`finish`), :func:`record_fanout` and :func:`cancel_chain`.
A relay starting calls :func:`release_previous_runs` first: the rows its killed predecessor
(same ``relay_instance``) left 'sending' are sent again at once rather than after the lease.

NOTIFY payloads on ``outbound_done`` are ``{"type": "delivered" | "failed", "id": <id>}`` for
one row, and ``{"type": "finished", "id": <first id>, "ids": [<id>, ...]}`` for a batch
(:func:`notified_ids` reads both).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

import asyncpg

from shared.db.listen import notify
from shared.db.types import Connection, Executor

#: NOTIFY channel woken when a row is queued (payload {"type": "queued", "id": ...}; a
#: fan-out row: {"type": "fanout", "id": ...}, claimable by id: :func:`claim_fanout`).
QUEUED_CHANNEL = "outbound"
#: ``type`` of the ``outbound`` NOTIFY of a fan-out row.
FANOUT_QUEUED = "fanout"
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
    order_key: str | None = None
    claimed_by: str | None = None
    #: A fan-out row (``migrations/0015_outbound_fanout.sql``): the AoRs to send a copy to
    #: (None: an ordinary row for ``to_aor``), those whose copy has an outcome already, and
    #: how many of those were delivered.
    recipients: tuple[str, ...] | None = None
    recipients_done: tuple[str, ...] = ()
    recipients_delivered: int = 0

    def pending_recipients(self) -> list[str]:
        """A fan-out row's AoRs still owed a copy, in order (each once)."""
        done = set(self.recipients_done)
        pending: list[str] = []
        for aor in self.recipients or ():
            if aor not in done:
                done.add(aor)
                pending.append(aor)
        return pending


@dataclass(frozen=True)
class NewOutbound:
    """One row for :func:`queue_messages`."""

    from_uri: str
    to_aor: str
    body: bytes
    content_type: str = "text/plain;charset=UTF-8"
    from_display: str | None = None
    extra_headers: Sequence[tuple[str, str]] = ()
    source: str | None = None
    source_id: int | None = None
    order_key: str | None = None


@dataclass
class FanoutProgress:
    """Outcomes of some copies of a fan-out row, for :func:`record_fanout`."""

    id: int
    done: list[str] = field(default_factory=list)  # AoRs whose copy has an outcome
    delivered: int = 0  # how many of them got a 2xx
    #: Every recipient has an outcome now: finish the row with this batch.
    final: bool = False
    last_failure: int | None = None  # the last failing copy's code (a row none took)


@dataclass(frozen=True)
class Outcome:
    """The final result of one delivery, for :func:`finish_many`."""

    id: int
    delivered: bool
    status: int | None
    reason: str


#: Final statuses of a fan-out copy that mean "the AoR cannot take it now": the copy is
#: stored in the offline store (``migrations/0015_outbound_fanout.sql``).
FANOUT_STORE_STATUSES = frozenset({408, 480, 503})
#: Most ids in one ``outbound_done`` NOTIFY (payloads are limited to 8000 bytes).
NOTIFY_IDS = 400
#: ``last_reason`` of the rows of a chain not sent because an earlier one failed.
NOT_SENT_REASON = "not sent: an earlier message failed"


def _headers(value: object) -> tuple[tuple[str, str], ...]:
    if isinstance(value, str):
        return _headers_text(value)
    return _header_pairs(value)


@functools.lru_cache(maxsize=1024)
def _headers_text(text: str) -> tuple[tuple[str, str], ...]:
    """The pairs of an ``extra_headers`` JSON text: memoised, as a batch of rows often
    carries the same headers (a room's fan-out: every copy)."""
    return _header_pairs(json.loads(text))


def _header_pairs(data: object) -> tuple[tuple[str, str], ...]:
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
    recipients = data.get("recipients")
    if recipients is not None:
        data["recipients"] = tuple(recipients)
    data["recipients_done"] = tuple(data.get("recipients_done") or ())
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
    order_key: str | None = None,
) -> int:
    """Queue a MESSAGE for ``to_aor`` (``user@domain``) and wake the relay; the row's id.

    The NOTIFY is delivered when the caller's transaction commits.
    """
    new_id = await conn.fetchval(
        """INSERT INTO outbound_messages (from_uri, from_display, to_aor, content_type, body,
               extra_headers, source, source_id, order_key)
           VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, $8, $9) RETURNING id""",
        from_uri,
        from_display,
        to_aor,
        content_type,
        body,
        json.dumps([list(pair) for pair in extra_headers or []]),
        source,
        source_id,
        order_key,
    )
    await notify(conn, QUEUED_CHANNEL, "queued", new_id)
    return int(new_id)


async def queue_messages(conn: Executor, messages: Sequence[NewOutbound]) -> list[int]:
    """Queue many MESSAGEs in one statement and wake the relay once; their ids, in the order
    of ``messages`` (ids increase in that order: a chain's order)."""
    if not messages:
        return []
    rows = await conn.fetch(
        """INSERT INTO outbound_messages (from_uri, from_display, to_aor, content_type, body,
               extra_headers, source, source_id, order_key)
           SELECT from_uri, from_display, to_aor, content_type, body, extra_headers::jsonb,
                  source, source_id, order_key
           FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[],
                       $6::text[], $7::text[], $8::bigint[], $9::text[])
                WITH ORDINALITY AS t(from_uri, from_display, to_aor, content_type, body,
                                     extra_headers, source, source_id, order_key, n)
           ORDER BY n
           RETURNING id""",
        [m.from_uri for m in messages],
        [m.from_display for m in messages],
        [m.to_aor for m in messages],
        [m.content_type for m in messages],
        [m.body for m in messages],
        [json.dumps([list(pair) for pair in m.extra_headers]) for m in messages],
        [m.source for m in messages],
        [m.source_id for m in messages],
        [m.order_key for m in messages],
    )
    ids = sorted(int(row["id"]) for row in rows)  # identity values follow the ORDER BY
    await notify(conn, QUEUED_CHANNEL, "queued", ids[0])
    return ids


async def get_message(conn: Executor, message_id: int) -> OutboundMessage | None:
    row = await conn.fetchrow("SELECT * FROM outbound_messages WHERE id = $1", message_id)
    return None if row is None else _message(row)


async def claim_batch(
    conn: Connection, *, limit: int, lease: float, claimed_by: str = ""
) -> list[OutboundMessage]:
    """Mark up to ``limit`` rows as being sent by ``claimed_by`` (call inside a transaction,
    then commit).

    Takes queued rows and rows left 'sending' for longer than ``lease`` seconds by a relay
    that died, oldest first, skipping rows another relay is claiming right now. A row of an
    ordered chain (``order_key``) is taken only when every earlier row of its chain still
    queued or being sent is taken too or was claimed by ``claimed_by`` before, so one relay
    sends a chain and sends it in order.
    """
    # Per chain, the first row that holds the chain's candidates back (queued but not a
    # candidate: another relay is claiming it; or being sent by someone else): candidates
    # before it are taken. One look per chain, not per row — a chain thousands of rows
    # long (a drain) is claimed in linear time.
    rows = await conn.fetch(
        """WITH candidate AS (
               SELECT id, order_key FROM outbound_messages
               WHERE status = 'queued'
                  OR (status = 'sending' AND updated_at < now() - make_interval(secs => $2))
               ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED),
           chain AS (
               SELECT order_key, max(id) AS last FROM candidate
               WHERE order_key IS NOT NULL GROUP BY order_key),
           holdback AS MATERIALIZED (  -- once per chain, not per candidate
               SELECT k.order_key, (
                   SELECT min(e.id) FROM outbound_messages e
                   WHERE e.order_key = k.order_key AND e.id < k.last
                     AND e.status IN ('queued', 'sending')
                     AND (e.status = 'queued' OR e.claimed_by IS DISTINCT FROM $3)
                     AND e.id NOT IN (SELECT id FROM candidate)) AS first
               FROM chain k)
           UPDATE outbound_messages SET status = 'sending', attempts = attempts + 1,
               updated_at = now(), claimed_by = $3
           WHERE id IN (
               SELECT c.id FROM candidate c LEFT JOIN holdback h ON h.order_key = c.order_key
               WHERE h.first IS NULL OR c.id < h.first)
           RETURNING *""",
        limit,
        lease,
        claimed_by,
    )
    return sorted((_message(row) for row in rows), key=lambda m: m.id)


async def claim_fanout(
    conn: Executor, ids: Sequence[int], *, claimed_by: str
) -> list[OutboundMessage]:
    """Mark those of fan-out rows ``ids`` (from their ``fanout`` NOTIFYs) still queued and
    not being claimed by someone else right now as being sent by ``claimed_by``; them, by
    id. A look-up by primary key instead of :func:`claim_batch`'s scan: a fan-out row has no
    chain to respect. One statement, atomic by itself."""
    rows = await conn.fetch(
        """UPDATE outbound_messages SET status = 'sending', attempts = attempts + 1,
               updated_at = now(), claimed_by = $2
           WHERE id IN (
               SELECT id FROM outbound_messages
               WHERE id = ANY($1::bigint[]) AND status = 'queued' AND recipients IS NOT NULL
               FOR UPDATE SKIP LOCKED)
           RETURNING *""",
        list(ids),
        claimed_by,
    )
    return sorted((_message(row) for row in rows), key=lambda m: m.id)


async def release_previous_runs(conn: Executor, relay_instance: str, claimed_by: str) -> int:
    """Put back to 'queued' the rows an earlier run of relay ``relay_instance`` left
    'sending' (it was killed): ``claimed_by`` is ``<relay_instance>/<run>``, and this run
    is ``claimed_by``. They are sent again at once instead of after the lease (at least
    once: a row the killed relay had sent but not recorded arrives twice, the crash window
    of ``migrations/0003_outbound_messages.sql``). Rows of other relay instances are not
    touched. How many rows."""
    prefix = f"{relay_instance}/"
    status = await conn.execute(
        """UPDATE outbound_messages SET status = 'queued', claimed_by = NULL, updated_at = now()
           WHERE status = 'sending' AND left(claimed_by, length($1)) = $1 AND claimed_by <> $2""",
        prefix,
        claimed_by,
    )
    return int(status.rsplit(" ", 1)[-1])


async def finish(
    conn: Executor, message_id: int, *, delivered: bool, status: int | None, reason: str
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


async def finish_many(conn: Executor, outcomes: Sequence[Outcome]) -> None:
    """Record many outcomes and tell the queueing workers: one statement (an UPDATE and an
    ``outbound_done`` NOTIFY, atomic even outside a transaction) per :data:`NOTIFY_IDS`
    rows."""
    for start in range(0, len(outcomes), NOTIFY_IDS):
        part = outcomes[start : start + NOTIFY_IDS]
        ids = [o.id for o in part]
        kinds = {o.delivered for o in part}
        kind = "finished" if len(kinds) > 1 else ("delivered" if True in kinds else "failed")
        payload = (
            {"type": kind, "id": ids[0]}
            if len(ids) == 1
            else {"type": kind, "id": ids[0], "ids": ids}
        )
        await conn.execute(
            """WITH done AS (
                   UPDATE outbound_messages o SET status = t.status, last_status = t.code,
                       last_reason = t.reason, updated_at = now(), finished_at = now()
                   FROM unnest($1::bigint[], $2::text[], $3::int[], $4::text[])
                        AS t(id, status, code, reason)
                   WHERE o.id = t.id
                   RETURNING o.id)
               SELECT pg_notify($5, $6) WHERE EXISTS (SELECT 1 FROM done)""",
            ids,
            [
                (OutboundStatus.DELIVERED if o.delivered else OutboundStatus.FAILED).value
                for o in part
            ],
            [o.status for o in part],
            [o.reason for o in part],
            DONE_CHANNEL,
            json.dumps(payload),
        )


async def record_fanout(conn: Executor, progress: Sequence[FanoutProgress]) -> None:
    """Record the outcomes of copies of fan-out rows (``recipients_done``,
    ``recipients_delivered``), finish the rows whose every recipient has one now and tell
    the queueing workers (``outbound_done``, one NOTIFY for all the finished rows): ONE
    statement, atomic even outside a transaction. Store the copies that failed as
    unreachable (:data:`FANOUT_STORE_STATUSES`) in the same transaction."""
    if not progress:
        return
    ids: list[int] = []
    aors: list[str] = []
    for item in progress:
        ids += [item.id] * len(item.done)
        aors += item.done
    await conn.execute(
        """WITH t AS (
               SELECT * FROM unnest($1::bigint[], $2::int[], $3::bool[], $4::int[])
                   AS t(id, delivered, final, code)),
           d AS (
               SELECT u.id, array_agg(u.aor) AS done
               FROM unnest($5::bigint[], $6::text[]) AS u(id, aor) GROUP BY u.id),
           up AS (
               UPDATE outbound_messages o SET
                   recipients_done = o.recipients_done || coalesce(d.done, '{}'),
                   recipients_delivered = o.recipients_delivered + t.delivered,
                   updated_at = now(),
                   status = CASE WHEN NOT t.final THEN o.status
                       WHEN o.recipients_delivered + t.delivered > 0 THEN 'delivered'
                       ELSE 'failed' END,
                   last_status = CASE WHEN NOT t.final THEN o.last_status
                       WHEN o.recipients_delivered + t.delivered > 0 THEN 200
                       ELSE coalesce(t.code, o.last_status, 480) END,
                   last_reason = CASE WHEN NOT t.final THEN o.last_reason
                       ELSE format('%s of %s delivered', o.recipients_delivered + t.delivered,
                                   cardinality(o.recipients)) END,
                   finished_at = CASE WHEN t.final THEN now() END
               FROM t LEFT JOIN d ON d.id = t.id
               WHERE o.id = t.id AND o.recipients IS NOT NULL
               RETURNING o.id, t.final)
           SELECT pg_notify($7, json_build_object('type', 'finished', 'id', min(id),
                                                  'ids', array_agg(id ORDER BY id))::text)
           FROM up WHERE final HAVING count(*) > 0""",
        [item.id for item in progress],
        [item.delivered for item in progress],
        [item.final for item in progress],
        [item.last_failure for item in progress],
        ids,
        aors,
        DONE_CHANNEL,
    )


async def notify_finished(conn: Executor, ids: Sequence[int]) -> None:
    """NOTIFY ``outbound_done`` that rows ``ids`` are finished (batches of :data:`NOTIFY_IDS`)."""
    for start in range(0, len(ids), NOTIFY_IDS):
        part = list(ids[start : start + NOTIFY_IDS])
        payload = json.dumps({"type": "finished", "id": part[0], "ids": part})
        await conn.execute("SELECT pg_notify($1, $2)", DONE_CHANNEL, payload)


async def cancel_chain(conn: Executor, order_key: str, *, after: int, claimed_by: str) -> list[int]:
    """Finish as failed, unsent, every row of chain ``order_key`` after id ``after`` that is
    still queued or was claimed by ``claimed_by`` (an earlier row failed: nothing may
    overtake it); their ids. The caller NOTIFYs them (:func:`notify_finished`)."""
    rows = await conn.fetch(
        """UPDATE outbound_messages SET status = 'failed', last_status = NULL,
               last_reason = $4, updated_at = now(), finished_at = now()
           WHERE order_key = $1 AND id > $2
             AND (status = 'queued' OR (status = 'sending' AND claimed_by = $3))
           RETURNING id""",
        order_key,
        after,
        claimed_by,
        NOT_SENT_REASON,
    )
    return sorted(int(row["id"]) for row in rows)


async def cancel_queued(conn: Executor, ids: Sequence[int]) -> list[int]:
    """Finish as failed, unsent, those of rows ``ids`` that no relay has claimed yet; their
    ids (the others are being sent or finished)."""
    rows = await conn.fetch(
        """UPDATE outbound_messages SET status = 'failed', last_status = NULL,
               last_reason = $2, updated_at = now(), finished_at = now()
           WHERE id = ANY($1::bigint[]) AND status = 'queued'
           RETURNING id""",
        list(ids),
        NOT_SENT_REASON,
    )
    return sorted(int(row["id"]) for row in rows)


def notified_ids(payload: str) -> list[int]:
    """The row ids an ``outbound_done`` payload reports (one, or a batch)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return []
    if not isinstance(data, dict):
        return []
    values = data.get("ids")
    if not isinstance(values, list):
        values = [data.get("id")]
    ids: list[int] = []
    for value in values:
        try:
            ids.append(int(value))
        except (TypeError, ValueError):
            continue
    return ids


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
