"""Outbound delivery: send the MESSAGEs workers queued in ``outbound_messages``.

Woken by NOTIFY on ``outbound`` (and a slow poll, so a lost NOTIFY only costs latency),
the worker claims queued rows (``FOR UPDATE SKIP LOCKED``, so relay replicas never send a
row twice), marks them 'sending' and commits; then each row is sent to every binding of
its AoR like a forwarded request, and the outcome is written back and NOTIFYed on
``outbound_done``. The contract is in ``migrations/0003_outbound_messages.sql``.

A failed row queued by the control API (source ``STORE_ON_FAILURE_SOURCE``) is stored in
the offline store in the same transaction as its outcome, for msilo to deliver later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets

from services.relay.sip.edge import SipEdge, format_host
from services.relay.sip.handover import RELAY_WRITTEN_HEADERS
from services.relay.sip.proxy import Fork, Target
from shared.db.listen import Listener
from shared.db.locations import delete_expired, get_bindings
from shared.db.offline import store_message
from shared.db.outbound import (
    QUEUED_CHANNEL,
    STORE_ON_FAILURE_SOURCE,
    OutboundMessage,
    claim_batch,
    finish,
    purge_finished,
)
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup
from shared.db.types import Executor
from shared.sip.errors import LocalProtocolError
from shared.sip.headers import NameAddr
from shared.sip.message import Headers, SipRequest, canonical_name

log = logging.getLogger(__name__)

BATCH = 50  # rows claimed at once
#: Seconds after which a row left 'sending' by a dead relay is sent again: longer than
#: any transaction (64*T1 = 32 s) plus margin.
LEASE = 120.0
#: Seconds before retrying a database step of a delivery, doubling up to the maximum.
RETRY_BACKOFF = 0.2
MAX_RETRY_BACKOFF = 5.0


def build_request(edge: SipEdge, message: OutboundMessage) -> SipRequest:
    """The MESSAGE for one row (LocalProtocolError / ValueError when a field is unusable)."""
    to_uri = f"sip:{message.to_aor}"
    headers = Headers()
    headers.add("Max-Forwards", "70")
    sender = NameAddr(message.from_uri, message.from_display, (("tag", secrets.token_hex(8)),))
    headers.add("From", str(sender))
    headers.add("To", str(NameAddr(to_uri)))
    headers.add("Call-ID", f"{secrets.token_hex(12)}@{format_host(edge.public_host)}")
    headers.add("CSeq", "1 MESSAGE")
    headers.add("Content-Type", message.content_type)
    for name, value in message.extra_headers:
        if canonical_name(name).lower() not in RELAY_WRITTEN_HEADERS:
            headers.add(name, value)
    request = SipRequest(method="MESSAGE", uri=to_uri, headers=headers, body=message.body)
    request.to_bytes()  # raises LocalProtocolError for header injection
    return request


class DeliveryWorker:
    def __init__(self, edge: SipEdge, database_url: str, poll_interval: float) -> None:
        self.edge = edge
        self.database_url = database_url
        self.poll_interval = poll_interval
        self.wakeup = Wakeup()
        self.in_flight: set[asyncio.Task[None]] = set()

    async def run(self, stop: asyncio.Event) -> None:
        listener = Listener(
            self.database_url, [QUEUED_CHANNEL], lambda _n: self.wakeup.wake(), catch_up=self._kick
        )
        listening = asyncio.create_task(listener.run(stop), name="sip-delivery-listen")
        try:
            while True:
                claimed = await self._claim()
                if claimed == BATCH:
                    continue  # more may be waiting
                if await self.wakeup.wait(self.poll_interval, stop) is WakeReason.STOP:
                    break
        finally:
            await listening
        if self.in_flight:
            await asyncio.wait(self.in_flight)

    async def _kick(self) -> None:
        self.wakeup.wake()

    async def _claim(self) -> int:
        try:
            async with self.edge.pool.acquire() as conn, conn.transaction():
                messages = await claim_batch(conn, limit=BATCH, lease=LEASE)
        except DATABASE_ERRORS as exc:
            log.warning("cannot claim outbound messages: %s", exc)
            return 0
        for message in messages:
            task = asyncio.create_task(self._deliver(message), name=f"sip-deliver-{message.id}")
            self.in_flight.add(task)
            task.add_done_callback(self.in_flight.discard)
        return len(messages)

    async def _deliver(self, message: OutboundMessage) -> None:
        # The database may be restarting: a row left 'sending' would wait out the whole
        # LEASE (holding back its recipient's later offline messages), and one already
        # delivered would then be sent twice. So retry, with a backoff, until the database
        # answers (or the shutdown deadline cancels us; then the lease takes over).
        backoff = RETRY_BACKOFF
        while True:
            try:
                status, reason = await self._send(message)
                break
            except DATABASE_ERRORS as exc:  # before anything was sent
                log.warning(
                    "outbound message %d: database unavailable (%s); retrying in %.1fs",
                    message.id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF)
        delivered = 200 <= status < 300
        log.info(
            "outbound message %d to %s: %s %d %s",
            message.id,
            message.to_aor,
            "delivered" if delivered else "failed",
            status,
            reason,
        )
        backoff = RETRY_BACKOFF
        while True:
            try:
                async with self.edge.pool.acquire() as conn, conn.transaction():
                    await finish(
                        conn, message.id, delivered=delivered, status=status, reason=reason
                    )
                    if not delivered and message.source == STORE_ON_FAILURE_SOURCE:
                        await self._store_offline(conn, message)
                return
            except DATABASE_ERRORS as exc:
                log.warning(
                    "outbound message %d: outcome not recorded yet (%s); retrying in %.1fs",
                    message.id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF)

    async def _store_offline(self, conn: Executor, message: OutboundMessage) -> None:
        """A failed send of the control API: into the offline store (msilo delivers it)."""
        settings = self.edge.settings
        stored = await store_message(
            conn,
            recipient=message.to_aor,
            sender_uri=message.from_uri,
            sender_display=message.from_display,
            call_id=f"outbound-{message.id}",
            content_type=message.content_type,
            body=message.body,
            extra_headers=list(message.extra_headers),
            lifetime=settings.msilo_expire,
            max_messages=settings.msilo_max_messages,
        )
        if stored is None:
            log.warning(
                "outbound message %d for %s not stored: offline mailbox full",
                message.id,
                message.to_aor,
            )
        else:
            log.info("outbound message %d stored offline (id %d)", message.id, stored)

    async def _send(self, message: OutboundMessage) -> tuple[int, str]:
        try:
            request = build_request(self.edge, message)
        except (LocalProtocolError, ValueError) as exc:
            return 500, f"Unusable message: {exc}"[:200]
        bindings = await get_bindings(self.edge.pool, message.to_aor)
        if not bindings:
            return 480, "Not Registered"
        targets = [Target.of(self.edge, binding) for binding in bindings]
        result = await Fork(self.edge, request).run(targets, decrement=False)
        return result.response.status, result.response.reason


async def purge_stale_rows(edge: SipEdge, stop: asyncio.Event, interval: float) -> None:
    """Now and then: delete expired bindings (lookups ignore them anyway), finished outbound
    rows past IMSTACK_OUTBOUND_RETENTION, and close idle connections."""
    retention = edge.settings.outbound_retention
    while not stop.is_set():
        try:
            removed = await delete_expired(edge.pool)
            if removed:
                log.info("purged %d expired binding(s)", removed)
            if retention > 0:
                while (purged := await purge_finished(edge.pool, older_than=retention)) > 0:
                    log.info("purged %d finished outbound message(s)", purged)
        except DATABASE_ERRORS as exc:
            log.warning("cannot purge stale rows: %s", exc)
        edge.transports.sweep_idle()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), interval)
