"""SIP message parsing: whole datagrams (UDP) and an incremental stream framer (TCP/TLS).

Bytes in, messages out. Everything the peer got wrong raises
:class:`RemoteProtocolError` carrying the status to answer with and, when the
start line and headers could be read, the partly parsed message
(``error.partial``) so that a 400 can still be built from its Via, From, To,
Call-ID and CSeq.

Tolerance for real clients: header folding (LWS continuation lines), any
whitespace around the colon, any case in names, compact names, bare-LF line
ends, a missing reason phrase, arbitrary body bytes. Header bytes that are not
UTF-8 are kept with ``surrogateescape`` so a message re-serialises unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from shared.sip.errors import RemoteProtocolError
from shared.sip.headers import parse_cseq
from shared.sip.message import (
    _NAME_CACHE,
    Headers,
    LazyResponse,
    SipRequest,
    SipResponse,
    _name_key,
)
from shared.sip.status import StatusCode

__all__ = [
    "DEFAULT_MAX_DATAGRAM_SIZE",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_LINE_LENGTH",
    "KeepAlivePing",
    "SipStreamParser",
    "StreamEvent",
    "parse_datagram",
    "parse_head",
    "parse_response_head",
]

DEFAULT_MAX_DATAGRAM_SIZE = 65535  # the largest UDP payload (RFC 768 length field)
DEFAULT_MAX_HEADERS = 64  # header fields (after unfolding) per message
DEFAULT_MAX_LINE_LENGTH = 8192  # one unfolded header field, name included
DEFAULT_MAX_HEAD_SIZE = 65535  # start line + headers on a stream, in bytes
DEFAULT_MAX_BODY_SIZE = 1 << 20  # bytes; IM bodies are small, bulk content goes over MSRP

# RFC 3261 §8.1.1: the header fields every request needs.
REQUIRED_REQUEST_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq", "Max-Forwards")
# §18.1.2 / §8.1.3.3: a response without these cannot be matched; it is dropped.
REQUIRED_RESPONSE_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")

_TOO_LARGE = StatusCode.MESSAGE_TOO_LARGE

_TOKEN_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~\-]+")
_HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
#: Methods known to be tokens (others are checked with the token pattern).
_METHODS = frozenset(
    [
        "REGISTER",
        "INVITE",
        "ACK",
        "CANCEL",
        "BYE",
        "OPTIONS",
        "MESSAGE",
        "INFO",
        "UPDATE",
        "NOTIFY",
        "SUBSCRIBE",
        "REFER",
        "PRACK",
        "PUBLISH",
    ]
)
_BAD_URI_CHAR_RE = re.compile(r'[\x00-\x1f\x7f<>"]')
_STATUS_RE = re.compile(r"SIP/2\.0 ([1-6][0-9][0-9])(?: (.*))?", re.IGNORECASE | re.DOTALL)

#: Request-URIs and status lines already checked: both repeat from message to message, and
#: the regular expression engine costs far more per character than a look-up.
_GOOD_URIS: set[str] = set()
_STATUS_LINES: dict[str, tuple[int, str]] = {}
_CHECKED_MAX: Final = 256


def _status_line(line: str) -> tuple[int, str] | None:
    """A status line's code and reason phrase (blanks around it dropped); None if invalid."""
    known = _STATUS_LINES.get(line)
    if known is not None:
        return known
    m = _STATUS_RE.fullmatch(line)
    if m is None:
        return None
    if len(_STATUS_LINES) >= _CHECKED_MAX:
        _STATUS_LINES.clear()
    known = _STATUS_LINES[line] = (int(m.group(1)), (m.group(2) or "").strip())
    return known


@dataclass(frozen=True, slots=True)
class KeepAlivePing:
    """A CRLFCRLF keep-alive on a stream (RFC 5626 §3.5.1): answer it with a CRLF."""


StreamEvent = SipRequest | SipResponse | KeepAlivePing


def _parse_start_line(line: str) -> SipRequest | SipResponse:
    if line[:4].upper() == "SIP/":
        known = _status_line(line)
        if known is None:
            raise RemoteProtocolError(f"invalid status line {line[:80]!r}")
        return SipResponse(status=known[0], reason=known[1])
    parts = line.split(" ")
    if len(parts) != 3 or not all(parts):
        # RFC 4475 §3.1.2.11: exactly one SP between the request-line elements.
        raise RemoteProtocolError(f"invalid request line {line[:80]!r}")
    method, uri, version = parts
    if method not in _METHODS and not _TOKEN_RE.fullmatch(method):
        raise RemoteProtocolError(f"invalid method {method[:40]!r}")
    if version != "SIP/2.0" and version.upper() != "SIP/2.0":
        status = StatusCode.VERSION_NOT_SUPPORTED if version[:4].upper() == "SIP/" else 400
        raise RemoteProtocolError(f"unsupported version {version[:20]!r}", status_hint=status)
    if uri not in _GOOD_URIS:
        if _BAD_URI_CHAR_RE.search(uri):
            # RFC 4475 §3.1.2.7: a Request-URI in <> is invalid.
            raise RemoteProtocolError(f"invalid Request-URI {uri[:80]!r}")
        if len(_GOOD_URIS) >= _CHECKED_MAX:
            _GOOD_URIS.clear()
        _GOOD_URIS.add(uri)
    return SipRequest(method=method, uri=uri)


def parse_head(
    head: bytes,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
) -> SipRequest | SipResponse:
    """Parse a start line and headers (no blank line, no body) and validate them."""
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    return _parse_head_text(text, lines, _crlf_only(lines), max_headers, max_line_length)


def _parse_head_text(
    text: str, lines: list[str], crlf_only: bool, max_headers: int, max_line_length: int
) -> SipRequest | SipResponse:
    """:func:`parse_head` of the decoded head ``text``, split at its CRLFs into ``lines``
    (``crlf_only``: no other CR or LF in them)."""
    if crlf_only:
        # What nearly every message looks like: CRLF line ends (and no folding, which the
        # request's short way finds in a header line of no valid name).
        message = _parse_start_line(lines[0])
        fields = lines[1:]
        if (
            type(message) is SipRequest
            and 0 < len(fields) <= max_headers
            and max(map(len, fields)) <= max_line_length
            and _parse_request_fields(message, fields)
        ):
            return message
        if "\n " in text or "\n\t" in text:
            message, fields = _unfold(text)
    else:
        message, fields = _unfold(text)
    headers = Headers()
    message.headers = headers
    if len(fields) > max_headers:
        raise RemoteProtocolError("too many headers", status_hint=_TOO_LARGE, partial=message)
    parsed: list[tuple[str, str]] = []
    for field in fields:
        if len(field) > max_line_length:
            headers.extend_parsed(parsed)
            raise RemoteProtocolError(
                "header line too long", status_hint=_TOO_LARGE, partial=message
            )
        name, colon, value = field.partition(":")
        if not colon:
            headers.extend_parsed(parsed)
            raise RemoteProtocolError(f"invalid header line {field[:80]!r}", partial=message)
        name = name.rstrip(" \t")
        if name not in _VALID_NAMES and not _valid_name(name):
            headers.extend_parsed(parsed)
            raise RemoteProtocolError(f"invalid header line {field[:80]!r}", partial=message)
        parsed.append((name, value.strip(" \t")))
    headers.extend_parsed(parsed)
    _validate(message)
    return message


def _crlf_only(lines: list[str]) -> bool:
    """No CR or LF in ``lines`` (a text split at its CRLFs): it had no other line end.
    Two searches of the joined lines, not two counts over the text: counting a character
    costs several times more than finding it absent."""
    rest = "".join(lines)
    return "\r" not in rest and "\n" not in rest


def _line_names(lines: list[str]) -> tuple[str, ...] | None:
    """The name of each header line of the usual shape (a token, optional blanks, a colon);
    None when a line is of another (a continuation, no colon, a bad name)."""
    found: list[str] = []
    valid = _VALID_NAMES
    for line in lines:
        colon = line.find(":")
        if colon < 0:
            return None
        name = line[:colon]
        if name not in valid:
            name = name.rstrip(" \t")
            if name not in valid and not _valid_name(name):
                return None
        found.append(name)
    return tuple(found)


_REQUIRED_RESPONSE_KEYS = tuple(name.lower() for name in REQUIRED_RESPONSE_HEADERS)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What the header names of a response tell: its lines' lookup keys (shared, never
    modified) and where its CSeq, Call-ID and Content-Length (-1: none) lines are."""

    keys: list[str]
    cseq: int
    call_id: int
    length: int


#: Header name sequences seen, to their shape (None: the full parse refuses those names).
#: A UA answers with the same names in the same order every time: this saves looking up
#: every name and checking the required and single headers, per response.
_SHAPES: dict[tuple[str, ...], _Shape | None] = {}
_SHAPES_MAX = 1024


def _shape(names: tuple[str, ...]) -> _Shape | None:
    cache = _NAME_CACHE
    keys = [(cache.get(name) or _name_key(name))[1] for name in names]
    shape = None
    if all(key in keys for key in _REQUIRED_RESPONSE_KEYS) and all(
        keys.count(key) <= 1 for key in _SINGLE_KEYS
    ):
        length = keys.index("content-length") if "content-length" in keys else -1
        shape = _Shape(keys, keys.index("cseq"), keys.index("call-id"), length)
    if len(_SHAPES) < _SHAPES_MAX:
        _SHAPES[names] = shape
    return shape


_CSEQ_MAX = 2**31


@dataclass(frozen=True, slots=True)
class _RequestShape:
    """What the header names of a request tell: its lines' canonical names and lookup keys
    (shared, never modified) and where its CSeq, Call-ID and Max-Forwards lines are."""

    names: tuple[str, ...]
    keys: tuple[str, ...]
    cseq: int
    call_id: int
    max_forwards: int


#: As ``_SHAPES``, for requests: a UA sends the same names in the same order every time.
_REQUEST_SHAPES: dict[tuple[str, ...], _RequestShape | None] = {}
_REQUIRED_REQUEST_KEYS = tuple(name.lower() for name in REQUIRED_REQUEST_HEADERS)


def _request_shape(names: tuple[str, ...]) -> _RequestShape | None:
    pairs = [_NAME_CACHE.get(name) or _name_key(name) for name in names]
    keys = [key for _, key in pairs]
    shape = None
    if all(key in keys for key in _REQUIRED_REQUEST_KEYS) and all(
        keys.count(key) <= 1 for key in _SINGLE_KEYS
    ):
        shape = _RequestShape(
            tuple(canonical for canonical, _ in pairs),
            tuple(keys),
            keys.index("cseq"),
            keys.index("call-id"),
            keys.index("max-forwards"),
        )
    if len(_REQUEST_SHAPES) < _SHAPES_MAX:
        _REQUEST_SHAPES[names] = shape
    return shape


def _parse_request_fields(message: SipRequest, fields: list[str]) -> bool:
    """Give ``message`` the header lines ``fields`` (CRLF line ends in its head, no
    folding, no line too long, not too many) when the full parse would accept them exactly
    so; False (``message`` untouched) when anything is unusual: the full parse decides.

    Every line a token name and a colon; the required headers present and the single ones
    not repeated (both known from the sequence of names); a valid CSeq of the request's
    method, a valid Max-Forwards, a non-empty Call-ID: what :func:`_validate` checks.
    """
    found: list[str] = []
    values: list[str] = []
    valid = _VALID_NAMES
    for field in fields:
        name, colon, value = field.partition(":")
        if not colon:
            return False
        if name not in valid:
            name = name.rstrip(" \t")  # blanks are allowed before the colon (§7.3.1)
            if name not in valid and not _valid_name(name):
                return False
        found.append(name)
        values.append(value.strip(" \t"))
    names = tuple(found)
    try:
        shape = _REQUEST_SHAPES[names]
    except KeyError:
        shape = _request_shape(names)
    if shape is None:
        return False
    try:
        cseq = parse_cseq(values[shape.cseq])
    except ValueError:
        return False
    max_forwards = values[shape.max_forwards]
    if (
        cseq.method != message.method
        or not (max_forwards.isascii() and max_forwards.isdigit())
        or int(max_forwards) > 255
        or not values[shape.call_id]
    ):
        return False
    message.headers = Headers.with_keys(list(zip(shape.names, values, strict=True)), shape.keys)
    return True


def parse_response_head(
    head: bytes,
    *,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
) -> SipRequest | SipResponse:
    """:func:`parse_head` for a response, its header lines left unparsed.

    A response of the usual shape (CRLF line ends, no folding) that :func:`parse_head`
    would accept becomes a :class:`LazyResponse`; anything else, requests included, goes
    to :func:`parse_head`, which returns or raises exactly what it always does. So the
    checks here only decide that the full parse would succeed: every line a token name
    and a colon, the response's required headers present and not repeated, a valid CSeq,
    a non-empty Call-ID, a well-formed Content-Length.
    """
    text = head.decode("utf-8", "surrogateescape")
    lines = text.split("\r\n")
    return _parse_response_text(text, lines, _crlf_only(lines), max_headers, max_line_length)


def _parse_response_text(
    text: str, lines: list[str], crlf_only: bool, max_headers: int, max_line_length: int
) -> SipRequest | SipResponse:
    """:func:`parse_response_head` of the decoded head (as :func:`_parse_head_text`)."""
    crlf = len(lines) - 1
    if (
        crlf_only
        and 0 < crlf <= max_headers
        and len(text) <= max_line_length  # then no line can be too long
    ):
        start = lines[0]
        fields = lines[1:]
        status = _status_line(start) if start[:4] == "SIP/" else None
        names = _line_names(fields) if status is not None else None
        if status is not None and names is not None:
            try:
                shape = _SHAPES[names]
            except KeyError:
                shape = _shape(names)
            if shape is not None:
                cseq = fields[shape.cseq].partition(":")[2].split()
                length: int | None = None
                if shape.length >= 0:
                    value = fields[shape.length].partition(":")[2].strip(" \t")
                    ok = value.isascii() and value.isdigit() and len(value) <= 12
                    length = int(value) if ok else -1
                if (
                    len(cseq) == 2
                    and cseq[0].isascii()
                    and cseq[0].isdigit()
                    and len(cseq[0]) <= 12
                    and int(cseq[0]) < _CSEQ_MAX
                    and (cseq[1] in _METHODS or _TOKEN_RE.fullmatch(cseq[1]))
                    and fields[shape.call_id].partition(":")[2].strip(" \t")
                    and length != -1
                ):
                    return LazyResponse(
                        status=status[0],
                        reason=status[1],
                        lines=fields,
                        keys=shape.keys,
                        content_length=length,
                    )
    return _parse_head_text(text, lines, crlf_only, max_headers, max_line_length)


def _unfold(text: str) -> tuple[SipRequest | SipResponse, list[str]]:
    """The start line's message and the unfolded header lines, for any line ends."""
    lines = text.split("\n")  # then a CR before each LF is dropped: CRLF or bare LF
    start = lines[0][:-1] if lines[0].endswith("\r") else lines[0]
    if "\r" in start:
        raise RemoteProtocolError("bare CR in start line")
    message = _parse_start_line(start)
    fields: list[str] = []
    for line in lines[1:]:
        if line.endswith("\r"):
            line = line[:-1]
        if "\r" in line:
            raise RemoteProtocolError("bare CR in header", partial=message)
        if line[:1] in (" ", "\t"):
            # §7.3.1: a continuation line; the fold is equivalent to one SP.
            if not fields:
                raise RemoteProtocolError("continuation before any header", partial=message)
            part = line.strip(" \t")
            if part:
                fields[-1] = f"{fields[-1]} {part}" if fields[-1] else part
            continue
        fields.append(line)
    return message, fields


#: Header names already seen to be tokens (they repeat in every message).
_VALID_NAMES: set[str] = set()
_VALID_NAMES_MAX = 4096


def _valid_name(name: str) -> bool:
    """True for a token, remembered in ``_VALID_NAMES`` (while it has room)."""
    if not _TOKEN_RE.fullmatch(name):
        return False
    if len(_VALID_NAMES) < _VALID_NAMES_MAX:
        _VALID_NAMES.add(name)
    return True


def _validate(message: SipRequest | SipResponse) -> None:
    headers = message.headers
    is_request = isinstance(message, SipRequest)
    required = REQUIRED_REQUEST_HEADERS if is_request else REQUIRED_RESPONSE_HEADERS
    keys = headers.keys()
    for name in required:
        if name.lower() not in keys:
            raise RemoteProtocolError(f"missing {name} header", partial=message)
    for name in _SINGLE_HEADERS:
        if keys.count(name.lower()) > 1:
            # §7.3.1: these may not be repeated; two CSeqs make matching ambiguous.
            raise RemoteProtocolError(f"repeated {name} header", partial=message)
    try:
        cseq = parse_cseq(headers.first("CSeq") or "")
    except ValueError as exc:
        raise RemoteProtocolError(str(exc), partial=message) from None
    if isinstance(message, SipRequest):
        # §8.2.2 (and RFC 4475 §3.1.2.16): CSeq method must equal the request method.
        if cseq.method != message.method:
            raise RemoteProtocolError("CSeq method does not match request", partial=message)
        max_forwards = headers.first("Max-Forwards") or ""
        if not (max_forwards.isascii() and max_forwards.isdigit()) or int(max_forwards) > 255:
            raise RemoteProtocolError("invalid Max-Forwards", partial=message)
    if not headers.first("Call-ID"):
        raise RemoteProtocolError("empty Call-ID", partial=message)


_SINGLE_HEADERS = ("From", "To", "Call-ID", "CSeq", "Max-Forwards", "Content-Length")
_SINGLE_KEYS = tuple(name.lower() for name in _SINGLE_HEADERS)


def _content_length(message: SipRequest | SipResponse) -> int | None:
    if isinstance(message, LazyResponse) and message.lazy:
        return message.content_length  # (checked by parse_response_head)
    value = message.headers.first("Content-Length")
    if value is None:
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > 12:
        raise RemoteProtocolError(f"invalid Content-Length {value[:20]!r}", partial=message)
    return int(value)


def parse_datagram(
    data: bytes,
    *,
    max_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
    lazy_responses: bool = False,
) -> SipRequest | SipResponse | None:
    """Parse one UDP datagram; None for a keep-alive (only CR/LF bytes, or empty).

    §18.3: without Content-Length the body runs to the end of the datagram;
    bytes beyond Content-Length are discarded; fewer bytes than it is an error.
    ``lazy_responses``: a response may come back as a :class:`LazyResponse`.
    """
    if len(data) > max_size:
        raise RemoteProtocolError("datagram too large", status_hint=_TOO_LARGE)
    if not data or data[0] == 0x0D or data[0] == 0x0A:
        # §7.5: CRLFs before the start line are ignored.
        data = data.lstrip(b"\r\n")
        if not data:
            return None
    message: SipRequest | SipResponse | None = None
    end = data.find(b"\r\n\r\n")
    if end > 0:
        # The usual CRLF CRLF. The head ends there when its lines, split at the CRLFs, hold
        # no other CR or LF (no blank line of bare LFs can come first); the parse needs
        # that check and those lines anyway, so they are made once, here.
        text = data[:end].decode("utf-8", "surrogateescape")
        lines = text.split("\r\n")
        if _crlf_only(lines):
            body = data[end + 4 :]
            if lazy_responses and text[:4] == "SIP/":
                message = _parse_response_text(text, lines, True, max_headers, max_line_length)
            else:
                message = _parse_head_text(text, lines, True, max_headers, max_line_length)
    if message is None:
        m = _HEAD_END_RE.search(data)
        if m is None:
            head, body = data.rstrip(b"\r\n"), b""
        else:
            head, body = data[: m.start()], data[m.end() :]
        parse = parse_response_head if lazy_responses and head[:4] == b"SIP/" else parse_head
        message = parse(head, max_headers=max_headers, max_line_length=max_line_length)
    length = _content_length(message)
    if length is not None:
        if length > len(body):
            raise RemoteProtocolError("body shorter than Content-Length", partial=message)
        body = body[:length]
    message.body = body
    return message


class SipStreamParser:
    """Frames SIP messages on a TCP/TLS byte stream; accepts any split of the input.

    ``receive_data`` buffers the bytes and returns an iterator over the
    events completed so far (messages and :class:`KeepAlivePing`). Errors are
    raised from that iterator once every earlier event has been delivered;
    after one, the stream's framing is lost and the connection should be
    closed (after answering ``error.partial`` if it is a request).
    ``lazy_responses``: a response may come out as a :class:`LazyResponse`.
    """

    def __init__(
        self,
        *,
        max_head_size: int = DEFAULT_MAX_HEAD_SIZE,
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        max_headers: int = DEFAULT_MAX_HEADERS,
        max_line_length: int = DEFAULT_MAX_LINE_LENGTH,
        lazy_responses: bool = False,
    ) -> None:
        self._lazy_responses = lazy_responses
        self._max_head_size = max_head_size
        self._max_body_size = max_body_size
        self._max_headers = max_headers
        self._max_line_length = max_line_length
        self._buffer = bytearray()
        self._scan_from = 0  # where to resume the search for the end of the head
        self._pending: tuple[SipRequest | SipResponse, int] | None = None
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a returned event."""
        return len(self._buffer)

    def receive_data(self, data: bytes) -> Iterator[StreamEvent]:
        if self._error is None:  # after an error nothing more is parsed: don't hoard
            self._buffer += data
        return self._events()

    def _events(self) -> Iterator[StreamEvent]:
        while True:
            if self._error is not None:
                raise self._error
            try:
                event = self._next_event()
            except RemoteProtocolError as exc:
                self._error = exc
                raise
            if event is None:
                return
            yield event

    def _next_event(self) -> StreamEvent | None:
        buf = self._buffer
        if self._pending is None:
            # Between messages: CRLFCRLF is a ping, a lone CRLF (a pong, or
            # §7.5 padding) is ignored. Wait while a ping is still possible.
            while bytes(buf[:1]) in (b"\r", b"\n"):
                if buf[:4] == b"\r\n\r\n":
                    del buf[:4]
                    return KeepAlivePing()
                if b"\r\n\r\n".startswith(bytes(buf[:4])):
                    return None
                del buf[: 2 if buf[:2] == b"\r\n" else 1]
            m = _HEAD_END_RE.search(buf, self._scan_from)
            if m is None:
                if len(buf) > self._max_head_size:
                    raise RemoteProtocolError("header section too large", status_hint=_TOO_LARGE)
                self._scan_from = max(0, len(buf) - 3)
                return None
            head = bytes(buf[: m.start()])
            del buf[: m.end()]
            self._scan_from = 0
            if len(head) > self._max_head_size:
                raise RemoteProtocolError("header section too large", status_hint=_TOO_LARGE)
            lazy = self._lazy_responses and head[:4] == b"SIP/"
            message = (parse_response_head if lazy else parse_head)(
                head, max_headers=self._max_headers, max_line_length=self._max_line_length
            )
            length = _content_length(message)
            if length is None:
                # §18.3: on a stream Content-Length is the only framing there is.
                raise RemoteProtocolError("missing Content-Length on a stream", partial=message)
            if length > self._max_body_size:
                raise RemoteProtocolError(
                    "body too large",
                    status_hint=StatusCode.REQUEST_ENTITY_TOO_LARGE,
                    partial=message,
                )
            self._pending = (message, length)
        message, length = self._pending
        if len(buf) < length:
            return None
        message.body = bytes(buf[:length])
        del buf[:length]
        self._pending = None
        return message
