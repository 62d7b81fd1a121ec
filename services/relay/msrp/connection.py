"""One MSRP connection: the sans-IO parser on the way in, a frame scheduler on the way out.

Outgoing traffic is a queue of frames. The active frame's bytes are written as they arrive
(a forwarded chunk streams through without being held whole); the others wait their turn. A
long chunk is interrupted with ``+`` once it has sent ``interrupt_bytes`` while others wait,
and its rest is queued as a new chunk (RFC 4975 §7.1.1), so one transfer cannot starve the
other sessions sharing the connection. When the transport's write buffer is full, frames
buffer up to ``buffer_limit`` and then pause reading on the connections feeding them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, cast

from shared.msrp import (
    ByteRange,
    Continuation,
    MsrpParser,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    new_transaction_id,
    serialize_end_line,
    serialize_head,
)

if TYPE_CHECKING:
    from services.relay.msrp.relay import MsrpRelay

log = logging.getLogger(__name__)


@dataclass(eq=False, slots=True)
class OutFrame:
    """A message on its way out of one connection.

    ``head`` is written first; body bytes gathered in ``buffer`` follow as the sender's bytes
    arrive; ``end`` (set when the sender's end-line arrived) closes it.
    """

    head: RequestHead | ResponseHead
    buffer: bytearray = field(default_factory=bytearray)
    end: Continuation | None = None
    #: Connection whose reading is paused while this frame's buffer is over the limit.
    source: MsrpConnection | None = None
    #: The relay waits for a response to this frame: it is told when the frame is written
    #: and when the scheduler splits it (interrupt + resume). No callback objects, so a
    #: frame and its transaction never form a reference cycle for the GC to chase.
    tracked: bool = False
    started: bool = False
    body_written: int = 0
    aborted: bool = False

    @property
    def transaction_id(self) -> str:
        return self.head.transaction_id

    @property
    def has_body(self) -> bool:
        return isinstance(self.head, RequestHead) and self.head.has_body

    def feed(self, data: bytes) -> None:
        self.buffer += data


class MsrpConnection(asyncio.Protocol):
    def __init__(
        self,
        relay: MsrpRelay,
        *,
        secure: bool,
        outbound_key: tuple[str, str, int] | None = None,
    ) -> None:
        self.relay = relay
        self.secure = secure
        self.outbound_key = outbound_key
        self.transport: asyncio.Transport | None = None
        self.parser = MsrpParser(whole_messages=True)
        self.peer = "?"
        #: The address that opened this connection to us, counted against its connection
        #: limit; None for the relay's own outgoing connections.
        self.source: str | None = None
        self.local: tuple[str, int] = ("", 0)
        self.queue: deque[OutFrame] = deque()
        self.active: OutFrame | None = None
        self.writing_paused = False
        self.reading_paused = False
        self.paused_by: set[OutFrame] = set()
        self.closed = False
        self.last_activity = 0.0
        self.auth_failures = 0
        self.bytes_in = 0  # for statistics (a session's traffic is its connection's)
        self.bytes_out = 0
        self.loop = asyncio.get_running_loop()
        self.connected = self.loop.create_future()
        # Settings read per frame, looked up once (settings are frozen).
        self.buffer_limit = relay.settings.msrp_buffer_limit
        self.interrupt_bytes = relay.settings.msrp_interrupt_bytes

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement the interface without subclassing asyncio.Transport.
        self.transport = cast(asyncio.Transport, transport)
        limit = self.relay.settings.msrp_buffer_limit
        self.transport.set_write_buffer_limits(high=limit // 4, low=limit // 16)
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.peer = _format_address(peer)
        if isinstance(sock, tuple):
            self.local = (str(sock[0]), int(sock[1]))
        self.last_activity = asyncio.get_running_loop().time()
        if not self.connected.done():
            self.connected.set_result(None)
        if self.outbound_key is None and isinstance(peer, tuple):
            self.source = str(peer[0])
        if not self.relay.connection_opened(self):
            self.transport.abort()
            return
        self.pump()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.loop.time()
        self.bytes_in += len(data)
        parser = self.parser
        parser.receive_data(data)
        relay = self.relay
        relay.batching = True  # pumps wait until every event of this read is handled
        try:
            next_event, handle_event = parser.next_event, relay.handle_event
            while (event := next_event()) is not None:
                handle_event(self, event)
                if self.closed:
                    return
        except RemoteProtocolError as exc:
            relay.protocol_error(self, exc)
        finally:
            relay.flush()

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if not self.connected.done():
            self.connected.set_exception(exc or ConnectionError("connection closed"))
        for frame in self.paused_by:
            frame.source = None
        self.relay.connection_closed(self)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        self.pump()

    # -- flow control -----------------------------------------------------------------------

    def pause_for(self, frame: OutFrame) -> None:
        """Stop reading until ``frame`` (fed by this connection) drains."""
        self.paused_by.add(frame)
        if not self.reading_paused and self.transport is not None and not self.closed:
            self.reading_paused = True
            self.transport.pause_reading()

    def resume_for(self, frame: OutFrame) -> None:
        self.paused_by.discard(frame)
        if self.reading_paused and not self.paused_by and self.transport is not None:
            self.reading_paused = False
            if not self.closed:
                self.transport.resume_reading()

    # -- sending ----------------------------------------------------------------------------

    def send_frame(self, frame: OutFrame) -> None:
        """Queue a frame (it may still be growing); it goes out after those before it."""
        if self.closed:
            frame.aborted = True
            return
        self.queue.append(frame)
        self.relay.schedule(self)

    def send_bytes(self, head: RequestHead | ResponseHead) -> None:
        """Queue a complete body-less message (a response, a REPORT)."""
        self.send_frame(OutFrame(head, end="$"))

    def frame_fed(self, frame: OutFrame) -> None:
        """The sender added bytes to (or ended) ``frame``: write what can be written."""
        if frame is self.active:
            self.relay.schedule(self)
        if frame.source is not None and len(frame.buffer) > self.buffer_limit and frame.end is None:
            frame.source.pause_for(frame)

    def pump(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        out: list[bytes] = []  # one write per pump, not one per piece
        try:
            self._fill(out)
        finally:
            if out:
                data = b"".join(out)
                self.bytes_out += len(data)
                transport.write(data)

    def _fill(self, out: list[bytes]) -> None:
        relay = self.relay
        queue = self.queue
        while not self.writing_paused:
            frame = self.active
            if frame is None:
                if not queue:
                    return
                frame = self.active = queue.popleft()
            head = frame.head
            if not frame.started:
                out.append(serialize_head(head, check=False))  # parsed or ours
                frame.started = True
            source = frame.source
            buffer = frame.buffer
            if buffer:
                data = bytes(buffer)
                buffer.clear()
                out.append(data)
                frame.body_written += len(data)
                relay.stats.bytes_relayed += len(data)
                if source is not None and source.paused_by:
                    source.resume_for(frame)
            if frame.end is not None:
                # The transaction-id is a parsed or generated ident: no need to re-check it.
                if isinstance(head, RequestHead) and head.has_body:
                    out.append(f"\r\n-------{head.transaction_id}{frame.end}\r\n".encode())
                else:
                    out.append(f"-------{head.transaction_id}{frame.end}\r\n".encode())
                self.active = None
                if source is not None and source.paused_by:
                    source.resume_for(frame)
                if frame.tracked:
                    relay.frame_sent(self, frame)
                relay.progress()
                continue
            if queue and frame.body_written >= self.interrupt_bytes:
                self._interrupt(frame, out)
                continue
            return  # the active frame waits for more bytes from its sender

    def _interrupt(self, frame: OutFrame, out: list[bytes]) -> None:
        """End ``frame`` with ``+`` and queue the rest of its chunk as a new transaction."""
        assert self.transport is not None and isinstance(frame.head, RequestHead)
        head = frame.head
        declared = head.byte_range or ByteRange.default()
        rest_head = replace(
            head,
            transaction_id=new_transaction_id(),
            headers=_with_header(
                head.headers,
                "Byte-Range",
                str(ByteRange(declared.start + frame.body_written, None, declared.total)),
            ),
        )
        rest = OutFrame(rest_head, source=frame.source, tracked=frame.tracked)
        frame.end = "+"
        out.append(serialize_end_line(frame.transaction_id, "+", after_body=True))
        self.active = None
        if frame.source is not None:
            frame.source.resume_for(frame)
        if frame.tracked:
            self.relay.frame_split(self, frame, rest)
            self.relay.frame_sent(self, frame)
        self.queue.append(rest)

    def abort_frame(self, frame: OutFrame) -> None:
        """The sender went away: end the frame with ``#`` (RFC 4975 §7.1) or drop it unsent."""
        frame.aborted = True
        if frame is self.active and frame.started:
            frame.end = "#"
            self.pump()
        elif frame in self.queue:
            self.queue.remove(frame)

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.abort()

    @property
    def idle(self) -> bool:
        return self.active is None and not self.queue


def _with_header(
    headers: tuple[tuple[str, str], ...], name: str, value: str
) -> tuple[tuple[str, str], ...]:
    lowered = name.lower()
    out = [(k, v) for k, v in headers if k.lower() != lowered]
    # Byte-Range goes before the MIME headers, which must come last (RFC 4975 §7.1).
    position = next(
        (i for i, (k, _) in enumerate(out) if k.lower().startswith("content-")), len(out)
    )
    out.insert(position, (name, value))
    return tuple(out)


def _format_address(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host = str(address[0])
        return f"[{host}]:{address[1]}" if ":" in host else f"{host}:{address[1]}"
    return str(address)
