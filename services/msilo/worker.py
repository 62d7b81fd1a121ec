"""The msilo worker: deliver stored messages when their recipient registers, in order.

Woken by NOTIFY — ``registered`` (an AoR registered: deliver its messages, retry failed ones
at once) and ``outbound_done`` (the relay reports a delivery: delete the message after a
2xx and send the next one, or keep it for a retry) — and by timers: a sweep over registered
users with pending messages and over messages in flight (covers NOTIFYs lost while the
LISTEN connection was down, and due retries), and the purge of expired messages.

Per recipient a window of up to :data:`WINDOW` messages is in flight: they are queued as
one ordered chain (``order_key``), which the relay sends strictly in storage order, each
after the previous one was answered 2xx (pipelined on one TCP/TLS connection); the first
failure stops the chain, and that message and every later one of the window go back to
'stored' (in order, nothing lost, nothing sent twice) to be offered again after the retry
interval or at the next registration. A window is queued inside the database
(``shared.db.offline.queue_window``: the bodies are copied from table to table, msilo only
formats the prefix and the Date header per message), first :data:`FIRST_STEP` messages so
that the first delivery goes out at once, then the rest in one statement. Delivered
messages are deleted as their outcomes arrive (``outbound_done``, gathered for
:data:`DONE_GATHER`), one statement for all of them (``apply_delivered``) — no look at the
rest of the window; the window is topped up once only REFILL of it are left (the worker
remembers which outcome that is), so the relay never runs dry during a drain.

Every step is one short transaction under a per-recipient advisory lock: replicas share the
work and never both queue one message; all state is in the database, so a worker that dies
loses nothing (see ``migrations/0005_offline_messages.sql`` and
``migrations/0009_scheduled_messages.sql``).

Scheduled messages (``not_before``) are left out of windows until they are due; the worker
sleeps until the earliest send time (re-read when a scheduled message is stored, on the
``offline_scheduled`` NOTIFY), then sweeps: no busy polling.

Messages that will not be delivered (:mod:`services.msilo.notices`,
``migrations/0012_msilo_policies.sql``): the purge tells a local sender that their message
expired; a message the client refused for good IMSTACK_MSILO_MAX_ATTEMPTS times is deleted
(its sender told) and the ones behind it are offered at once (:meth:`_refused_for_good`).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.msilo.delivered_message import GENERATED, body_prefix, http_date
from services.msilo.notices import expiry_text, is_permanent, refusal_text, tell_sender
from shared.config import Settings
from shared.db import offline
from shared.db.listen import Listener, Notification, notify
from shared.db.offline import SCHEDULED_CHANNEL, STORED_CHANNEL, order_key
from shared.db.outbound import (
    DONE_CHANNEL,
    NOTIFY_IDS,
    QUEUED_CHANNEL,
    cancel_queued,
    notified_ids,
)
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup
from shared.db.types import Executor

log = logging.getLogger(__name__)

REGISTERED_CHANNEL = "registered"  # the registrar NOTIFYs it with the AoR
SWEEP_BATCH = 1000  # recipients looked at per sweep query
WINDOW = 2000  # a recipient's messages in flight at most
REFILL = WINDOW // 2  # top the window up when no more than this many are still in flight
#: Messages queued by the first step when none are in flight: the first delivery goes out
#: while the rest of the window is queued...
FIRST_STEP = 50
#: ...each step stopping once the bodies reach this many bytes (the relay holds the rows
#: it sends: large messages make a smaller window).
STEP_BYTES = 4 << 20
#: Seconds outcomes reported by the relay are gathered before they are applied: one
#: statement for the outcomes of a busy drain's last few milliseconds, not one per report.
DONE_GATHER = 0.02
ERROR_BACKOFF = 1.0  # seconds before retrying after a database error, doubling...
MAX_ERROR_BACKOFF = 30.0  # ...up to this
PURGE_BATCH = 500  # expired messages removed (and their senders told) per transaction


@dataclass
class MsiloStats:
    """Counters since start (logged; the API's statistics read the tables)."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    registrations: int = 0  # `registered` notifications fully handled
    undeliverable: int = 0  # given up after IMSTACK_MSILO_MAX_ATTEMPTS permanent refusals
    notices: int = 0  # senders told that a message expired or was given up


class MsiloWorker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, database_url: str) -> None:
        self.settings = settings
        self.pool = pool
        self.wakeup = Wakeup()
        self.listener = Listener(
            database_url,
            [REGISTERED_CHANNEL, DONE_CHANNEL, SCHEDULED_CHANNEL, STORED_CHANNEL],
            self._on_notify,
            catch_up=self._catch_up,
        )
        self.stats = MsiloStats()
        self._registered: set[str] = set()
        self._done: set[int] = set()
        self._done_at = 0.0  # (loop time) apply the outcomes in _done from then on
        self._pending: set[str] = set()  # recipients whose outcomes need the locked step
        #: recipient -> the outbound row after whose outcome their window wants topping up
        #: (REFILL rows then in flight) or, near the end of the backlog, is done.
        self._refill_at: dict[str, int] = {}
        self._stored: set[str] = set()  # registered recipients a message was stored for
        self._sweep_now = True
        self._reschedule = True  # read the next scheduled send time
        self._next_scheduled: float | None = None  # loop time of it

    # -- wake-ups ---------------------------------------------------------------------

    def _on_notify(self, notification: Notification) -> None:
        if notification.id is None:
            return
        if notification.channel == REGISTERED_CHANNEL:
            self._registered.add(notification.id)
        elif notification.channel == DONE_CHANNEL:
            ids = notified_ids(notification.raw)
            if not ids:
                return
            if not self._done:
                self._done_at = asyncio.get_running_loop().time() + DONE_GATHER
            self._done.update(ids)
        elif notification.channel == SCHEDULED_CHANNEL:
            self._reschedule = True
            self._stored.add(notification.id)  # due already? then deliver it now
        elif notification.channel == STORED_CHANNEL:
            self._stored.add(notification.id)
        self.wakeup.wake()

    async def _catch_up(self) -> None:
        self._sweep_now = True
        self._reschedule = True
        self.wakeup.wake()

    # -- the loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        listening = asyncio.create_task(self.listener.run(stop), name="msilo-listen")
        loop = asyncio.get_running_loop()
        next_sweep = next_purge = loop.time()
        backoff = ERROR_BACKOFF
        try:
            while not stop.is_set():
                now = loop.time()
                try:
                    if now >= next_purge:
                        await self.purge()
                        next_purge = now + self.settings.msilo_purge_interval
                    due = self._next_scheduled is not None and now >= self._next_scheduled
                    if self._sweep_now or now >= next_sweep or due:
                        self._sweep_now = False
                        self._reschedule = self._reschedule or due
                        await self.sweep()
                        next_sweep = now + self.settings.msilo_sweep_interval
                    await self._handle_notifications()
                    if self._reschedule:
                        self._reschedule = False
                        await self._read_schedule()
                    backoff = ERROR_BACKOFF
                except DATABASE_ERRORS as exc:
                    log.warning("msilo: database unavailable (%s); retry in %.0fs", exc, backoff)
                    # The sweep after the pause redoes whatever this pass did not finish.
                    next_sweep = now + backoff
                    self._done_at = max(self._done_at, next_sweep)  # no retry before that
                    next_purge = max(next_purge, next_sweep)
                    backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                wake_at = min(next_sweep, next_purge)
                if self._next_scheduled is not None:
                    wake_at = min(wake_at, self._next_scheduled)
                if self._done:
                    wake_at = min(wake_at, self._done_at)
                timeout = max(0.0, wake_at - loop.time())
                if await self.wakeup.wait(timeout, stop) is WakeReason.STOP:
                    break
        finally:
            await listening

    async def _handle_notifications(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending or self._registered or self._stored or self._done_due(loop):
            if self._done_due(loop):
                ids = sorted(self._done)
                async with self.pool.acquire() as conn, conn.transaction():
                    outcomes = await offline.apply_delivered(conn, ids)
                    # Counted before the deletions are seen (and at most once: DELETE).
                    self.stats.delivered += sum(o.delivered for o in outcomes)
                self._done.difference_update(ids)
                for outcome in outcomes:
                    mark = self._refill_at.get(outcome.recipient)
                    if outcome.failed or mark is None or outcome.last >= mark:
                        self._pending.add(outcome.recipient)
            if self._pending:
                recipient = next(iter(self._pending))
                await self.pump(recipient)
                self._pending.discard(recipient)
            if self._stored:
                aor = next(iter(self._stored))
                await self.pump(aor)
                self._stored.discard(aor)
            if self._registered:
                aor = next(iter(self._registered))
                await self.registered(aor)
                self._registered.discard(aor)

    def _done_due(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Outcomes to apply, gathered for DONE_GATHER (or plenty of them already)."""
        return bool(self._done) and (len(self._done) >= NOTIFY_IDS or loop.time() >= self._done_at)

    async def _read_schedule(self) -> None:
        """When the next scheduled message falls due (as a time of the event loop)."""
        async with self.pool.acquire() as conn:
            moment = await offline.next_scheduled(conn)
        if moment is None:
            self._next_scheduled = None
            return
        # A little late rather than early: then it is due when the sweep runs.
        delay = (moment - datetime.now(UTC)).total_seconds() + 0.01
        self._next_scheduled = asyncio.get_running_loop().time() + max(0.0, delay)

    async def registered(self, aor: str) -> None:
        """``aor`` registered: offer its messages now, failed ones included."""
        await offline.clear_retry(self.pool, aor)
        await self.pump(aor)
        self.stats.registrations += 1

    async def sweep(self) -> None:
        """Look at every recipient with a message in flight or due while registered."""
        recipients = await offline.recipients_needing_work(self.pool, limit=SWEEP_BATCH)
        for recipient in recipients:
            await self.pump(recipient)

    async def purge(self) -> int:
        """Delete expired messages (never delivered), telling their local senders; how many."""
        removed = 0
        while True:
            async with self.pool.acquire() as conn, conn.transaction():
                expired = await offline.take_expired(conn, limit=PURGE_BATCH)
                told = 0
                for message in expired:
                    if await tell_sender(conn, self.settings, message, expiry_text(message)):
                        told += 1
            removed += len(expired)
            self.stats.expired += len(expired)
            self.stats.notices += told
            if len(expired) < PURGE_BATCH:
                break
        if removed:
            log.info("msilo: purged %d expired offline message(s)", removed)
        return removed

    async def _refused_for_good(
        self, conn: Executor, recipient: str, failed: offline.InFlight, back: list[int]
    ) -> bool:
        """The policy for a message the client refuses (``failed``, first of ``back``): a
        permanent refusal counts; at IMSTACK_MSILO_MAX_ATTEMPTS of them the message is
        deleted, its sender told, and the rest of ``back`` (not sent behind it) goes back
        to 'stored' to be offered at once. True when it was given up."""
        if failed.outbound_status is None or not is_permanent(failed.last_status):
            return False
        refusals = await offline.count_refusal(conn, failed.id)
        limit = self.settings.msilo_max_attempts
        if limit == 0 or refusals < limit:
            return False
        message = await offline.give_up(conn, failed.id)
        rest = [i for i in back if i != failed.id]
        if rest:
            await offline.restore(conn, rest, failed=None, status=None, reason=None, retry_in=0)
        self.stats.failed += 1  # a failed attempt, as any refusal
        self.stats.undeliverable += 1
        log.warning(
            "msilo: message %d for %s given up after %d refusal(s) (last %s %s)",
            failed.id,
            recipient,
            refusals,
            failed.last_status,
            failed.last_reason,
        )
        if message is not None:
            text = refusal_text(message, failed.last_status, failed.last_reason)
            if await tell_sender(conn, self.settings, message, text):
                self.stats.notices += 1
        return True

    # -- one recipient ----------------------------------------------------------------

    async def pump(self, recipient: str) -> None:
        """Apply the outcomes of ``recipient``'s messages in flight, then top the window up
        (if registered): one transaction, and more (each one statement under the lock)
        while the window has room — a first small step when nothing was in flight, so
        that the first delivery goes out while the rest is queued."""
        room = await self._pump_step(recipient)
        while room > 0:
            room = await self._fill(recipient, room)

    async def _fill(self, recipient: str, room: int) -> int:
        """Queue up to ``room`` more of ``recipient``'s messages; the room left, if worth
        another step (0 when the backlog or the byte budget ran out)."""
        async with self.pool.acquire() as conn, conn.transaction():
            await offline.lock_delivery(conn, recipient)
            # A replica may have queued meanwhile: never more than WINDOW in flight.
            room = min(room, WINDOW - await offline.count_in_flight(conn, recipient))
            if room <= 0:
                return 0
            queued = await self._queue(conn, recipient, room)
        if len(queued) > REFILL or recipient not in self._refill_at:
            # (Otherwise the mark is earlier, among the rows queued before: a look too
            # early costs one read, never a delivery.)
            self._mark_refill(recipient, [], queued)
        return room - len(queued) if len(queued) == room else 0

    async def _queue(self, conn: Executor, recipient: str, limit: int) -> list[int]:
        """Queue up to ``limit`` of ``recipient``'s messages (one statement) and wake the
        relay; their outbound ids."""
        heads = await offline.next_window_heads(conn, recipient, limit=limit, max_bytes=STEP_BYTES)
        add_date = self.settings.msilo_add_date
        parts: dict[tuple[datetime, str], tuple[bytes, str]] = {}  # bursts share a second
        for head in heads:
            key = (head.received_at.replace(microsecond=0), head.content_type)
            if key not in parts:
                prefix = body_prefix(head.received_at, head.content_type, add_date=add_date)
                parts[key] = (prefix, http_date(head.received_at))
        formatted = [parts[(h.received_at.replace(microsecond=0), h.content_type)] for h in heads]
        queued = await offline.queue_window(
            conn,
            [h.id for h in heads],
            prefixes=[f[0] for f in formatted],
            dates=[f[1] for f in formatted],
            headers=[GENERATED],
            order=order_key(recipient),
        )
        if queued:
            await notify(conn, QUEUED_CHANNEL, "queued", queued[0])
            self.stats.queued += len(queued)
        return queued

    def _mark_refill(
        self, recipient: str, flying: list[offline.InFlight], queued: list[int]
    ) -> None:
        """Remember after which outcome ``recipient``'s window needs the next look: when
        REFILL of its rows in flight are left (with fewer in flight, half of them: the
        backlog ends, or large bodies make a small window)."""
        rows = [
            r.outbound_id
            for r in flying
            if r.outbound_id is not None and r.outbound_status in ("queued", "sending")
        ]
        rows += queued
        if not rows:
            self._refill_at.pop(recipient, None)
        elif len(rows) > REFILL:
            self._refill_at[recipient] = rows[len(rows) - REFILL - 1]
        else:
            self._refill_at[recipient] = rows[(len(rows) - 1) // 2]

    async def _pump_step(self, recipient: str) -> int:
        """The first step of :meth:`pump`: apply the outcomes, then queue messages when no
        more than REFILL are in flight; the room left in the window for :meth:`_fill`."""
        async with self.pool.acquire() as conn, conn.transaction():
            await offline.lock_delivery(conn, recipient)
            flying = await offline.in_flight(conn, recipient)
            delivered: list[int] = []
            back: list[int] = []
            failed: offline.InFlight | None = None
            still = 0
            cancel: dict[int, int] = {}  # outbound id -> message id, behind a failure
            for row in flying:
                if row.outbound_status == "delivered":
                    delivered.append(row.id)
                elif failed is None and row.outbound_status in ("failed", None):
                    failed = row
                    back.append(row.id)
                elif failed is None or row.outbound_status == "sending":
                    still += 1  # queued or being sent (behind a failure: the relay ends it)
                elif row.outbound_status == "queued" and row.outbound_id is not None:
                    cancel[row.outbound_id] = row.id  # behind a failure, not claimed yet
                else:
                    back.append(row.id)  # behind a failure, finished unsent
            if cancel:
                withdrawn = await cancel_queued(conn, list(cancel))
                back += [cancel[i] for i in withdrawn]
                still += len(cancel) - len(withdrawn)
                back.sort()
            if delivered:
                self.stats.delivered += await offline.delete_messages(conn, delivered)
                log.debug("msilo: %d message(s) delivered to %s", len(delivered), recipient)
            if failed is not None and await self._refused_for_good(conn, recipient, failed, back):
                if still:
                    return 0  # rows behind it are still being ended: their outcome tops up
                failed = None
            if failed is not None:
                lost = failed.outbound_status is None
                await offline.restore(
                    conn,
                    back,
                    failed=failed.id,
                    status=None if lost else failed.last_status,
                    reason="lost" if lost else failed.last_reason,
                    retry_in=0 if lost else self.settings.msilo_retry_interval,
                )
                self.stats.failed += 0 if lost else 1
                log.info(
                    "msilo: message %d for %s failed (%s %s); it and %d later kept for a retry",
                    failed.id,
                    recipient,
                    failed.last_status,
                    failed.last_reason,
                    len(back) - 1,
                )
                if not lost:
                    return 0
            if still > REFILL or (failed is not None and still):
                self._mark_refill(recipient, flying, [])
                return 0
            limit = WINDOW - still if still else min(FIRST_STEP, WINDOW)
            queued = await self._queue(conn, recipient, limit)
            self._mark_refill(recipient, flying, queued)
            if len(queued) < limit:
                return 0  # the backlog (or the byte budget) ran out
            return WINDOW - still - len(queued)
