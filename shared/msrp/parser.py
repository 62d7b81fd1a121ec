"""Incremental, sans-IO MSRP parser (RFC 4975 §7.1, §9).

Feed bytes with :meth:`MsrpParser.receive_data` in slices of any size (one
byte at a time included) and drain events with :meth:`MsrpParser.next_event`
or :meth:`MsrpParser.events`.

The grammar is read top-down by a generator, in the manner of websockets'
``StreamReader``: :meth:`_read_line` suspends until a whole CRLF-terminated
line is buffered; the body reader streams bytes out as soon as they are known
not to belong to the end-line.  RFC 4975 §9, simplified::

    msrp-request  = req-start headers [content-stuff] end-line
    msrp-response = resp-start headers end-line
    req-start     = "MSRP" SP transact-id SP method CRLF
    resp-start    = "MSRP" SP transact-id SP status-code [SP comment] CRLF
    headers       = To-Path CRLF From-Path CRLF *( header CRLF )
    content-stuff = *(Other-Mime-header CRLF) Content-Type 2CRLF data CRLF
    end-line      = "-------" transact-id continuation-flag CRLF

There is no Content-Length (RFC 4975 §5.1): the body ends at the first
``CRLF "-------" transact-id flag CRLF``.  A body may contain ``CRLF -------``
followed by anything else (another tid, a longer tid, no flag); that is body.

Errors: malformed input raises :class:`RemoteProtocolError` with
``status_hint`` 400 ("Unintelligible", RFC 4975 §10.2) and the transaction id
when it could be read.  Oversized heads also get 400, not 413: in RFC 4975
413 means "stop sending this message" (§10.6), a request about message
content, while an over-long header section is simply a request this receiver
cannot understand.  After an error the parser stays failed: the stream cannot
be resynchronised, so the caller answers 400 if it can and closes.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import Generator, Iterator
from functools import lru_cache

from .errors import LocalProtocolError, RemoteProtocolError
from .events import (
    BodyData,
    Continuation,
    EndOfMessage,
    Event,
    RequestHead,
    ResponseHead,
    WholeMessage,
)
from .uri import MsrpUri, parse_path

__all__ = ["MsrpParser"]

_START_RE = re.compile(rb"MSRP ([A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31}) (.*)", re.DOTALL)
_START_TID_RE = re.compile(rb"MSRP ([A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31})(?: |$)")
_METHOD_RE = re.compile(rb"[A-Z]+")
_STATUS_RE = re.compile(rb"([0-9]{3})(?: (.*))?", re.DOTALL)
# hname = ALPHA *token ; ":" SP hval.  Extra spaces/tabs around the value are
# tolerated on receive and dropped.
_HNAME_RE = re.compile(rb"[A-Za-z][A-Za-z0-9!#$%&'*+\-.^_`|~]*")
# utf8text = *(HTAB / %x20-7E / UTF8-NONASCII): every other control is illegal.
_CTL_RE = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
# The start line in one match, for the whole-message fast path: the same grammar as
# _START_RE followed by _METHOD_RE or _STATUS_RE.
_FAST_START_RE = re.compile(
    rb"MSRP ([A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31}) (?:([A-Z]+)|([0-9]{3})(?: (.*))?)", re.DOTALL
)
_END_LINE_PREFIX = b"-------"
_FLAGS: dict[int, Continuation] = {ord("$"): "$", ord("+"): "+", ord("#"): "#"}


def _decode_text(raw: bytes, what: str) -> str:
    if _CTL_RE.search(raw):
        raise RemoteProtocolError(f"control character in {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError(f"{what} is not valid UTF-8") from None


@lru_cache(maxsize=4096)
def _header_line(line: bytes) -> tuple[str, str]:
    """``(name, value)`` of one header line; cached, since paths and most headers repeat
    with every chunk of a session."""
    name, colon, value = line.partition(b":")
    if not colon or not _HNAME_RE.fullmatch(name):
        raise RemoteProtocolError("malformed header line")
    text = name.decode("ascii")
    return text, _decode_text(value.strip(b" \t"), f"{text} header")


@lru_cache(maxsize=256)
def _comment(raw: bytes) -> str:
    """A response's comment ("OK" nearly always); cached."""
    return _decode_text(raw, "comment")


@lru_cache(maxsize=4096)
def _path_pair(to_line: bytes, from_line: bytes) -> tuple[tuple[MsrpUri, ...], tuple[MsrpUri, ...]]:
    """To-Path and From-Path from the first two header lines; cached, since they repeat
    with every message of a session.  Raises like :meth:`_HeadFields.add`."""
    to_name, to_value = _header_line(to_line)
    if to_name.lower() != "to-path":
        raise RemoteProtocolError("first header is not To-Path")
    from_name, from_value = _header_line(from_line)
    if from_name.lower() != "from-path":
        raise RemoteProtocolError("second header is not From-Path")
    return parse_path(to_value), parse_path(from_value)


@lru_cache(maxsize=4096)
def _other_header(line: bytes) -> tuple[str, str]:
    """A header line after From-Path; raises like :meth:`_HeadFields.add`."""
    name, value = _header_line.__wrapped__(line)  # cached here, not twice
    if name.lower() in ("to-path", "from-path"):
        raise RemoteProtocolError(f"duplicate {name} header")
    return name, value


def _partial_marker_suffix(buf: bytearray, marker: bytes) -> int:
    """Length of the longest proper prefix of *marker* that *buf* ends with.

    Those bytes might be the start of the end-line, so they are held back.
    """
    pos = buf.find(b"\r", max(0, len(buf) - (len(marker) - 1)))
    while pos != -1:
        if marker.startswith(bytes(buf[pos:])):
            return len(buf) - pos
        pos = buf.find(b"\r", pos + 1)
    return 0


def _end_flag(line: bytes, end_line: bytes) -> Continuation:
    flag = _FLAGS.get(line[-1]) if line else None
    if flag is None or line[:-1] != end_line:
        raise RemoteProtocolError("malformed end-line")
    return flag


class _HeadFields:
    """The header section being read: To-Path, From-Path, the rest in order."""

    __slots__ = ("count", "from_path", "header_bytes", "headers", "to_path")

    def __init__(self) -> None:
        self.to_path: tuple[MsrpUri, ...] | None = None
        self.from_path: tuple[MsrpUri, ...] | None = None
        self.headers: list[tuple[str, str]] = []
        self.count = 0
        self.header_bytes = 0

    def add(self, line: bytes, parser: MsrpParser) -> None:
        self.count += 1
        if self.count > parser.max_headers:
            raise RemoteProtocolError(f"more than {parser.max_headers} header fields")
        name, value = _header_line(line)
        lowered = name.lower()
        # RFC 4975 §7.1.1 / §9: To-Path first, From-Path second, once each.
        if self.count == 1:
            if lowered != "to-path":
                raise RemoteProtocolError("first header is not To-Path")
            self.to_path = parse_path(value)
        elif self.count == 2:
            if lowered != "from-path":
                raise RemoteProtocolError("second header is not From-Path")
            self.from_path = parse_path(value)
        elif lowered in ("to-path", "from-path"):
            raise RemoteProtocolError(f"duplicate {name} header")
        else:
            self.headers.append((name, value))


class MsrpParser:
    """Turns an MSRP byte stream into :mod:`~shared.msrp.events`.

    Limits protect the receiver from unbounded buffering of the head; bodies
    are never buffered beyond the few bytes that might start the end-line.
    """

    def __init__(
        self,
        *,
        # Longest start line, CRLF excluded; "MSRP " + 32-char tid + method or
        # status and comment fit in far less, the rest is comment slack.
        max_start_line: int = 8192,
        # Longest header line, CRLF excluded.  To-Path/From-Path with several
        # relays and Digest Authorization lines stay well below this.
        max_header_line: int = 4096,
        # Most header lines per message, To-Path and From-Path included.
        max_headers: int = 32,
        # Most bytes in the header section (lines plus CRLFs, start line excluded).
        max_header_bytes: int = 16384,
        # Parse messages that are wholly buffered in one pass (see _parse_whole); False
        # forces the incremental reader for everything (tests compare the two).
        fast_path: bool = True,
        # Deliver a message parsed whole by the fast path as one WholeMessage event instead
        # of head, body and end-line events.
        whole_messages: bool = False,
    ) -> None:
        self.max_start_line = max_start_line
        self.max_header_line = max_header_line
        self.max_headers = max_headers
        self.max_header_bytes = max_header_bytes
        self.fast_path = fast_path
        self.whole_messages = whole_messages
        self._buf = bytearray()
        self._events: deque[Event] = deque()
        self._error: RemoteProtocolError | None = None
        self._eof = False
        # Transaction id of the message being parsed, once its start line is read.
        self._current_tid: str | None = None
        # The incremental reader of the message in progress; None between messages.
        self._gen: Generator[None, None, None] | None = None

    # -- public API ------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Append bytes read from the connection and parse as far as possible.

        Raises the stored :class:`RemoteProtocolError` if the parser already
        failed.  Errors found in *data* are raised by :meth:`next_event` once
        the events preceding them have been drained.
        """
        if self._error is not None:
            raise self._error
        if self._eof:
            raise LocalProtocolError("receive_data() after receive_eof()")
        if not data:
            return
        try:
            if self._gen is None and not self._buf and self.fast_path and type(data) is bytes:
                # Between messages with nothing buffered (the usual case): parse straight
                # from the bytes read, and buffer only what is left.
                used = self._parse_whole(data)
                if used == len(data):
                    return
                self._buf += data[used:] if used else data
                self._parse(fast_path_tried=True)
            else:
                self._buf += data
                self._parse()
        except RemoteProtocolError as err:
            if err.transaction_id is None:
                err.transaction_id = self._current_tid
            self._error = err

    def receive_eof(self) -> None:
        """Signal that the peer closed the connection.

        If a message was in progress, :meth:`next_event` raises a
        :class:`RemoteProtocolError` after the pending events.
        """
        if self._error is not None or self._eof:
            return
        self._eof = True
        if not self.at_message_boundary:
            self._error = RemoteProtocolError(
                "connection closed in the middle of a message",
                transaction_id=self._current_tid,
            )

    def next_event(self) -> Event | None:
        """Pop the next event; ``None`` means more data is needed."""
        if self._events:
            return self._events.popleft()
        if self._error is not None:
            raise self._error
        return None

    def events(self) -> Iterator[Event]:
        """Yield every event available now (raises like :meth:`next_event`)."""
        while (event := self.next_event()) is not None:
            yield event

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet turned into events (held back)."""
        return len(self._buf)

    @property
    def at_message_boundary(self) -> bool:
        """True when no message is partially received."""
        return self._current_tid is None and not self._buf

    @property
    def failed(self) -> bool:
        return self._error is not None

    # -- driver ----------------------------------------------------------------

    def _parse(self, fast_path_tried: bool = False) -> None:
        """Parse what is buffered: whole messages in one pass, the rest incrementally."""
        buf = self._buf
        while buf:
            gen = self._gen
            if gen is None:
                if self.fast_path and not fast_path_tried:
                    used = self._parse_whole(buf)
                    if used:
                        del buf[:used]
                        if not buf:
                            return
                    gen = self._gen
                fast_path_tried = False
                if gen is None:
                    gen = self._gen = self._parse_message()
            try:
                next(gen)
            except StopIteration:
                self._gen = None
                continue
            return  # the reader waits for more bytes

    def _parse_whole(self, buf: bytes | bytearray) -> int:
        """The fast path: turn the messages at the front of *buf* (the buffer, or the bytes
        just read when nothing was buffered) into events without the incremental reader,
        as long as each head is wholly there and well-formed; return how many bytes of
        *buf* it consumed (the caller drops them).

        Produces exactly the events the incremental reader would.  It stops (leaving the
        rest to that reader) at the first message whose head is incomplete or that has
        anything the reader would refuse, so errors, limits and their transaction ids come
        from one place.  A body whose end-line is not buffered yet is handed to the
        reader's body streamer once the head is out.
        """
        size = len(buf)
        events = self._events
        pos = 0
        max_line = self.max_header_line
        max_start = self.max_start_line + 2
        max_head = self.max_header_bytes + 4
        max_headers = self.max_headers
        whole = self.whole_messages
        try:
            while pos < size:
                eol = buf.find(b"\r\n", pos, pos + max_start)
                if eol == -1:
                    break
                start = _FAST_START_RE.fullmatch(buf, pos, eol)
                if start is None:
                    break
                tid_bytes, method_bytes, status_bytes, comment_bytes = start.groups()
                head_at = eol + 2
                end_pattern = b"\r\n-------" + tid_bytes
                window = head_at + max_head
                if method_bytes is not None:
                    blank = buf.find(b"\r\n\r\n", head_at, window)
                    # The end-line ends the head only when no blank line comes first.
                    ended = buf.find(
                        end_pattern,
                        head_at,
                        window if blank == -1 else blank + len(end_pattern) - 1,
                    )
                    if ended == -1 and blank == -1:
                        break
                else:
                    ended = buf.find(end_pattern, head_at, window)
                    if ended == -1:
                        break
                    blank = buf.find(b"\r\n\r\n", head_at, ended + 3)
                    if blank != -1:
                        break  # a response with a body: the reader reports it
                if ended != -1:
                    # No body: the end-line follows the last header.
                    close = ended + len(end_pattern) + 1
                    if size < close + 2:
                        break
                    flag = _FLAGS.get(buf[close - 1])
                    if flag is None or buf[close : close + 2] != b"\r\n":
                        break
                    lines = bytes(buf[head_at:ended]).split(b"\r\n")
                    after_head = close + 2
                else:
                    flag = None
                    lines = bytes(buf[head_at:blank]).split(b"\r\n")
                    after_head = blank + 4
                if len(lines) < 2 or len(lines) > max_headers:
                    break
                if max(map(len, lines)) > max_line:
                    break
                to_path, from_path = _path_pair(lines[0], lines[1])
                headers = tuple([_other_header(line) for line in lines[2:]])
                tid = tid_bytes.decode("ascii")
                head: RequestHead | ResponseHead
                if method_bytes is not None:
                    head = RequestHead(
                        tid, method_bytes.decode("ascii"), to_path, from_path, headers, flag is None
                    )
                else:
                    comment = None if comment_bytes is None else _comment(comment_bytes)
                    head = ResponseHead(
                        tid, int(status_bytes), comment, to_path, from_path, headers
                    )
                if flag is not None:
                    if whole:
                        events.append(WholeMessage(head, b"", flag))
                        pos = after_head
                        continue
                    events.append(head)
                else:
                    # The body, if its end-line is buffered too.
                    marker_len = len(end_pattern)
                    idx = buf.find(end_pattern, after_head)
                    while idx != -1:
                        at = idx + marker_len
                        if size < at + 3:
                            idx = -1
                            break
                        flag = _FLAGS.get(buf[at])
                        if flag is not None and buf[at + 1 : at + 3] == b"\r\n":
                            break
                        idx = buf.find(end_pattern, idx + 1)
                    if idx == -1 or flag is None:
                        # Stream the rest as it comes, like the reader does.
                        events.append(head)
                        pos = after_head
                        self._current_tid = tid
                        self._gen = self._finish_body(tid)
                        break
                    body = bytes(buf[after_head:idx]) if idx > after_head else b""
                    after_head = idx + marker_len + 3
                    if whole:
                        events.append(WholeMessage(head, body, flag))
                        pos = after_head
                        continue
                    events.append(head)
                    if body:
                        events.append(BodyData(tid, body))
                events.append(EndOfMessage(tid, flag))
                pos = after_head
        except RemoteProtocolError:
            pass  # the reader parses this message again and reports it
        return pos

    # -- stream readers --------------------------------------------------------

    def _read_line(self, limit: int, what: str) -> Generator[None, None, bytes]:
        """Wait for a CRLF-terminated line of at most *limit* bytes; consume it."""
        scanned = 0
        while True:
            buf = self._buf
            idx = buf.find(b"\r\n", scanned)
            if idx != -1:
                if idx > limit:
                    raise RemoteProtocolError(f"{what} longer than {limit} bytes")
                line = bytes(buf[:idx])
                del buf[: idx + 2]
                return line
            if len(buf) > limit + 1:  # +1: a trailing CR may still be the line end
                raise RemoteProtocolError(f"{what} longer than {limit} bytes")
            scanned = max(0, len(buf) - 1)
            yield

    def _emit_body(self, tid: str, size: int) -> None:
        if size <= 0:
            return
        with memoryview(self._buf) as view, view[:size] as part:
            data = bytes(part)
        del self._buf[:size]
        self._events.append(BodyData(tid, data))

    def _read_body(self, tid: str) -> Generator[None, None, Continuation]:
        """Stream body bytes out until ``CRLF -------tid flag CRLF``."""
        marker = b"\r\n" + _END_LINE_PREFIX + tid.encode("ascii")
        end_len = len(marker) + 3  # flag + CRLF
        search_from = 0
        while True:
            buf = self._buf
            idx = buf.find(marker, search_from)
            if idx == -1:
                # Everything except a possible start of the end-line is body.
                self._emit_body(tid, len(buf) - _partial_marker_suffix(buf, marker))
                search_from = 0
                yield
                continue
            if len(buf) < idx + end_len:
                # Marker seen, flag/CRLF not yet: hold back from the marker on.
                self._emit_body(tid, idx)
                search_from = 0
                yield
                continue
            flag = _FLAGS.get(buf[idx + len(marker)])
            if flag is not None and buf[idx + len(marker) + 1 : idx + end_len] == b"\r\n":
                self._emit_body(tid, idx)
                del self._buf[:end_len]
                return flag
            # "CRLF -------tid" followed by something else: body bytes.
            search_from = idx + 1

    def _header_block(self, end_line: bytes) -> tuple[list[bytes], Continuation | None] | None:
        """The header lines and how the section ends, if all of it is buffered; else None.

        The section ends at a blank line (a body follows) or at the end-line (no body).
        """
        buf = self._buf
        limit = self.max_header_bytes + 4
        blank = buf.find(b"\r\n\r\n", 0, limit)
        ended = buf.find(b"\r\n" + end_line, 0, limit)
        if ended != -1 and (blank == -1 or ended < blank):
            close = buf.find(b"\r\n", ended + 2)
            if close == -1:
                return None
            lines = bytes(buf[:ended]).split(b"\r\n")
            flag = _end_flag(bytes(buf[ended + 2 : close]), end_line)
            del buf[: close + 2]
        elif blank != -1:
            lines = bytes(buf[:blank]).split(b"\r\n")
            flag = None
            del buf[: blank + 4]
        else:
            return None
        if blank + 4 > limit and flag is None:
            raise RemoteProtocolError(f"header section over {self.max_header_bytes} bytes")
        if any(len(line) > self.max_header_line for line in lines):
            raise RemoteProtocolError(f"header line longer than {self.max_header_line} bytes")
        return lines, flag

    # -- grammar ---------------------------------------------------------------

    def _finish_body(self, tid: str) -> Generator[None, None, None]:
        """The body and end-line of a message whose head the fast path delivered."""
        continuation = yield from self._read_body(tid)
        self._events.append(EndOfMessage(tid, continuation))
        self._current_tid = None

    def _parse_start_line(self, line: bytes) -> tuple[str, str | None, int, str | None]:
        """Return ``(tid, method, status, comment)``; method is None for responses."""
        match = _START_RE.fullmatch(line)
        if match is None:
            partial = _START_TID_RE.match(line)
            tid = partial[1].decode("ascii") if partial else None
            raise RemoteProtocolError("malformed start line", transaction_id=tid)
        tid = match[1].decode("ascii")
        self._current_tid = tid
        rest = match[2]
        if _METHOD_RE.fullmatch(rest):
            return tid, rest.decode("ascii"), 0, None
        status = _STATUS_RE.fullmatch(rest)
        if status is None:
            raise RemoteProtocolError("start line has neither a method nor a status code")
        comment = None if status[2] is None else _decode_text(status[2], "comment")
        return tid, None, int(status[1]), comment

    def _parse_message(self) -> Generator[None, None, None]:
        self._current_tid = None
        try:
            start = yield from self._read_line(self.max_start_line, "start line")
        except RemoteProtocolError as err:
            partial = _START_TID_RE.match(self._buf)
            if partial is not None:
                err.transaction_id = partial[1].decode("ascii")
            raise
        tid, method, status, comment = self._parse_start_line(start)
        end_line = _END_LINE_PREFIX + tid.encode("ascii")

        fields = _HeadFields()
        continuation: Continuation | None = None
        block = self._header_block(end_line)
        if block is not None:
            # Fast path: the whole header section is already buffered.
            lines, continuation = block
            for line in lines:
                fields.add(line, self)
        else:
            while True:
                line = yield from self._read_line(self.max_header_line, "header line")
                fields.header_bytes += len(line) + 2
                if fields.header_bytes > self.max_header_bytes:
                    raise RemoteProtocolError(f"header section over {self.max_header_bytes} bytes")
                if not line:
                    break  # blank line: a body follows
                if line.startswith(_END_LINE_PREFIX):
                    # No body: the end-line follows the last header directly.
                    continuation = _end_flag(line, end_line)
                    break
                fields.add(line, self)
        to_path, from_path, headers = fields.to_path, fields.from_path, fields.headers
        if to_path is None or from_path is None:
            raise RemoteProtocolError("missing To-Path or From-Path")

        has_body = continuation is None
        if method is None:
            if has_body:
                raise RemoteProtocolError("response with a body")
            self._events.append(
                ResponseHead(tid, status, comment, to_path, from_path, tuple(headers))
            )
        else:
            self._events.append(
                RequestHead(tid, method, to_path, from_path, tuple(headers), has_body)
            )
        if continuation is None:
            continuation = yield from self._read_body(tid)
        self._events.append(EndOfMessage(tid, continuation))
        self._current_tid = None
