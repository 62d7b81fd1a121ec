"""The msilo worker: deliver stored messages when their recipient registers, in order.

Woken by NOTIFY — ``registered`` (an AoR registered: deliver its messages, retry failed ones
at once) and ``outbound_done`` (the relay reports a delivery: delete the message after a
2xx and send the next one, or keep it for a retry) — and by timers: a sweep over registered
users with pending messages and over messages in flight (covers NOTIFYs lost while the
LISTEN connection was down, and due retries), and the purge of expired messages.

Per recipient a window of up to :data:`WINDOW` messages is in flight: they are queued at
once as one ordered chain (``order_key``), which the relay sends strictly in storage order,
each after the previous one was answered 2xx; the first failure stops the chain, and that
message and every later one of the window go back to 'stored' (in order, nothing lost,
nothing sent twice) to be offered again after the retry interval or at the next
registration. Delivered messages are deleted in batches as their outcomes arrive, and the
window is topped up once half of it is done, so the relay never runs dry during a drain.

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

from services.msilo.delivered_message import delivery_for
from services.msilo.notices import expiry_text, is_permanent, refusal_text, tell_sender
from shared.config import Settings
from shared.db import offline
from shared.db.listen import Listener, Notification
from shared.db.offline import DELIVERY_SOURCE, SCHEDULED_CHANNEL, STORED_CHANNEL, order_key
from shared.db.outbound import (
    DONE_CHANNEL,
    NewOutbound,
    cancel_queued,
    notified_ids,
    queue_messages,
)
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup
from shared.db.types import Executor

log = logging.getLogger(__name__)

REGISTERED_CHANNEL = "registered"  # the registrar NOTIFYs it with the AoR
SWEEP_BATCH = 1000  # recipients looked at per sweep query
WINDOW = 64  # a recipient's messages in flight at most
REFILL = WINDOW // 2  # top the window up when no more than this many are still in flight
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
                    next_purge = max(next_purge, next_sweep)
                    backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                wake_at = min(next_sweep, next_purge)
                if self._next_scheduled is not None:
                    wake_at = min(wake_at, self._next_scheduled)
                timeout = max(0.0, wake_at - loop.time())
                if await self.wakeup.wait(timeout, stop) is WakeReason.STOP:
                    break
        finally:
            await listening

    async def _handle_notifications(self) -> None:
        while self._done or self._registered or self._stored:
            if self._done:
                ids = sorted(self._done)
                async with self.pool.acquire() as conn:
                    recipients = await offline.recipients_of_outbound(conn, ids)
                for recipient in recipients:
                    await self.pump(recipient)
                self._done.difference_update(ids)
            if self._stored:
                aor = next(iter(self._stored))
                await self.pump(aor)
                self._stored.discard(aor)
            if self._registered:
                aor = next(iter(self._registered))
                await self.registered(aor)
                self._registered.discard(aor)

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
        (if registered): one transaction."""
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
                await offline.delete_messages(conn, delivered)
                self.stats.delivered += len(delivered)
                log.debug("msilo: %d message(s) delivered to %s", len(delivered), recipient)
            if failed is not None and await self._refused_for_good(conn, recipient, failed, back):
                if still:
                    return  # rows behind it are still being ended: their outcome tops up
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
                    return
            if still > REFILL or (failed is not None and still):
                return
            window = await offline.next_window(conn, recipient, limit=WINDOW - still)
            if not window:
                return
            deliveries = []
            for message in window:
                delivery = delivery_for(message, add_date=self.settings.msilo_add_date)
                deliveries.append(
                    NewOutbound(
                        from_uri=delivery.from_uri,
                        from_display=delivery.from_display,
                        to_aor=delivery.to_aor,
                        body=delivery.body,
                        content_type=delivery.content_type,
                        extra_headers=delivery.extra_headers,
                        source=DELIVERY_SOURCE,
                        source_id=message.id,
                        order_key=order_key(recipient),
                    )
                )
            outbound_ids = await queue_messages(conn, deliveries)
            await offline.mark_sending_many(conn, [m.id for m in window], outbound_ids)
            self.stats.queued += len(window)
