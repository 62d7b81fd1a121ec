"""Events in, bytes out: the MSRP serializer (RFC 4975 §7.1, §7.2, §9).

Two layers:

- stateless functions (:func:`serialize_head`, :func:`serialize_end_line`,
  :func:`serialize_message`) that format one piece, validating what they write;
- :class:`MessageWriter`, a small state machine for one outgoing stream that
  accepts the same event sequence the parser produces and checks it is legal
  (body only after a head with ``has_body``, matching transaction ids, no
  end-line text inside the body).

Body framing is decided by ``RequestHead.has_body``: with a body the head ends
with a blank line and the end-line is preceded by a CRLF that is not part of
the body; without one the end-line follows the last header line directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum, auto

from .errors import LocalProtocolError
from .events import (
    BodyData,
    Continuation,
    EndOfMessage,
    Event,
    Headers,
    RequestHead,
    ResponseHead,
    WholeMessage,
)
from .ids import is_valid_ident
from .status import Status
from .uri import MsrpUri, format_path

__all__ = [
    "MessageWriter",
    "make_response",
    "serialize_end_line",
    "serialize_head",
    "serialize_message",
]

_METHOD_RE = re.compile(r"[A-Z]+")
_HNAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]*")
_BAD_TEXT_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_FLAGS = ("$", "+", "#")
_PATH_HEADERS = ("to-path", "from-path")


def _check_text(value: str, what: str) -> None:
    # utf8text forbids controls other than HTAB; CR/LF would also inject lines.
    if _BAD_TEXT_RE.search(value):
        raise LocalProtocolError(f"control character in {what}")
    if value != value.strip(" \t"):
        raise LocalProtocolError(f"{what} has leading or trailing whitespace")


def _check_tid(tid: str) -> None:
    if not is_valid_ident(tid):
        raise LocalProtocolError(f"invalid transaction id {tid!r}")


def _check_path(path: tuple[MsrpUri, ...], name: str) -> str:
    if not path:
        raise LocalProtocolError(f"empty {name}")
    text = format_path(path)
    if _BAD_TEXT_RE.search(text) or "  " in text:
        raise LocalProtocolError(f"invalid {name} {text!r}")
    return text


def _header_lines(
    to_path: tuple[MsrpUri, ...], from_path: tuple[MsrpUri, ...], headers: Headers
) -> list[str]:
    lines = [
        f"To-Path: {_check_path(to_path, 'To-Path')}",
        f"From-Path: {_check_path(from_path, 'From-Path')}",
    ]
    for name, value in headers:
        if not _HNAME_RE.fullmatch(name):
            raise LocalProtocolError(f"invalid header name {name!r}")
        if name.lower() in _PATH_HEADERS:
            raise LocalProtocolError(f"{name} belongs in to_path/from_path, not headers")
        _check_text(value, f"{name} header")
        lines.append(f"{name}: {value}")
    return lines


def serialize_head(head: RequestHead | ResponseHead, *, check: bool = True) -> bytes:
    """Start line and header section.

    For a request with ``has_body`` the result ends with the blank line that
    separates headers from the body (RFC 4975 §7.1).  ``check=False`` skips the
    validation of every field: for heads built from parsed input (a relay
    forwarding what its parser accepted), where it would only repeat the parser's work.
    """
    if not check:
        return _format_head(head)
    _check_tid(head.transaction_id)
    if isinstance(head, RequestHead):
        if not _METHOD_RE.fullmatch(head.method):
            raise LocalProtocolError(f"invalid method {head.method!r}")
        start = f"MSRP {head.transaction_id} {head.method}"
    else:
        if not 0 <= head.status <= 999:
            raise LocalProtocolError(f"status {head.status} is not three digits")
        start = f"MSRP {head.transaction_id} {head.status:03d}"
        if head.comment:
            _check_text(head.comment, "comment")
            start += f" {head.comment}"
    lines = [start, *_header_lines(head.to_path, head.from_path, head.headers)]
    text = "\r\n".join(lines) + "\r\n"
    if isinstance(head, RequestHead) and head.has_body:
        text += "\r\n"
    return text.encode("utf-8")


def _format_head(head: RequestHead | ResponseHead) -> bytes:
    paths = f"\r\nTo-Path: {format_path(head.to_path)}\r\nFrom-Path: {format_path(head.from_path)}"
    if isinstance(head, RequestHead):
        start = f"MSRP {head.transaction_id} {head.method}"
        tail = "\r\n\r\n" if head.has_body else "\r\n"
    else:
        if head.comment:
            start = f"MSRP {head.transaction_id} {head.status:03d} {head.comment}"
        else:
            start = f"MSRP {head.transaction_id} {head.status:03d}"
        tail = "\r\n"
    if head.headers:
        tail = "".join([f"\r\n{name}: {value}" for name, value in head.headers]) + tail
    return (start + paths + tail).encode("utf-8")


def serialize_end_line(
    transaction_id: str, continuation: Continuation = "$", *, after_body: bool = False
) -> bytes:
    """``-------<tid><flag>CRLF``, preceded by CRLF when it closes a body."""
    _check_tid(transaction_id)
    if continuation not in _FLAGS:
        raise LocalProtocolError(f"invalid continuation flag {continuation!r}")
    end = f"-------{transaction_id}{continuation}\r\n".encode("ascii")
    return b"\r\n" + end if after_body else end


def serialize_message(
    head: RequestHead | ResponseHead, body: bytes = b"", continuation: Continuation = "$"
) -> bytes:
    """A whole message in one go (convenience over :class:`MessageWriter`)."""
    writer = MessageWriter()
    out = [writer.send(head)]
    if body:
        out.append(writer.send(BodyData(head.transaction_id, body)))
    out.append(writer.send(EndOfMessage(head.transaction_id, continuation)))
    return b"".join(out)


def make_response(
    request: RequestHead,
    status: int,
    comment: str | None = None,
    *,
    headers: Headers = (),
    from_uri: MsrpUri | None = None,
) -> ResponseHead:
    """Build the response head for *request* (RFC 4975 §7.2, RFC 4976 §7).

    - The transaction id is the request's.
    - SEND responses are hop-by-hop: To-Path is only the previous hop, the
      first URI of the request's From-Path.
    - Responses to other methods (AUTH, extensions) are end-to-end: To-Path is
      the whole request From-Path, which already lists the hops back to the
      sender nearest first.
    - From-Path is the responder's URI: *from_uri*, defaulting to the first
      To-Path URI of the request (the URI through which it reached us).
    - *comment* defaults to the conventional phrase for known status codes;
      pass ``""`` for none.
    - REPORT requests never get responses (RFC 4975 §7.1.2), so asking for
      one raises :class:`LocalProtocolError`.
    """
    if request.method == "REPORT":
        raise LocalProtocolError("REPORT requests are never answered")
    to_path = request.from_path[:1] if request.method == "SEND" else request.from_path
    responder = request.to_path[0] if from_uri is None else from_uri
    if comment is None:
        try:
            comment = Status(status).phrase
        except ValueError:
            comment = None
    return ResponseHead(
        transaction_id=request.transaction_id,
        status=status,
        comment=comment or None,
        to_path=to_path,
        from_path=(responder,),
        headers=headers,
    )


def _has_end_line(window: bytes, marker: bytes) -> bool:
    pos = window.find(marker)
    while pos != -1:
        if window[pos + len(marker) : pos + len(marker) + 1] in (b"$", b"+", b"#"):
            return True
        pos = window.find(marker, pos + 1)
    return False


class _State(Enum):
    IDLE = auto()  # between messages: a head may be sent
    BODY = auto()  # after a head with has_body: body data or end
    NO_BODY = auto()  # after a head without body: only the end-line


class MessageWriter:
    """Serializes a stream of events for one connection direction.

    ::

        IDLE --RequestHead(has_body)--> BODY --BodyData--> BODY
        IDLE --RequestHead/ResponseHead--> NO_BODY
        BODY --EndOfMessage--> IDLE        NO_BODY --EndOfMessage--> IDLE

    Any other (state, event) pair raises :class:`LocalProtocolError`.
    """

    def __init__(self) -> None:
        self._state = _State.IDLE
        self._tid: str | None = None
        self._is_response = False
        # Tail of the body sent so far, to catch an end-line split across sends.
        self._tail = b""
        self._handlers: dict[tuple[_State, type[Event]], Callable[[Event], bytes]] = {
            (_State.IDLE, RequestHead): self._send_head,
            (_State.IDLE, ResponseHead): self._send_head,
            (_State.BODY, BodyData): self._send_body,
            (_State.BODY, EndOfMessage): self._send_end,
            (_State.NO_BODY, EndOfMessage): self._send_end,
        }

    @property
    def idle(self) -> bool:
        """True between messages."""
        return self._state is _State.IDLE

    def send(self, event: Event) -> bytes:
        if isinstance(event, WholeMessage):
            return b"".join([self.send(part) for part in event.expand()])
        handler = self._handlers.get((self._state, type(event)))
        if handler is None:
            raise LocalProtocolError(
                f"cannot send {type(event).__name__} in state {self._state.name}"
            )
        if self._tid is not None and event.transaction_id != self._tid:
            raise LocalProtocolError(
                f"event for transaction {event.transaction_id!r} inside {self._tid!r}"
            )
        return handler(event)

    def _send_head(self, event: Event) -> bytes:
        assert isinstance(event, RequestHead | ResponseHead)
        data = serialize_head(event)
        self._tid = event.transaction_id
        self._tail = b""
        self._is_response = isinstance(event, ResponseHead)
        has_body = isinstance(event, RequestHead) and event.has_body
        self._state = _State.BODY if has_body else _State.NO_BODY
        return data

    def _send_body(self, event: Event) -> bytes:
        assert isinstance(event, BodyData) and self._tid is not None
        # RFC 4975 §7.1: the sender MUST ensure the end-line text
        # ("-------" tid flag) does not appear in the body.
        marker = f"-------{self._tid}".encode("ascii")
        data = event.data
        # Check the seam with the previous send on a small window, then the data.
        for window in (self._tail + data[: len(marker) + 1], data):
            if _has_end_line(window, marker):
                raise LocalProtocolError("body contains the end-line of its transaction")
        self._tail = (
            (self._tail + data)[-len(marker) :] if len(data) < len(marker) else data[-len(marker) :]
        )
        return data

    def _send_end(self, event: Event) -> bytes:
        assert isinstance(event, EndOfMessage)
        if self._is_response and event.continuation != "$":
            raise LocalProtocolError("a response end-line must use '$'")
        after_body = self._state is _State.BODY
        data = serialize_end_line(event.transaction_id, event.continuation, after_body=after_body)
        self._state = _State.IDLE
        self._tid = None
        self._tail = b""
        return data
