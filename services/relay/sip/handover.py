"""The two points where the router hands a MESSAGE to another service.

Each is ONE function, so the issue that implements the other side changes only its body:

* :func:`store_offline` — the offline store (msilo): commit an ``offline_messages`` row,
  then answer 202 Accepted (Kamailio's ``m_store`` + ``t_reply("202")``); 480 Mailbox Full
  over the quota; 503 when the database fails — never 202 for a row not committed. Stores
  arriving together share one statement and one commit (:class:`StoreBatcher`).
* :func:`deliver_to_room` — the rooms (imc): commit a ``room_inbox`` row (+ NOTIFY) for the
  room worker, then answer 202 Accepted; 503 when the database fails.

:func:`behind_stored` keeps order for a registered user whose stored messages are still
being delivered: a new MESSAGE for them is stored behind those (and msilo told at once)
instead of overtaking them.
"""

from __future__ import annotations

import asyncio
import logging
import math

import asyncpg

from shared.config import Settings
from shared.db.listen import notify
from shared.db.offline import (
    GENERATED_HEADER,
    NOTICE_SOURCE,
    STORED_CHANNEL,
    NewMessage,
    drain_pending,
    store_message,
    store_message_once,
    store_messages_once,
)
from shared.db.outbound import queue_message
from shared.db.pool import DATABASE_ERRORS
from shared.db.rooms import enqueue
from shared.sip.headers import make_response, parse_name_addr
from shared.sip.message import SipRequest, SipResponse, canonical_name
from shared.stats import for_service

log = logging.getLogger(__name__)


#: Headers not worth keeping with a stored message: routing, transport, authentication and
#: dialog headers (the delivery gets new ones), and those the delivery writes itself (Date,
#: Content-Type). Everything else is kept — P-Asserted-Identity, Privacy, Subject, extension
#: and X- headers (Kamailio keeps the headers its parser does not know, plus PAI/PPI/Privacy).
#: The router has removed any PAI/PPI the sender wrote; a PAI left is the relay's own
#: assertion of an authenticated local sender (RFC 3325).
#: Headers the relay writes itself on every MESSAGE it sends; a queued row's extra headers
#: cannot override them.
RELAY_WRITTEN_HEADERS = frozenset(
    name.lower()
    for name in (
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Contact",
        "Max-Forwards",
        "Route",
        "Record-Route",
        "Content-Type",
        "Content-Length",
    )
)
NOT_STORED_HEADERS = RELAY_WRITTEN_HEADERS | frozenset(
    canonical_name(name).lower()
    for name in (
        "Path",
        "Service-Route",
        "Expires",
        "Date",
        "Authorization",
        "Proxy-Authorization",
        "WWW-Authenticate",
        "Proxy-Authenticate",
        "Authentication-Info",
        "Require",
        "Proxy-Require",
        "Supported",
        "Unsupported",
        "Allow",
        "Allow-Events",
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "User-Agent",
        "Server",
        "Timestamp",
        "Warning",
        "Min-Expires",
        "Retry-After",
        GENERATED_HEADER,
    )
)
#: Most bytes of extra headers kept per message; the rest are dropped (the message is not).
MAX_STORED_HEADER_BYTES = 4096
#: Media types that only make sense at once (RFC 3994 is-composing): never stored.
TRANSIENT_TYPES = frozenset({"application/im-iscomposing+xml"})
#: Media types that never trigger an offline notice (notifications about messages).
NO_NOTICE_TYPES = TRANSIENT_TYPES | {"message/imdn+xml"}


async def behind_stored(pool: asyncpg.Pool, request: SipRequest, aor: str) -> bool:
    """True when ``request`` (a MESSAGE for registered ``aor``) must be stored instead of
    delivered: ``aor`` still has stored messages due for delivery (a drain in progress),
    which it would overtake. Not while one of them waits for its retry time after the
    client refused it: a message the client keeps refusing must not hold up live chat.
    Transient bodies (is-composing) are always delivered directly; a database error means
    deliver."""
    if not request.body:
        return False
    media_type = (request.get("Content-Type") or "text/plain").split(";", 1)[0].strip().lower()
    if media_type in TRANSIENT_TYPES:
        return False
    try:
        return await drain_pending(pool, aor)
    except DATABASE_ERRORS:
        return False


async def store_offline(
    pool: asyncpg.Pool,
    settings: Settings,
    request: SipRequest,
    aor: str,
    *,
    authenticated_user: str | None,
    registered: bool = False,
) -> SipResponse:
    """``request`` (a MESSAGE) could not reach ``aor`` (``user@domain``): no binding, or
    every binding failed with 408/480/503/timeout — or ``registered`` ``aor`` has stored
    messages it must not overtake (:func:`behind_stored`; no offline notice then, and msilo
    is told at once). Store it for ``aor`` and answer the sender (202 only once the row is
    committed)."""
    content_type = (request.get("Content-Type") or "text/plain").strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not request.body or media_type in TRANSIENT_TYPES:
        return make_response(request, 480)  # nothing worth keeping
    try:
        sender = parse_name_addr(request.get("From") or "")
    except ValueError:
        return make_response(request, 400, "Bad From")
    if not sender.uri.lower().startswith(("sip:", "sips:")):
        return make_response(request, 480, "Offline Store Needs A SIP Sender")
    # An authenticated local sender is stored under its canonical address, whatever
    # spelling of our host its From used (sip:alice@<our address>, a trailing dot, ...).
    sender_uri = sender.uri
    if authenticated_user is not None:
        sender_uri = f"sip:{authenticated_user}@{settings.domain}"
    lifetime = _lifetime(request, settings.msilo_expire)
    notice_to = (
        None
        if registered
        else _notice_recipient(settings, request, media_type, aor, authenticated_user)
    )
    try:
        if notice_to is None and not registered:  # the common case: one round trip
            stored = await _batcher(pool, settings.msilo_max_messages).store(
                NewMessage(
                    recipient=aor,
                    sender_uri=sender_uri,
                    sender_display=sender.display_name,
                    call_id=request.get("Call-ID") or "",
                    content_type=content_type,
                    body=request.body,
                    extra_headers=_stored_headers(request),
                    lifetime=lifetime,
                )
            )
        else:
            stored = await _store_with_follow_ups(
                pool,
                settings,
                request,
                aor,
                sender_uri=sender_uri,
                sender_display=sender.display_name,
                content_type=content_type,
                lifetime=lifetime,
                notice_to=notice_to,
                registered=registered,
            )
    except DATABASE_ERRORS as exc:
        log.warning("MESSAGE for %s not stored: database unavailable (%s)", aor, exc)
        return make_response(request, 503, headers=[("Retry-After", "5")])
    if stored is None:
        log.info("MESSAGE for %s refused: %d messages stored", aor, settings.msilo_max_messages)
        warning = f'399 {settings.domain} "the offline mailbox of {aor} is full"'
        return make_response(request, 480, "Mailbox Full", headers=[("Warning", warning)])
    log.info("MESSAGE for %s stored offline (id %d, %d s)", aor, stored, lifetime)
    for_service("relay").inc("messages_stored")
    return make_response(request, 202)


#: Errors a statement gets for what one of its rows holds, or for its bad luck with another
#: transaction (a deadlock), not for the database's state: a batch failing so is retried
#: one message at a time.
_ROW_ERRORS = (
    asyncpg.DataError,
    asyncpg.IntegrityConstraintViolationError,
    asyncpg.TransactionRollbackError,
)


class StoreBatcher:
    """Offline stores (:func:`store_message_once`) gathered into one statement, one
    transaction and one commit per batch (:func:`store_messages_once`: group commit).

    A batch starts at once when no other is under way (after the stores of the same loop
    iteration have joined it; under load, after ``linger``), otherwise when the one under
    way ends: stores arriving together share a commit, and a lone store waits for nothing.
    Every store of a batch is answered once the batch committed (or failed); a recipient's
    messages are stored in the order they arrived here. A mailbox found full refuses its
    messages alone (None). A batch the database refuses for what one message holds (a data
    error) is retried one store at a time, so that one sender's bad MESSAGE fails no other;
    when the database is unavailable every store of the batch gets the error (never 202)."""

    MAX_BATCH = 100

    def __init__(
        self, pool: asyncpg.Pool, *, max_messages: int, idle_since: float = -math.inf
    ) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.max_messages = max_messages
        self._waiting: list[tuple[NewMessage, asyncio.Future[int | None]]] = []
        self._running = False  # a batch is being sent, or is about to be
        self.batches = 0  # batches sent
        #: Under load (a store within ``busy`` seconds of the last batch's end), a batch
        #: waits ``linger`` seconds for more stores before it starts. Senders answered
        #: together send again within a fraction of a millisecond: without it, their stores
        #: alternate a batch of one (the first to arrive) and a batch of all the others.
        self.linger = 0.0005
        self.busy = 0.002
        self.idle_since = idle_since  # loop time the last batch ended with nothing waiting

    async def store(self, message: NewMessage) -> int | None:
        """Store ``message`` (committed when this returns); its id, or None when the
        recipient's mailbox is full."""
        future: asyncio.Future[int | None] = self.loop.create_future()
        self._waiting.append((message, future))
        if not self._running:
            self._running = True
            if self.loop.time() - self.idle_since < self.busy:
                self.loop.call_later(self.linger, self._start)
            else:
                self.loop.call_soon(self._start)
        return await future

    def _start(self) -> None:
        batch = self._waiting[: self.MAX_BATCH]
        del self._waiting[: self.MAX_BATCH]
        task = self.loop.create_task(self._send(batch))
        task.add_done_callback(self._sent)

    def _sent(self, _task: asyncio.Task[None]) -> None:
        if self._waiting:
            self._start()
        else:
            self._running = False
            self.idle_since = self.loop.time()
            key = (id(self.pool), self.max_messages)
            if _batchers.get(key) is self:
                del _batchers[key]  # idle: nothing keeps the pool alive
                _idle_since[key] = self.idle_since

    async def _alone(self, message: NewMessage) -> int | None:
        return await store_message_once(
            self.pool,
            recipient=message.recipient,
            sender_uri=message.sender_uri,
            sender_display=message.sender_display,
            call_id=message.call_id,
            content_type=message.content_type,
            body=message.body,
            extra_headers=message.extra_headers,
            lifetime=message.lifetime,
            max_messages=self.max_messages,
        )

    async def _send(self, batch: list[tuple[NewMessage, asyncio.Future[int | None]]]) -> None:
        self.batches += 1
        try:
            if len(batch) == 1:
                results = [await self._alone(batch[0][0])]
            else:
                results = await store_messages_once(
                    self.pool, [message for message, _ in batch], max_messages=self.max_messages
                )
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
            else:  # what one message holds: each store on its own, in order
                for message, future in batch:
                    await self._retry(message, future)
            return
        except Exception as exc:  # the database is unavailable: every store fails
            self._fail(batch, exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), stored in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(stored)

    @staticmethod
    def _fail(batch: list[tuple[NewMessage, asyncio.Future[int | None]]], exc: Exception) -> None:
        for _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def _retry(self, message: NewMessage, future: asyncio.Future[int | None]) -> None:
        try:
            stored = await self._alone(message)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(stored)


#: The batchers of this process at work, by pool and quota (a batcher leaves when it has
#: nothing to do). A pool cannot be weakly referenced: a batcher is found by ``id(pool)``
#: and checked to be for that very pool.
_batchers: dict[tuple[int, int], StoreBatcher] = {}
#: When the batcher of a (pool, quota) went idle: the next one knows whether it is under load.
_idle_since: dict[tuple[int, int], float] = {}


def _batcher(pool: asyncpg.Pool, max_messages: int) -> StoreBatcher:
    key = (id(pool), max_messages)
    batcher = _batchers.get(key)
    if (
        batcher is None
        or batcher.pool is not pool
        or batcher.loop is not asyncio.get_running_loop()
    ):
        batcher = _batchers[key] = StoreBatcher(
            pool, max_messages=max_messages, idle_since=_idle_since.pop(key, -math.inf)
        )
    return batcher


async def _store_with_follow_ups(
    pool: asyncpg.Pool,
    settings: Settings,
    request: SipRequest,
    aor: str,
    *,
    sender_uri: str,
    sender_display: str | None,
    content_type: str,
    lifetime: int,
    notice_to: str | None,
    registered: bool,
) -> int | None:
    """Store ``request`` for ``aor`` together with what follows from it (the offline notice
    for its sender, msilo told about a registered recipient's stored message), in one
    transaction."""
    async with pool.acquire() as conn, conn.transaction():
        stored = await store_message(
            conn,
            recipient=aor,
            sender_uri=sender_uri,
            sender_display=sender_display,
            call_id=request.get("Call-ID") or "",
            content_type=content_type,
            body=request.body,
            extra_headers=_stored_headers(request),
            lifetime=lifetime,
            max_messages=settings.msilo_max_messages,
        )
        if stored is not None and notice_to is not None:
            assert settings.msilo_notice_from is not None
            await queue_message(
                conn,
                from_uri=settings.msilo_notice_from,
                to_aor=notice_to,
                body=settings.msilo_notice_text.replace("{recipient}", aor).encode(),
                extra_headers=[(GENERATED_HEADER, "notice")],
                source=NOTICE_SOURCE,
                source_id=stored,
            )
        if stored is not None and registered:
            await notify(conn, STORED_CHANNEL, "stored", aor)
    return stored


def _lifetime(request: SipRequest, limit: int) -> int:
    """IMSTACK_MSILO_EXPIRE, lowered by the MESSAGE's own positive Expires (MSILO-B2)."""
    try:
        expires = int((request.get("Expires") or "").strip())
    except ValueError:
        return limit
    return min(limit, expires) if expires > 0 else limit


def _stored_headers(request: SipRequest) -> list[tuple[str, str]]:
    kept: list[tuple[str, str]] = []
    size = 0
    for name, value in request.headers:
        if name.lower() in NOT_STORED_HEADERS:
            continue
        size += len(name) + len(value) + 4
        if size > MAX_STORED_HEADER_BYTES:
            log.info("extra headers over %d bytes not stored", MAX_STORED_HEADER_BYTES)
            break
        kept.append((name, value))
    return kept


def _notice_recipient(
    settings: Settings,
    request: SipRequest,
    media_type: str,
    aor: str,
    authenticated_user: str | None,
) -> str | None:
    """Who gets an offline notice: a local, authenticated sender of a message that no part of
    the bundle generated (never a notice for a notice: Kamailio issue #61)."""
    if settings.msilo_notice_from is None or authenticated_user is None:
        return None
    if GENERATED_HEADER in request.headers or media_type in NO_NOTICE_TYPES:
        return None
    sender = f"{authenticated_user}@{settings.domain}"
    return None if sender == aor else sender


async def deliver_to_room(
    pool: asyncpg.Pool,
    settings: Settings,
    request: SipRequest,
    room: str,
    *,
    authenticated_user: str | None,
) -> SipResponse:
    """``request`` (a MESSAGE) is addressed to ``room`` (``name@<conference domain>``).

    Queue it for imc (a committed ``room_inbox`` row + NOTIFY) and answer 202 Accepted only
    after the commit; 503 when the database fails. Whether the room exists and the sender
    may do what they ask is imc's business: it answers with a notice MESSAGE from the room.
    Delivery notifications and typing indicators are accepted and dropped (never chat).
    """
    if authenticated_user is None:
        # Identity is what rooms run on, and only local users can be reached from them.
        return make_response(request, 403, "Rooms Are For Local Users")
    content_type = (request.get("Content-Type") or "text/plain").strip()
    media_type = content_type.split(";", 1)[0].strip().lower()
    if not request.body:
        return make_response(request, 400, "Empty Message")
    if media_type in NO_NOTICE_TYPES:
        return make_response(request, 202)  # IMDN / is-composing: nothing for the room
    try:
        display = parse_name_addr(request.get("From") or "").display_name
    except ValueError:
        display = None
    sender = f"{authenticated_user}@{settings.domain}"
    try:
        async with pool.acquire() as conn:  # one statement: committed when it returns
            queued = await enqueue(
                conn,
                room=room,
                sender=sender,
                sender_display=display,
                call_id=request.get("Call-ID") or "",
                content_type=content_type,
                body=request.body,
            )
    except DATABASE_ERRORS as exc:
        log.warning("MESSAGE to room %s not queued: database unavailable (%s)", room, exc)
        return make_response(request, 503, headers=[("Retry-After", "5")])
    log.debug("MESSAGE from %s to room %s queued (id %d)", sender, room, queued)
    for_service("relay").inc("messages_to_rooms")
    return make_response(request, 202)
