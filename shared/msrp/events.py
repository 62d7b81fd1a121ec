"""MSRP events: the same frozen dataclasses are produced by the parser and
consumed by the serializer (h11 style).

A message on the wire is always one head, zero or more :class:`BodyData`,
then exactly one :class:`EndOfMessage`::

    RequestHead  (BodyData)*  EndOfMessage      # body only if has_body
    ResponseHead              EndOfMessage      # responses never have a body

A parser made with ``whole_messages=True`` may instead deliver a message that arrived
whole in one event, :class:`WholeMessage` (head, body, end-line flag), which stands for
exactly that sequence; a relay forwarding small messages saves two events per message.

Header names keep the case they were written in; lookups are
case-insensitive (ABNF literals are case-insensitive, RFC 5234 §2.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from .errors import RemoteProtocolError
from .headers import ByteRange, StatusHeader
from .uri import MsrpUri, parse_path

__all__ = [
    "BodyData",
    "Continuation",
    "EndOfMessage",
    "Event",
    "Headers",
    "RequestHead",
    "ResponseHead",
    "WholeMessage",
]

#: ``(name, value)`` pairs in wire order, To-Path and From-Path excluded.
Headers = tuple[tuple[str, str], ...]

#: End-line flag (RFC 4975 §7.1): ``$`` message complete, ``+`` more chunks
#: follow, ``#`` message aborted by the sender.
Continuation = Literal["$", "+", "#"]


class _HeaderAccess:
    """Case-insensitive header lookup shared by both head classes."""

    __slots__ = ()

    transaction_id: str
    headers: Headers

    def get_header(self, name: str) -> str | None:
        """First value of header *name* (case-insensitive), or ``None``."""
        lowered = name.lower()
        for key, value in self.headers:
            if key.lower() == lowered:
                return value
        return None

    def get_all_headers(self, name: str) -> list[str]:
        """Every value of header *name* (case-insensitive), in wire order."""
        lowered = name.lower()
        return [value for key, value in self.headers if key.lower() == lowered]

    def _typed(self, err: RemoteProtocolError) -> RemoteProtocolError:
        err.transaction_id = self.transaction_id
        return err

    @property
    def message_id(self) -> str | None:
        return self.get_header("Message-ID")

    @property
    def content_type(self) -> str | None:
        return self.get_header("Content-Type")

    @property
    def byte_range(self) -> ByteRange | None:
        """Parsed Byte-Range, ``None`` if absent; raises 400 if malformed."""
        value = self.get_header("Byte-Range")
        if value is None:
            return None
        try:
            return ByteRange.parse(value)
        except RemoteProtocolError as err:
            raise self._typed(err) from None

    @property
    def status_header(self) -> StatusHeader | None:
        """Parsed Status header (REPORT), ``None`` if absent; raises 400 if malformed."""
        value = self.get_header("Status")
        if value is None:
            return None
        try:
            return StatusHeader.parse(value)
        except RemoteProtocolError as err:
            raise self._typed(err) from None

    @property
    def use_path(self) -> tuple[MsrpUri, ...] | None:
        """Parsed Use-Path (AUTH 200, RFC 4976 §5.1); raises 400 if malformed."""
        value = self.get_header("Use-Path")
        if value is None:
            return None
        try:
            return parse_path(value)
        except RemoteProtocolError as err:
            raise self._typed(err) from None

    @property
    def expires(self) -> int | None:
        """Expires in seconds (RFC 4976 §5.3); raises 400 if not a number."""
        value = self.get_header("Expires")
        if value is None:
            return None
        if not value.isascii() or not value.isdigit() or len(value) > 10:
            raise RemoteProtocolError(
                f"invalid Expires {value[:50]!r}",
                status_hint=400,
                transaction_id=self.transaction_id,
            )
        return int(value)


@dataclass(frozen=True, slots=True)
class RequestHead(_HeaderAccess):
    """Start line and header section of a request.

    ``has_body`` says whether the header section ends with a blank line and a
    body follows (RFC 4975 §7.1).  The parser sets it from the wire; when
    sending, it decides whether the serializer writes the blank line and the
    CRLF that precedes the end-line.
    """

    transaction_id: str
    method: str
    to_path: tuple[MsrpUri, ...]
    from_path: tuple[MsrpUri, ...]
    headers: Headers = ()
    has_body: bool = False


@dataclass(frozen=True, slots=True)
class ResponseHead(_HeaderAccess):
    """Start line and header section of a response (responses have no body)."""

    transaction_id: str
    status: int
    comment: str | None
    to_path: tuple[MsrpUri, ...]
    from_path: tuple[MsrpUri, ...]
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class BodyData:
    """A slice of a request body, forwarded as soon as it arrives."""

    transaction_id: str
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end-line ``-------<tid><flag>`` closing a request or response."""

    transaction_id: str
    continuation: Continuation = "$"


@dataclass(frozen=True, slots=True)
class WholeMessage:
    """A message that was wholly buffered: stands for ``head``, then ``BodyData(body)`` if
    ``body`` is not empty, then ``EndOfMessage(continuation)``.  Only parsers created with
    ``whole_messages=True`` produce it."""

    head: RequestHead | ResponseHead
    body: bytes = b""
    continuation: Continuation = "$"

    @property
    def transaction_id(self) -> str:
        return self.head.transaction_id

    def expand(self) -> list[RequestHead | ResponseHead | BodyData | EndOfMessage]:
        """The events this one stands for."""
        tid = self.head.transaction_id
        end = EndOfMessage(tid, self.continuation)
        return [self.head, BodyData(tid, self.body), end] if self.body else [self.head, end]


Event = RequestHead | ResponseHead | BodyData | EndOfMessage | WholeMessage
