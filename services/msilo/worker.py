"""The msilo worker: deliver stored messages when their recipient registers, in order.

Woken by NOTIFY — ``registered`` (an AoR registered: deliver its messages, retry failed ones
at once) and ``outbound_done`` (the relay reports a delivery: delete the message after a
2xx and send the next one, or keep it for a retry) — and by timers: a sweep over registered
users with pending messages and over messages in flight (covers NOTIFYs lost while the
LISTEN connection was down, and due retries), and the purge of expired messages.

Per recipient only the oldest message is ever in flight: the next is queued once the
previous one was answered 2xx, so clients see their messages in storage order. Every step is
one short transaction on the recipient's head row (``FOR UPDATE SKIP LOCKED``): replicas
share the work and never both queue one message; all state is in the database, so a worker
that dies loses nothing (see ``migrations/0005_offline_messages.sql``).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import asyncpg

from services.msilo.delivered_message import delivery_for
from shared.config import Settings
from shared.db import offline
from shared.db.listen import Listener, Notification
from shared.db.offline import DELIVERY_SOURCE, OfflineState
from shared.db.outbound import DONE_CHANNEL, OutboundStatus, get_message, queue_message
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup

log = logging.getLogger(__name__)

REGISTERED_CHANNEL = "registered"  # the registrar NOTIFYs it with the AoR
SWEEP_BATCH = 1000  # recipients looked at per sweep query
ERROR_BACKOFF = 1.0  # seconds before retrying after a database error, doubling...
MAX_ERROR_BACKOFF = 30.0  # ...up to this


@dataclass
class MsiloStats:
    """Counters since start (logged; the API's statistics read the tables)."""

    queued: int = 0
    delivered: int = 0
    failed: int = 0
    expired: int = 0
    registrations: int = 0  # `registered` notifications fully handled


class MsiloWorker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, database_url: str) -> None:
        self.settings = settings
        self.pool = pool
        self.wakeup = Wakeup()
        self.listener = Listener(
            database_url,
            [REGISTERED_CHANNEL, DONE_CHANNEL],
            self._on_notify,
            catch_up=self._catch_up,
        )
        self.stats = MsiloStats()
        self._registered: set[str] = set()
        self._done: set[int] = set()
        self._sweep_now = True

    # -- wake-ups ---------------------------------------------------------------------

    def _on_notify(self, notification: Notification) -> None:
        if notification.id is None:
            return
        if notification.channel == REGISTERED_CHANNEL:
            self._registered.add(notification.id)
        elif notification.channel == DONE_CHANNEL:
            try:
                self._done.add(int(notification.id))
            except ValueError:
                return
        self.wakeup.wake()

    async def _catch_up(self) -> None:
        self._sweep_now = True
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
                    if self._sweep_now or now >= next_sweep:
                        self._sweep_now = False
                        await self.sweep()
                        next_sweep = now + self.settings.msilo_sweep_interval
                    await self._handle_notifications()
                    backoff = ERROR_BACKOFF
                except DATABASE_ERRORS as exc:
                    log.warning("msilo: database unavailable (%s); retry in %.0fs", exc, backoff)
                    # The sweep after the pause redoes whatever this pass did not finish.
                    next_sweep = now + backoff
                    next_purge = max(next_purge, next_sweep)
                    backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                timeout = max(0.0, min(next_sweep, next_purge) - loop.time())
                if await self.wakeup.wait(timeout, stop) is WakeReason.STOP:
                    break
        finally:
            await listening

    async def _handle_notifications(self) -> None:
        while self._done or self._registered:
            if self._done:
                ids = sorted(self._done)
                async with self.pool.acquire() as conn:
                    recipients = await offline.recipients_of_outbound(conn, ids)
                for recipient in recipients:
                    await self.pump(recipient)
                self._done.difference_update(ids)
            if self._registered:
                aor = next(iter(self._registered))
                await self.registered(aor)
                self._registered.discard(aor)

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
        removed = await offline.purge_expired(self.pool)
        if removed:
            self.stats.expired += removed
            log.info("msilo: purged %d expired offline message(s)", removed)
        return removed

    # -- one recipient ----------------------------------------------------------------

    async def pump(self, recipient: str) -> None:
        """Advance ``recipient``'s queue as far as it can go without waiting: apply the
        outcome of the message in flight, then queue the next one (if registered)."""
        while await self._step(recipient):
            pass

    async def _step(self, recipient: str) -> bool:
        """One transaction on the head of the queue; True when the next may follow at once.

        A delivered head is deleted and the next message queued in the same transaction:
        one commit per message instead of two.
        """
        async with self.pool.acquire() as conn, conn.transaction():
            while True:
                head = await offline.claim_head(conn, recipient)
                if head is None:
                    return False  # empty, or another worker is at it
                message = head.message
                if message.state is not OfflineState.SENDING:
                    break
                outbound = (
                    None
                    if message.outbound_id is None
                    else await get_message(conn, message.outbound_id)
                )
                if outbound is None:
                    # The outbound row vanished (deleted by hand): offer the message again.
                    await offline.mark_failed(
                        conn, message.id, status=None, reason="lost", retry_in=0
                    )
                    return True
                if outbound.status is OutboundStatus.DELIVERED:
                    await offline.delete_message(conn, message.id)
                    self.stats.delivered += 1
                    log.info(
                        "msilo: message %d delivered to %s (%s)",
                        message.id,
                        recipient,
                        outbound.last_status,
                    )
                    continue  # the next one, if any, in this transaction
                if outbound.status is OutboundStatus.FAILED:
                    await offline.mark_failed(
                        conn,
                        message.id,
                        status=outbound.last_status,
                        reason=outbound.last_reason,
                        retry_in=self.settings.msilo_retry_interval,
                    )
                    self.stats.failed += 1
                    log.info(
                        "msilo: message %d for %s failed (%s %s); kept for a retry",
                        message.id,
                        recipient,
                        outbound.last_status,
                        outbound.last_reason,
                    )
                return False  # still in flight, or failed: the rest waits (order)
            if not head.due or not head.registered:
                return False
            delivery = delivery_for(message, add_date=self.settings.msilo_add_date)
            outbound_id = await queue_message(
                conn,
                from_uri=delivery.from_uri,
                from_display=delivery.from_display,
                to_aor=delivery.to_aor,
                body=delivery.body,
                content_type=delivery.content_type,
                extra_headers=delivery.extra_headers,
                source=DELIVERY_SOURCE,
                source_id=message.id,
            )
            await offline.mark_sending(conn, message.id, outbound_id)
            self.stats.queued += 1
            return False  # its outcome arrives on outbound_done
