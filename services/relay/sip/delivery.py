"""Outbound delivery: send the MESSAGEs workers queued in ``outbound_messages``.

Woken by NOTIFY on ``outbound`` (and a slow poll, so a lost NOTIFY only costs latency),
the worker claims queued rows (``FOR UPDATE SKIP LOCKED``, so relay replicas never send a
row twice), marks them 'sending' and commits; then each row is sent to every binding of
its AoR like a forwarded request, and the outcome is written back and NOTIFYed on
``outbound_done``. The contract is in ``migrations/0003_outbound_messages.sql``.

Rows claimed together that carry the same MESSAGE for different AoRs (a room's fan-out:
same From, body, Content-Type and headers; no ``order_key``) are sent by ONE task: the lines
the copies share are checked and put together once (:class:`SameMessage`), each copy gets
its own Via, From tag, To, Call-ID and Request-URI and goes out at once, without a task or
an await of its own; each outcome is recorded as its final response arrives. A copy for an
AoR with no binding, several bindings or a flow that is gone takes the general way. The
bindings of all the AoRs are looked up at once (those not in memory with one query).

A fan-out row (``recipients``, ``migrations/0015_outbound_fanout.sql``: one row per room
message, not one per copy) is claimed once and sent the same way to each recipient not yet
in ``recipients_done``; the outcomes are written a batch at a time (the AoRs appended to
``recipients_done``, the copies that found their AoR unreachable stored offline in the same
transaction) and the row is finished with its last batch. A relay that dies mid-fan-out
leaves the row 'sending': the next claim sends only to the recipients not recorded yet.

Rows of one ordered chain (``order_key``, e.g. msilo's window of one recipient's stored
messages, ``migrations/0009_scheduled_messages.sql``) are sent by one task, one after the
other: the next only after the previous got a 2xx. When one fails, the rest of the chain
is finished as failed without being sent, so nothing overtakes it. Other rows (room
fan-out, notices) are sent concurrently, each by a task of its own.

Pipelining: when the recipient has a single binding on a reliable, ordered transport (a
TCP or TLS connection this relay holds), up to :data:`PIPELINE` rows of a chain are in
flight at once on that connection, written in order (the stream keeps that order; each
is its own transaction); rows claimed while the pipeline waits for an answer go out at
once. Outcomes are recorded in chain order. When row k fails while
k+1.. are in flight, nothing more is sent; the rows in flight are waited for, and each is
recorded as it ended: those answered 2xx are delivered (the UA has them), k and every later
one not delivered are failed, and the rest of the chain is finished unsent. msilo deletes
the delivered ones and keeps k and the other undelivered ones stored, in order, for the
next attempt (a UA that refused k yet accepted k+1 has shown k+1 first: the price of not
waiting a round trip per message; Kamailio's msilo m_dump sends all stored messages
without waiting at all). With several bindings or over UDP (which may reorder or lose, and
a retransmission of row k would arrive after k+1), a chain is sent one row at a time as
above.

Outcomes are written by one writer task: everything finished while the previous write was
in progress goes into the next one (one UPDATE, one NOTIFY per batch), so a burst costs a
few transactions instead of one per message, and a single delivery is still written at once.
When the database is unavailable (a restart), looking up the recipient before sending and
writing outcomes are retried with a backoff rather than given up: a row left 'sending'
would hold back its chain for the whole lease, and one already delivered would be sent
twice.

A relay that starts puts back to 'queued' the rows a previous run of the same
``relay_instance`` (host:sip_port) left 'sending' when it was killed: they are sent again
at once rather than after the lease (at least once, as after the lease: one the killed
relay had sent but not recorded arrives twice).

A failed row queued by the control API (source ``STORE_ON_FAILURE_SOURCE``) is stored in
the offline store in the same transaction as its outcome, for msilo to deliver later.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import secrets
from collections import deque
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

from services.relay.sip.edge import SipEdge, format_host
from services.relay.sip.handover import RELAY_WRITTEN_HEADERS
from services.relay.sip.proxy import Fork, Target
from shared.db.listen import Listener, Notification
from shared.db.locations import Binding, delete_expired
from shared.db.offline import store_message
from shared.db.outbound import (
    FANOUT_QUEUED,
    FANOUT_STORE_STATUSES,
    QUEUED_CHANNEL,
    STORE_ON_FAILURE_SOURCE,
    FanoutProgress,
    OutboundMessage,
    Outcome,
    cancel_chain,
    claim_batch,
    claim_fanout,
    finish_many,
    notify_finished,
    purge_finished,
    record_fanout,
    release_previous_runs,
)
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup
from shared.db.types import Executor
from shared.sip.errors import LocalProtocolError
from shared.sip.headers import NameAddr
from shared.sip.message import Headers, SipRequest, SipResponse, canonical_name

log = logging.getLogger(__name__)

BATCH = 500  # rows claimed at once (one step of an msilo window)
#: Seconds after which a row left 'sending' by a dead relay is sent again: longer than
#: any transaction (64*T1 = 32 s) plus margin.
LEASE = 120.0
GATHER = 0.005  # seconds the outcome writer pauses after a write
#: Seconds before retrying a database step of a delivery, doubling up to the maximum.
RETRY_BACKOFF = 0.2
MAX_RETRY_BACKOFF = 5.0
#: Rows of a chain in flight at once on a single reliable, ordered binding (TCP/TLS):
#: enough that a drain is bound by the relay's CPU, not by round trips.
PIPELINE = 256


#: The lines build_request writes itself, and their lookup keys (Headers.with_keys).
_OWN_KEYS = ("max-forwards", "from", "to", "call-id", "cseq", "content-type")


def build_request(edge: SipEdge, message: OutboundMessage) -> SipRequest:
    """The MESSAGE for one row (LocalProtocolError / ValueError when a field is unusable)."""
    to_uri = f"sip:{message.to_aor}"
    token = secrets.token_hex(20)  # From tag (16 hex digits) and Call-ID (24): one read
    sender = NameAddr(message.from_uri, message.from_display, (("tag", token[:16]),))
    headers = Headers.with_keys(
        [
            ("Max-Forwards", "70"),
            ("From", str(sender)),
            ("To", f"<{to_uri}>"),  # str(NameAddr(to_uri))
            ("Call-ID", f"{token[16:]}@{format_host(edge.public_host)}"),
            ("CSeq", "1 MESSAGE"),
            ("Content-Type", message.content_type),
        ],
        _OWN_KEYS,
    )
    for name, value in message.extra_headers:
        if canonical_name(name).lower() not in RELAY_WRITTEN_HEADERS:
            headers.add(name, value)
    _check_fields(message)
    return SipRequest(method="MESSAGE", uri=to_uri, headers=headers, body=message.body)


_GOOD_NAMES: set[str] = set()  # extra header names already checked (they repeat)


def _check_fields(message: OutboundMessage) -> None:
    """LocalProtocolError when a row's field would inject header lines (CR/LF) or a header
    name is not one: what serialising the request would find, without serialising it."""
    values = [message.from_uri, message.from_display or "", message.content_type]
    for name, value in message.extra_headers:
        if name not in _GOOD_NAMES:
            if not name or any(c in name for c in " \t\r\n:"):
                raise LocalProtocolError(f"invalid header name {name!r}")
            if len(_GOOD_NAMES) < 1024:
                _GOOD_NAMES.add(name)
        values.append(value)
    joined = "".join(values)  # one scan for line breaks, then say which field had one
    if "\r" not in joined and "\n" not in joined:
        return
    for value in values[:3]:
        if "\r" in value or "\n" in value:
            raise LocalProtocolError("line break in a header field")
    for name, value in message.extra_headers:
        if "\r" in value or "\n" in value:
            raise LocalProtocolError(f"invalid characters in header {name!r}")


def same_message_key(message: OutboundMessage) -> tuple[object, ...]:
    """What rows carrying the same MESSAGE (bar the recipient) have in common."""
    return (
        message.from_uri,
        message.from_display,
        message.content_type,
        message.body,
        message.extra_headers,
        message.source,
    )


class SameMessage:
    """One MESSAGE for many AoRs (rows equal by :func:`same_message_key`): the shared lines
    are checked and put together once; :meth:`request` gives each copy its own Via, From
    tag, To, Call-ID and Request-URI — what :func:`build_request` and
    :func:`services.relay.sip.proxy.branch_request` would have made of the row."""

    def __init__(self, edge: SipEdge, message: OutboundMessage) -> None:
        _check_fields(message)  # LocalProtocolError for every copy alike
        token = secrets.token_hex(16)
        self.tag = token[:8]  # + a counter: unique From tags (16 hex digits + n)
        self.call_id = f"{token[8:]}-"  # + counter @ host: unique Call-IDs
        self.host = format_host(edge.public_host)
        # str(NameAddr(uri, display, (("tag", t),))) for a token t, as build_request has it.
        self.from_head = f"{NameAddr(message.from_uri, message.from_display)};tag="
        self.content_type = message.content_type
        self.body = message.body
        self.extra: list[tuple[str, str]] = []
        for name, value in message.extra_headers:
            canonical = canonical_name(name)
            if canonical.lower() not in RELAY_WRITTEN_HEADERS:
                self.extra.append((canonical, value))
        self.keys = ("via", *_OWN_KEYS, *(name.lower() for name, _ in self.extra))
        self.count = 0

    def request(self, to_aor: str, uri: str, via: str) -> SipRequest:
        self.count += 1
        n = f"{self.count:08x}"
        headers = Headers.with_keys(
            [
                ("Via", via),
                ("Max-Forwards", "70"),
                ("From", f"{self.from_head}{self.tag}{n}"),
                ("To", f"<sip:{to_aor}>"),
                ("Call-ID", f"{self.call_id}{n}@{self.host}"),
                ("CSeq", "1 MESSAGE"),
                ("Content-Type", self.content_type),
                *self.extra,
            ],
            self.keys,
        )
        return SipRequest(method="MESSAGE", uri=uri, headers=headers, body=self.body)


@dataclass
class _Chain:
    """The rows of one order_key this relay is sending, in id order."""

    key: str
    rows: deque[OutboundMessage] = field(default_factory=deque)
    last_id: int = 0  # the highest id ever queued on this chain
    #: Set when rows are added: a pipeline waiting for an answer sends them meanwhile.
    added: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class _Cancel:
    key: str
    after: int  # the failed row


class OutcomeWriter:
    """Writes delivery outcomes in batches: one transaction per batch, started as soon as
    the previous one ended."""

    def __init__(self, worker: DeliveryWorker) -> None:
        self.worker = worker
        self.outcomes: list[Outcome] = []
        self.cancels: list[_Cancel] = []
        #: Failed rows of the control API, stored offline with their outcome.
        self.stores: list[OutboundMessage] = []
        #: Outcomes of fan-out copies by row, and how many copies each row still awaits.
        self.fanout: dict[int, FanoutProgress] = {}
        self.fanout_left: dict[int, int] = {}
        #: Fan-out copies that found their AoR unreachable, stored offline with the outcome.
        self.fanout_stores: list[tuple[OutboundMessage, str]] = []
        self.backoff = RETRY_BACKOFF
        self.ready = asyncio.Event()
        self.written = 0  # outcomes recorded (for tests and logs)

    def add(self, outcome: Outcome, *, store: OutboundMessage | None = None) -> None:
        self.outcomes.append(outcome)
        if store is not None:
            self.stores.append(store)
        self.ready.set()

    def begin_fanout(self, message: OutboundMessage, copies: int) -> None:
        """Fan-out row ``message`` sends ``copies`` copies now (none: finish it)."""
        if copies:
            self.fanout_left[message.id] = copies
            return
        self._progress(message.id).final = True
        self.ready.set()

    def add_copy(self, message: OutboundMessage, aor: str, status: int) -> None:
        """The outcome of the copy of fan-out row ``message`` for ``aor``."""
        progress = self._progress(message.id)
        progress.done.append(aor)
        if 200 <= status < 300:
            progress.delivered += 1
        else:
            progress.last_failure = status
            if status in FANOUT_STORE_STATUSES:
                self.fanout_stores.append((message, aor))
        left = self.fanout_left[message.id] - 1
        if left:
            self.fanout_left[message.id] = left
        else:
            del self.fanout_left[message.id]
            progress.final = True
        self.ready.set()

    def _progress(self, row_id: int) -> FanoutProgress:
        progress = self.fanout.get(row_id)
        if progress is None:
            progress = self.fanout[row_id] = FanoutProgress(row_id)
        return progress

    def cancel(self, key: str, after: int) -> None:
        self.cancels.append(_Cancel(key, after))
        self.ready.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Until ``stop`` and nothing is left to write (or the deliveries are gone)."""
        while True:
            if not self.outcomes and not self.cancels and not self.fanout:
                if stop.is_set() and not self.worker.in_flight:
                    return
                self.ready.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.ready.wait(), 0.5)
                continue
            if self.cancels:
                # No claim in between: rows of the chain claimed before are covered by
                # the cancellation, rows claimed after it can no longer be claimed.
                async with self.worker.claiming:
                    await self.flush()
            else:
                await self.flush()
            # Let the outcomes of a burst gather: fewer, bigger writes (and fewer wake-ups
            # of the workers); a lone outcome is still written at once.
            await asyncio.sleep(GATHER)

    async def flush(self) -> None:
        outcomes, self.outcomes = self.outcomes, []
        cancels, self.cancels = self.cancels, []
        stores, self.stores = self.stores, []
        fanout, self.fanout = self.fanout, {}
        fanout_stores, self.fanout_stores = self.fanout_stores, []
        progress = list(fanout.values())
        edge = self.worker.edge
        try:
            async with edge.pool.acquire() as conn:
                if not cancels and not stores and not fanout_stores and not progress:
                    await finish_many(conn, outcomes)  # atomic: one statement per batch
                elif not cancels and not stores and not fanout_stores and not outcomes:
                    await record_fanout(conn, progress)  # atomic: one statement
                else:
                    async with conn.transaction():
                        # The failed row's own outcome is in ``outcomes`` (written first).
                        await finish_many(conn, outcomes)
                        await record_fanout(conn, progress)
                        for message, aor in fanout_stores:
                            await self._store_copy(conn, message, aor)
                        cancelled: list[int] = []
                        for cancel in cancels:
                            cancelled += await cancel_chain(
                                conn,
                                cancel.key,
                                after=cancel.after,
                                claimed_by=self.worker.claimed_by,
                            )
                        await notify_finished(conn, cancelled)
                        for message in stores:
                            await self._store_offline(conn, message)
        except DATABASE_ERRORS as exc:
            # Keep them for the next write (the database may be restarting): given up,
            # the rows would stay 'sending' for the lease and then be sent twice.
            self.outcomes[:0] = outcomes
            self.cancels[:0] = cancels
            self.stores[:0] = stores
            self.fanout_stores[:0] = fanout_stores
            for row_id, old in fanout.items():
                new = self.fanout.get(row_id)
                if new is not None:  # (outcomes that arrived meanwhile come after)
                    old.done += new.done
                    old.delivered += new.delivered
                    old.final = old.final or new.final
                    old.last_failure = new.last_failure or old.last_failure
                self.fanout[row_id] = old
            log.warning(
                "%d outbound outcome(s) not recorded yet (%s); retrying in %.1fs",
                len(outcomes),
                exc,
                self.backoff,
            )
            await asyncio.sleep(self.backoff)
            self.backoff = min(self.backoff * 2, MAX_RETRY_BACKOFF)
            return
        self.backoff = RETRY_BACKOFF
        self.written += len(outcomes) + sum(len(p.done) for p in progress)
        for cancel in cancels:
            if self.worker.failed_chains.get(cancel.key) == cancel.after:
                del self.worker.failed_chains[cancel.key]

    async def _store_copy(self, conn: Executor, message: OutboundMessage, aor: str) -> None:
        """A fan-out copy ``aor`` could not take now: into the offline store, as imc stores
        the copies of members with no binding (no display name, no extra headers)."""
        settings = self.worker.edge.settings
        stored = await store_message(
            conn,
            recipient=aor,
            sender_uri=message.from_uri,
            sender_display=None,
            call_id="",
            content_type=message.content_type,
            body=message.body,
            extra_headers=[],
            lifetime=settings.msilo_expire,
            max_messages=settings.msilo_max_messages,
        )
        if stored is None:
            log.info("outbound message %d for %s not stored: offline mailbox full", message.id, aor)

    async def _store_offline(self, conn: Executor, message: OutboundMessage) -> None:
        """A failed send of the control API: into the offline store (msilo delivers it)."""
        settings = self.worker.edge.settings
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


class DeliveryWorker:
    def __init__(self, edge: SipEdge, database_url: str, poll_interval: float) -> None:
        self.edge = edge
        self.database_url = database_url
        self.poll_interval = poll_interval
        self.wakeup = Wakeup()
        self.in_flight: set[asyncio.Task[None]] = set()
        self.chains: dict[str, _Chain] = {}
        #: order_key -> the row that failed, until the rest of its chain is cancelled in
        #: the database: later rows of that chain claimed meanwhile are not sent.
        self.failed_chains: dict[str, int] = {}
        self.claiming = asyncio.Lock()
        self.writer = OutcomeWriter(self)
        #: Who claimed a row: this run of this relay (a restarted relay is someone else, so
        #: it never sends a chain's later rows while the earlier ones wait for their lease).
        self.claimed_by = f"{edge.relay_instance}/{secrets.token_hex(6)}"
        #: Whether the rows a previous run of this relay left 'sending' were put back.
        self.released = False
        #: Fan-out rows NOTIFYed since the last claim (claimed by id), and whether anything
        #: else woke us (a general claim: :func:`claim_batch`).
        self.fanout_ids: list[int] = []
        self.scan = True

    async def run(self, stop: asyncio.Event) -> None:
        listener = Listener(
            self.database_url, [QUEUED_CHANNEL], self._on_notify, catch_up=self._kick
        )
        listening = asyncio.create_task(listener.run(stop), name="sip-delivery-listen")
        writing = asyncio.create_task(self.writer.run(stop), name="sip-delivery-outcomes")
        try:
            while True:
                claimed = await self._claim()
                if claimed == BATCH:
                    self.scan = True
                    continue  # more may be waiting
                reason = await self.wakeup.wait(self.poll_interval, stop)
                if reason is WakeReason.STOP:
                    break
                if reason is WakeReason.TIMEOUT:
                    self.scan = True
        finally:
            await listening
            if self.in_flight:
                await asyncio.wait(self.in_flight)
            await writing

    def _on_notify(self, notification: Notification) -> None:
        if notification.type == FANOUT_QUEUED and notification.id is not None:
            try:
                self.fanout_ids.append(int(notification.id))
            except ValueError:
                self.scan = True
        else:
            self.scan = True
        self.wakeup.wake()

    async def _kick(self) -> None:
        self.scan = True
        self.wakeup.wake()

    async def _claim(self) -> int:
        async with self.claiming:
            try:
                async with self.edge.pool.acquire() as conn:
                    released = 0
                    fanout_ids, self.fanout_ids = self.fanout_ids, []
                    scan, self.scan = self.scan, False
                    if self.released and not scan:
                        # Only fan-out rows were queued: claimed by id (one statement).
                        if not fanout_ids:
                            return 0
                        messages = await claim_fanout(conn, fanout_ids, claimed_by=self.claimed_by)
                    elif self.released:
                        # One statement, atomic by itself: no BEGIN/COMMIT round trips.
                        messages = await claim_batch(
                            conn, limit=BATCH, lease=LEASE, claimed_by=self.claimed_by
                        )
                    else:
                        async with conn.transaction():
                            released = await release_previous_runs(
                                conn, self.edge.relay_instance, self.claimed_by
                            )
                            messages = await claim_batch(
                                conn, limit=BATCH, lease=LEASE, claimed_by=self.claimed_by
                            )
            except DATABASE_ERRORS as exc:
                log.warning("cannot claim outbound messages: %s", exc)
                self.scan = True  # (what was NOTIFYed is claimed by the next scan)
                return 0
            if not self.released:
                self.released = True
                if released:
                    log.warning(
                        "%d outbound message(s) left 'sending' by a previous run of this "
                        "relay are sent again",
                        released,
                    )
            same: dict[tuple[object, ...], list[OutboundMessage]] = {}
            for message in messages:
                if message.recipients is not None:
                    self._start(self._deliver_fanout(message), f"sip-deliver-{message.id}*")
                elif message.order_key is None:
                    same.setdefault(same_message_key(message), []).append(message)
                else:
                    self._dispatch(message)
            for rows in same.values():
                if len(rows) == 1:
                    self._dispatch(rows[0])
                else:
                    self._start(self._deliver_same(rows), f"sip-deliver-{rows[0].id}+")
        return len(messages)

    def _dispatch(self, message: OutboundMessage) -> None:
        key = message.order_key
        if key is None:
            self._start(self._deliver(message), f"sip-deliver-{message.id}")
            return
        failed = self.failed_chains.get(key)
        if failed is not None and message.id > failed:
            return  # an earlier row failed: the pending cancellation finishes it unsent
        chain = self.chains.get(key)
        if chain is None:
            chain = self.chains[key] = _Chain(key)
            self._start(self._run_chain(chain), f"sip-deliver-chain-{message.id}")
        if message.id > chain.last_id:  # (a row re-claimed after its lease is queued already)
            chain.rows.append(message)
            chain.last_id = message.id
            chain.added.set()

    def _start(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)

    async def _deliver(self, message: OutboundMessage) -> None:
        status, reason = await self._send_logged(message)
        self._record(message, status, reason)

    def _record(self, message: OutboundMessage, status: int, reason: str) -> None:
        delivered = 200 <= status < 300
        store = not delivered and message.source == STORE_ON_FAILURE_SOURCE
        self.writer.add(
            Outcome(message.id, delivered, status, reason), store=message if store else None
        )

    async def _deliver_same(self, rows: list[OutboundMessage]) -> None:
        """Send rows carrying the same MESSAGE to their AoRs (see :class:`SameMessage`): a
        copy for a single binding goes out at once in its own client transaction, its
        outcome recorded when its final response arrives; any other copy takes the general
        way. Returns once every copy has its outcome."""
        try:
            same = SameMessage(self.edge, rows[0])
        except (LocalProtocolError, ValueError) as exc:
            for message in rows:
                self._log_outcome(message, 500, "Unusable message")
                self._record(message, 500, f"Unusable message: {exc}"[:200])
            return
        edge = self.edge
        bindings = await self._bindings_logged([m.to_aor for m in rows], rows[0].id)
        waiting: list[asyncio.Future[Any]] = []
        for message in rows:
            targets = [Target.of(edge, binding) for binding in bindings.get(message.to_aor, ())]
            flow = targets[0].flow if len(targets) == 1 else None
            if flow is None:  # no binding, several, or its connection is gone
                waiting.append(asyncio.ensure_future(self._deliver_to(message, targets)))
                continue
            branch = edge.new_branch()
            request = same.request(message.to_aor, targets[0].uri, edge.via(flow, branch))
            final = edge.transactions.send_request(request, flow, branch=branch).final
            final.add_done_callback(functools.partial(self._same_finished, message))
            waiting.append(final)
        await asyncio.wait(waiting)

    def _same_finished(self, message: OutboundMessage, final: asyncio.Future[SipResponse]) -> None:
        if final.cancelled():
            return  # (shutdown: the row stays 'sending' and is sent again by the next run)
        response = final.result()
        self._log_outcome(message, response.status, response.reason)
        self._record(message, response.status, response.reason)

    async def _deliver_fanout(self, message: OutboundMessage) -> None:
        """Send fan-out row ``message`` to its recipients still owed a copy, as
        :meth:`_deliver_same` sends rows carrying the same MESSAGE; each outcome goes to the
        writer as its final response arrives (the row is finished with the last)."""
        writer = self.writer
        pending = message.pending_recipients()
        try:
            same = SameMessage(self.edge, message)
        except (LocalProtocolError, ValueError) as exc:
            log.warning("outbound message %d not sent: unusable (%s)", message.id, exc)
            writer.begin_fanout(message, len(pending))
            for aor in pending:
                writer.add_copy(message, aor, 500)
            return
        writer.begin_fanout(message, len(pending))
        if not pending:
            return
        edge = self.edge
        bindings = await self._bindings_logged(pending, message.id)
        waiting: list[asyncio.Future[Any]] = []
        for aor in pending:
            targets = [Target.of(edge, binding) for binding in bindings.get(aor, ())]
            flow = targets[0].flow if len(targets) == 1 else None
            if flow is None:  # no binding, several, or its connection is gone
                waiting.append(asyncio.ensure_future(self._fanout_to(message, aor, targets)))
                continue
            branch = edge.new_branch()
            request = same.request(aor, targets[0].uri, edge.via(flow, branch))
            final = edge.transactions.send_request(request, flow, branch=branch).final
            final.add_done_callback(functools.partial(self._copy_finished, message, aor))
            waiting.append(final)
        await asyncio.wait(waiting)

    def _copy_finished(
        self, message: OutboundMessage, aor: str, final: asyncio.Future[SipResponse]
    ) -> None:
        if final.cancelled():
            return  # (shutdown: the row stays 'sending'; the next run sends what is left)
        self.writer.add_copy(message, aor, final.result().status)

    async def _fanout_to(self, message: OutboundMessage, aor: str, targets: list[Target]) -> None:
        copy = dataclasses.replace(message, to_aor=aor, recipients=None, recipients_done=())
        status, reason = await self._fork(copy, targets)
        self._log_outcome(copy, status, reason)
        self.writer.add_copy(message, aor, status)

    async def _deliver_to(self, message: OutboundMessage, targets: list[Target]) -> None:
        status, reason = await self._fork(message, targets)
        self._log_outcome(message, status, reason)
        self._record(message, status, reason)

    async def _run_chain(self, chain: _Chain) -> None:
        """Send the chain's rows in order, each after the previous got a 2xx, or pipelined
        on a single reliable binding; stop at the first failure."""
        try:
            while chain.rows:
                head = chain.rows[0]
                targets = await self._targets_logged(head)
                flow = targets[0].flow if len(targets) == 1 else None
                if flow is not None and flow.reliable and flow.connection_id is not None:
                    if not await self._pipeline(chain, targets, flow.connection_id):
                        return
                    continue
                chain.rows.popleft()
                status, reason = await self._fork(head, targets)
                self._log_outcome(head, status, reason)
                if not self._chain_outcome(chain, head, status, reason):
                    self._end_chain(chain, head.id)
                    return
        finally:
            del self.chains[chain.key]
            self.wakeup.wake()  # later rows of the chain may wait for this one to end

    async def _pipeline(self, chain: _Chain, targets: list[Target], connection_id: str) -> bool:
        """Send the chain's rows for the same AoR on one TCP/TLS connection, up to
        :data:`PIPELINE` in flight, written in order; record the outcomes in order.
        False when one failed (the chain is ended), True when the rows for this binding
        are done (more may follow another way)."""
        to_aor = chain.rows[0].to_aor
        transports = self.edge.transports
        window: deque[tuple[OutboundMessage, asyncio.Task[tuple[int, str]]]] = deque()
        failed: int | None = None
        loop = asyncio.get_running_loop()
        try:
            while True:
                while (
                    failed is None
                    and chain.rows
                    and len(window) < PIPELINE
                    and chain.rows[0].to_aor == to_aor
                    and transports.has_connection(connection_id)
                ):
                    message = chain.rows.popleft()
                    # Tasks start in creation order, each writes its request before its
                    # first wait: the rows go on the connection in chain order.
                    window.append((message, loop.create_task(self._fork(message, targets))))
                if not window:
                    break
                message, task = window[0]
                if not task.done() and failed is None and len(window) < PIPELINE:
                    # Rows claimed while we wait go out at once, not after this answer.
                    chain.added.clear()
                    added = loop.create_task(chain.added.wait())
                    await asyncio.wait((task, added), return_when=asyncio.FIRST_COMPLETED)
                    added.cancel()
                    if not task.done():
                        continue
                status, reason = await task
                window.popleft()
                self._log_outcome(message, status, reason)
                if not self._chain_outcome(chain, message, status, reason) and failed is None:
                    failed = message.id  # send no more; record those in flight as they end
        finally:
            for _message, task in window:  # cancelled (shutdown): they end with us
                task.cancel()
        if failed is not None:
            self._end_chain(chain, failed)
            return False
        return True

    def _chain_outcome(
        self, chain: _Chain, message: OutboundMessage, status: int, reason: str
    ) -> bool:
        """Record a chain row's outcome; whether it was delivered. A failure holds back the
        chain's later rows claimed from now on."""
        delivered = 200 <= status < 300
        self.writer.add(Outcome(message.id, delivered, status, reason))
        if not delivered and chain.key not in self.failed_chains:
            self.failed_chains[chain.key] = message.id
        return delivered

    def _end_chain(self, chain: _Chain, failed: int) -> None:
        """Row ``failed`` of the chain failed: finish its later rows unsent."""
        self.failed_chains[chain.key] = failed
        chain.rows.clear()
        self.writer.cancel(chain.key, failed)

    async def _targets_logged(self, message: OutboundMessage) -> list[Target]:
        """Where ``message`` goes (its AoR's bindings), retrying while the database is
        unavailable (nothing sent yet)."""
        backoff = RETRY_BACKOFF
        while True:
            try:
                return await self._targets(message.to_aor)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "outbound message %d: database unavailable (%s); retrying in %.1fs",
                    message.id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF)

    async def _bindings_logged(self, aors: list[str], first_id: int) -> dict[str, list[Binding]]:
        """The bindings of ``aors`` (those not in memory read with one query), retrying
        while the database is unavailable (nothing sent yet)."""
        backoff = RETRY_BACKOFF
        while True:
            try:
                return await self.edge.bindings.get_many(aors)
            except DATABASE_ERRORS as exc:
                log.warning(
                    "outbound messages %d..: database unavailable (%s); retrying in %.1fs",
                    first_id,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_RETRY_BACKOFF)

    async def _send_logged(self, message: OutboundMessage) -> tuple[int, str]:
        targets = await self._targets_logged(message)
        status, reason = await self._fork(message, targets)
        self._log_outcome(message, status, reason)
        return status, reason

    def _log_outcome(self, message: OutboundMessage, status: int, reason: str) -> None:
        log.debug(
            "outbound message %d to %s: %s %d %s",
            message.id,
            message.to_aor,
            "delivered" if 200 <= status < 300 else "failed",
            status,
            reason,
        )

    async def _targets(self, to_aor: str) -> list[Target]:
        bindings = await self.edge.bindings.get(to_aor)
        return [Target.of(self.edge, binding) for binding in bindings]

    async def _fork(self, message: OutboundMessage, targets: list[Target]) -> tuple[int, str]:
        """Send ``message`` to ``targets`` (written before the first wait); its outcome."""
        try:
            request = build_request(self.edge, message)
        except (LocalProtocolError, ValueError) as exc:
            return 500, f"Unusable message: {exc}"[:200]
        if not targets:
            return 480, "Not Registered"
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
