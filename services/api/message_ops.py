"""Sending a message from the control API through the bundle's normal routing.

:func:`send` decides as the relay's router does for a MESSAGE: to a room (the conference
domain) it is a committed ``room_inbox`` row for imc, as :func:`handover.deliver_to_room`
makes; to a registered user it is an ``outbound_messages`` row the relay sends at once —
with source :data:`STORE_ON_FAILURE_SOURCE`, so a failed delivery is stored offline by the
relay in the transaction that records the outcome; to an unregistered user it is an
``offline_messages`` row, as :func:`handover.store_offline` makes, delivered by msilo on
registration. A registered user who still has stored messages due for delivery gets the
new one stored behind them (msilo is told at once), so it cannot overtake them — as the
relay does. With a send time in the future the message is stored with ``not_before``
(scheduled): msilo delivers it once it is due and the recipient is registered. Runs inside
the caller's transaction.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from services.api.room_ops import RoomNotFound, room_key
from services.imc.worker import config_from
from services.relay.sip.handover import NO_NOTICE_TYPES, TRANSIENT_TYPES
from shared.config import Settings
from shared.db import rooms as rooms_db
from shared.db import users as users_db
from shared.db.listen import notify
from shared.db.offline import STORED_CHANNEL, drain_pending, purge_received_before, store_message
from shared.db.outbound import STORE_ON_FAILURE_SOURCE, queue_message
from shared.db.types import Connection, Executor

#: Rows deleted per transaction by :func:`purge_before` (short transactions, no long lock).
PURGE_BATCH = 1000


class SendError(Exception):
    """The message cannot be sent as asked; the text is for the operator."""


class InvalidSend(SendError):
    """A recipient, sender or content the routing does not accept."""


class UserDisabled(SendError):
    pass


class MailboxFull(SendError):
    """The recipient has IMSTACK_MSILO_MAX_MESSAGES stored already."""


class Outcome(StrEnum):
    QUEUED = "queued"
    STORED = "stored"
    SCHEDULED = "scheduled"
    ROOM = "room"


@dataclass(frozen=True)
class Sent:
    outcome: Outcome
    recipient: str  # user@domain, or the room's name@domain
    sender: str  # the From URI
    id: int  # the outbound, offline or room_inbox row


def system_address(settings: Settings) -> str:
    """The From of messages the server sends itself: msilo's notice address when set."""
    return settings.msilo_notice_from or f"sip:{settings.domain}"


def _media_type(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _sender_uri(settings: Settings, text: str) -> str:
    """``sip:user@host`` for a sender as given (a bare name is a user of our domain)."""
    scheme, colon, rest = text.partition(":")
    if not colon or scheme.lower() not in ("sip", "sips"):
        scheme, rest = "sip", text
    if "@" not in rest:
        rest = f"{rest}@{settings.domain}"
    return f"{scheme.lower()}:{rest}"


async def _local_user(conn: Executor, settings: Settings, text: str) -> users_db.User:
    address = users_db.parse_address(text, settings.domain)
    if address.domain != settings.domain:
        raise InvalidSend(f"{address} is not a user of {settings.domain}")
    user = await users_db.get_user(conn, address)
    if user is None:
        raise users_db.UserNotFound(f"no such user: {address}")
    return user


async def send(
    conn: Executor,
    settings: Settings,
    *,
    to: str,
    sender: str | None,
    sender_display: str | None,
    content_type: str,
    body: bytes,
    deliver_at: datetime | None = None,
) -> Sent:
    """Route one message (see the module); what happened. ``deliver_at`` (timezone-aware)
    schedules it; a time already past means now. Raises :class:`SendError`,
    ``UserNotFound`` or ``RoomNotFound``."""
    if not body:
        raise InvalidSend("the body is empty")
    delay = timedelta(0)
    if deliver_at is not None:
        if deliver_at.tzinfo is None:
            raise InvalidSend("deliver_at needs a time zone (e.g. 2030-01-01T09:00:00Z)")
        delay = max(deliver_at - datetime.now(UTC), timedelta(0))
    target = to.strip()
    if target.lower().startswith(("sip:", "sips:")):
        target = target.split(":", 1)[1]
    _, at, domain = target.rpartition("@")
    if at and domain.lower() == settings.conference_domain:
        if delay:
            raise InvalidSend("scheduled delivery to a room is not supported")
        return await _to_room(conn, settings, target, sender, sender_display, content_type, body)
    try:
        recipient = await _local_user(conn, settings, target)
    except users_db.InvalidUser as exc:
        raise InvalidSend(f"invalid recipient {to!r}: {exc}") from None
    if recipient.disabled:
        raise UserDisabled(f"{recipient.address} is disabled")
    aor = str(recipient.address)
    from_uri = _sender_uri(settings, sender) if sender is not None else system_address(settings)
    transient = _media_type(content_type) in TRANSIENT_TYPES
    if transient and delay:
        raise InvalidSend(f"{content_type} is only sent at once: it cannot be scheduled")
    registered = aor in await rooms_db.reachable(conn, [aor])
    if registered and not delay and (transient or not await drain_pending(conn, aor)):
        outbound_id = await queue_message(
            conn,
            from_uri=from_uri,
            from_display=sender_display,
            to_aor=aor,
            body=body,
            content_type=content_type,
            # Typing indicators only make sense at once: never stored (as the relay does).
            source=None if transient else STORE_ON_FAILURE_SOURCE,
        )
        return Sent(Outcome.QUEUED, aor, from_uri, outbound_id)
    if transient:
        raise InvalidSend(f"{aor} is not registered, and {content_type} is never stored")
    stored = await store_message(
        conn,
        recipient=aor,
        sender_uri=from_uri,
        sender_display=sender_display,
        call_id=f"api-{secrets.token_hex(12)}",
        content_type=content_type,
        body=body,
        extra_headers=[],
        # A scheduled message lives IMSTACK_MSILO_EXPIRE from its send time.
        lifetime=settings.msilo_expire + int(delay.total_seconds()),
        max_messages=settings.msilo_max_messages,
        not_before=deliver_at if delay else None,
    )
    if stored is None:
        raise MailboxFull(
            f"the offline mailbox of {aor} is full ({settings.msilo_max_messages} messages)"
        )
    if delay:
        return Sent(Outcome.SCHEDULED, aor, from_uri, stored)
    if registered:  # behind a drain in progress: msilo takes it from there at once
        await notify(conn, STORED_CHANNEL, "stored", aor)
    return Sent(Outcome.STORED, aor, from_uri, stored)


async def _to_room(
    conn: Executor,
    settings: Settings,
    target: str,
    sender: str | None,
    sender_display: str | None,
    content_type: str,
    body: bytes,
) -> Sent:
    """As the relay hands a room MESSAGE to imc: a local user's, queued for the room worker
    (which checks membership and answers with a notice, as for a MESSAGE from a client)."""
    key = room_key(config_from(settings), target)
    if sender is None:
        raise InvalidSend("a message to a room needs a sender: a user of the server's domain")
    if _media_type(content_type) in NO_NOTICE_TYPES:
        raise InvalidSend(f"{content_type} is not chat: rooms take no {content_type}")
    try:
        user = await _local_user(conn, settings, sender)
    except users_db.InvalidUser as exc:
        raise InvalidSend(f"invalid sender {sender!r}: {exc}") from None
    if await rooms_db.get_room_summary(conn, key) is None:
        raise RoomNotFound(f"no such room: {key}")
    inbox_id = await rooms_db.enqueue(
        conn,
        room=key,
        sender=str(user.address),
        sender_display=sender_display,
        call_id=f"api-{secrets.token_hex(12)}",
        content_type=content_type,
        body=body,
    )
    return Sent(Outcome.ROOM, key, f"sip:{user.address}", inbox_id)


async def purge_before(
    conn: Connection, before: datetime, *, batch: int | None = None
) -> tuple[int, int]:
    """Delete every stored message received before ``before``, for all users, ``batch`` rows
    (default :data:`PURGE_BATCH`) per transaction; (how many, how many transactions)."""
    batch = batch or PURGE_BATCH
    purged = batches = 0
    while True:
        async with conn.transaction():
            done = await purge_received_before(conn, before, limit=batch)
        purged += done
        batches += 1
        if done < batch:
            return purged, batches
