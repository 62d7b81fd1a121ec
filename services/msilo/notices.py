"""Telling a sender that their offline message will not be delivered.

Two cases, both ending with the message deleted undelivered (``migrations/0012``):

* it **expired** (IMSTACK_MSILO_EXPIRE, or the MESSAGE's own Expires) before its recipient
  took it;
* the recipient's client **refused it for good** IMSTACK_MSILO_MAX_ATTEMPTS times — a final
  response that is not transient (:func:`is_permanent`) — so that the messages behind it
  are no longer held back.

When IMSTACK_MSILO_EXPIRY_NOTICE is on and the sender is a user of our domain, they get a
MESSAGE from the system address (IMSTACK_MSILO_NOTICE_FROM, else ``sip:<domain>``) in the
style of Kamailio's msilo notices (``*** User $rU is offline!``), naming the recipient, the
time the message was stored and its first words. It goes through the outbound table like
every notice when the sender is registered; when they are not, it is stored for them once,
as an offline message marked as a notice: the expiry or refusal of a notice never causes
another notice (no notice loops, Kamailio issue #61).
"""

from __future__ import annotations

import logging
import re

from services.msilo.delivered_message import http_date
from shared.config import Settings
from shared.db import offline
from shared.db.offline import GENERATED_HEADER, NOTICE_SOURCE, Undelivered
from shared.db.outbound import queue_message
from shared.db.types import Executor
from shared.db.users import Address, InvalidUser, get_user, parse_address

log = logging.getLogger(__name__)

#: Final responses that say "not now" rather than "never": they never count as refusals.
#: 408 is also what the relay reports for a timeout, 503 for a transport failure.
TRANSIENT_STATUSES = frozenset({408, 429, 480, 486, 491, 500, 503, 504, 600})
#: Characters of a message's text quoted in a notice.
EXCERPT_CHARS = 60

_SPACE = re.compile(r"\s+")


def is_permanent(status: int | None) -> bool:
    """True for a final refusal that will not change by retrying: 4xx-6xx other than
    :data:`TRANSIENT_STATUSES` (e.g. 403, 404, 415 Unsupported Media Type, 488, 603, 606).
    No status (a message lost, or not sent behind a failure) and 3xx are not refusals."""
    return status is not None and 400 <= status <= 699 and status not in TRANSIENT_STATUSES


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"') or "utf-8"
    return "utf-8"


def _text_of(content_type: str, head: bytes) -> str | None:
    """The text of a body (its first bytes), or None when it is not text."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "message/cpim":
        # CPIM (RFC 3862): message headers, a blank line, the content's MIME headers,
        # a blank line, the content.
        parts = re.split(rb"\r?\n\r?\n", head, maxsplit=2)
        if len(parts) < 3:
            return None
        inner_type = "text/plain"
        for line in parts[1].decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-type":
                inner_type = value.strip()
        return _text_of(inner_type, parts[2])
    if not media_type.startswith("text/"):
        return None
    try:
        return head.decode(_charset(content_type), errors="replace")
    except LookupError:
        return head.decode("utf-8", errors="replace")


def excerpt(message: Undelivered) -> str:
    """The first words of ``message`` in quotes, or what it was when it is not text."""
    text = _text_of(message.content_type, message.head)
    if text is None:
        media_type = message.content_type.split(";", 1)[0].strip()
        return f"({media_type}, {message.size} bytes)"
    words = _SPACE.sub(" ", text).strip()
    if len(words) > EXCERPT_CHARS:
        # At the last word boundary within the limit (unless the words are very long).
        space = words.rfind(" ", EXCERPT_CHARS // 2, EXCERPT_CHARS + 1)
        words = (words[:space] if space > 0 else words[:EXCERPT_CHARS]).rstrip() + "..."
    elif message.size > len(message.head):
        words += "..."
    return f'"{words}"'


def expiry_text(message: Undelivered) -> str:
    return (
        f"*** Your message to {message.recipient} of {http_date(message.received_at)} "
        f"expired undelivered: {excerpt(message)}"
    )


def refusal_text(message: Undelivered, status: int | None, reason: str | None) -> str:
    answer = " ".join(str(part) for part in (status, reason) if part)
    times = "once" if message.refusals == 1 else f"{message.refusals} times"
    return (
        f"*** Your message to {message.recipient} of {http_date(message.received_at)} "
        f"could not be delivered (refused {times}, last: {answer}): {excerpt(message)}"
    )


def system_address(settings: Settings) -> str:
    """The From of notices: IMSTACK_MSILO_NOTICE_FROM, else ``sip:<domain>``."""
    return settings.msilo_notice_from or f"sip:{settings.domain}"


async def local_sender(conn: Executor, settings: Settings, sender_uri: str) -> str | None:
    """``user@domain`` when ``sender_uri`` is a user of our domain, else None."""
    try:
        address = parse_address(sender_uri)
    except InvalidUser:
        return None
    if address.domain != settings.domain.lower() or ";" in address.username:
        return None
    user = await get_user(conn, Address(address.username, address.domain))
    return None if user is None else str(address)


async def tell_sender(
    conn: Executor, settings: Settings, message: Undelivered, text: str
) -> str | None:
    """Tell ``message``'s sender ``text`` (inside the transaction that removed it, so the
    notice is written exactly once): ``"queued"`` (registered: through the outbound
    table), ``"stored"`` (offline: an offline message marked as a notice), or None (off,
    not a local sender, a notice itself, or their mailbox is full)."""
    if not settings.msilo_expiry_notice or message.notice:
        return None
    if message.sender_uri == system_address(settings):
        return None  # the server's own message: nobody to tell
    sender = await local_sender(conn, settings, message.sender_uri)
    if sender is None:
        return None
    body = text.encode()
    if await offline.is_registered(conn, sender):
        await queue_message(
            conn,
            from_uri=system_address(settings),
            to_aor=sender,
            body=body,
            extra_headers=[(GENERATED_HEADER, "notice")],
            source=NOTICE_SOURCE,
            source_id=message.id,
        )
        return "queued"
    stored = await offline.store_notice(
        conn,
        recipient=sender,
        sender_uri=system_address(settings),
        body=body,
        lifetime=settings.msilo_expire,
        max_messages=settings.msilo_max_messages,
    )
    if stored is None:
        log.info("msilo: notice for %s not stored: their mailbox is full", sender)
        return None
    return "stored"
