"""What a stored message looks like when msilo delivers it (Kamailio's ``m_dump``, MSILO-B7).

From = the original sender (with display name), To = the recipient, a ``Date:`` header with
the time stored (RFC 1123, GMT), the original Content-Type and the stored extra headers. A
``text/plain`` body in an ASCII-compatible charset gets the prefix
``[Offline message - <ctime of the time stored, UTC>] `` when IMSTACK_MSILO_ADD_DATE is on;
every other body (``message/cpim``, binary, UTF-16 text) is delivered byte-exact.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime

from shared.db.offline import GENERATED_HEADER, OfflineMessage

#: Charsets in which an ASCII prefix is still valid text.
_ASCII_COMPATIBLE = ("utf-8", "us-ascii", "ascii", "iso-8859-", "windows-125")


@dataclass(frozen=True)
class Delivery:
    """The fields of the ``outbound_messages`` row for one stored message."""

    from_uri: str
    from_display: str | None
    to_aor: str
    content_type: str
    body: bytes
    extra_headers: list[tuple[str, str]]


def http_date(moment: datetime) -> str:
    """``Thu, 26 Nov 2026 10:00:00 GMT`` (RFC 1123, as RFC 3261 §20.17 wants)."""
    return format_datetime(moment, usegmt=True)


def ctime(moment: datetime) -> str:
    """``Thu Nov 26 10:00:00 2026``: C's ctime() format, as Kamailio writes it (but in UTC)."""
    return time.asctime(time.gmtime(moment.timestamp()))


def may_prefix(content_type: str) -> bool:
    """True for text/plain in a charset an ASCII prefix cannot corrupt."""
    media_type, _, params = content_type.partition(";")
    if media_type.strip().lower() != "text/plain":
        return False
    for param in params.split(";"):
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower()
            return charset.startswith(_ASCII_COMPATIBLE)
    return True


#: The header msilo adds to every delivery after the stored ones.
GENERATED = (GENERATED_HEADER, "offline-delivery")


def body_prefix(received_at: datetime, content_type: str, *, add_date: bool) -> bytes:
    """What goes before the stored body (b"" for anything but prefixable text)."""
    if add_date and may_prefix(content_type):
        return f"[Offline message - {ctime(received_at)}] ".encode()
    return b""


def delivery_for(message: OfflineMessage, *, add_date: bool) -> Delivery:
    """The whole delivery of ``message`` (msilo queues the same without reading the body:
    :func:`body_prefix` and :func:`http_date` per message, the rest copied in the database
    by ``shared.db.offline.queue_window``)."""
    prefix = body_prefix(message.received_at, message.content_type, add_date=add_date)
    headers = [("Date", http_date(message.received_at)), *message.extra_headers, GENERATED]
    body = prefix + message.body
    return Delivery(
        from_uri=message.sender_uri,
        from_display=message.sender_display,
        to_aor=message.recipient,
        content_type=message.content_type,
        body=body,
        extra_headers=headers,
    )
