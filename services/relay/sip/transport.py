"""SIP transports: UDP, TCP and TLS sockets feeding the sans-IO parser (RFC 3261 §18).

Every message arrives with the :class:`Flow` it came on. On the way in, the top Via of a
request gets ``received`` and ``rport`` (RFC 3261 §18.2.1, RFC 3581 §4), so responses and
the registrar see where the request really came from. Unparsable requests are answered
here (400 or the parser's status) when enough of them could be read; anything else is
dropped. On a stream a parse error loses the framing, so the connection is closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import secrets
import socket
import ssl
from collections.abc import Callable
from typing import Final, cast

from services.relay.sip.flood import RateLimiter
from services.relay.sniff import ProtocolSniffer
from services.relay.sources import SourceLimit
from shared.record import Record
from shared.sip.errors import LocalProtocolError, RemoteProtocolError
from shared.sip.headers import Via, make_response, parse_via, stamp_rport
from shared.sip.message import SipRequest, SipResponse, split_comma_list
from shared.sip.parser import (
    DEFAULT_MAX_DATAGRAM_SIZE,
    DEFAULT_MAX_HEAD_SIZE,
    KeepAlivePing,
    SipStreamParser,
    parse_datagram,
)

log = logging.getLogger(__name__)

DEFAULT_SIP_PORT = 5060
DEFAULT_SIPS_PORT = 5061
WRITE_BUFFER_LIMIT = 1 << 20  # bytes queued on a connection before it counts as stuck


class Flow(Record):
    """Where a message came from or goes to; TCP/TLS flows name their connection."""

    _fields = ("transport", "host", "port", "connection_id")

    def __init__(
        self, transport: str, host: str, port: int, connection_id: str | None = None
    ) -> None:
        self.transport: Final = transport  # "udp", "tcp" or "tls"
        self.host: Final = host
        self.port: Final = port
        self.connection_id: Final = connection_id

    def _key(self) -> tuple[object, ...]:
        return (self.transport, self.host, self.port, self.connection_id)

    @property
    def reliable(self) -> bool:
        return self.transport != "udp"

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.transport}:{host}:{self.port}"


MessageHandler = Callable[[SipRequest | SipResponse, Flow], None]
ClosedHandler = Callable[[Flow], None]


def _bare_host(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def same_host(a: str, b: str) -> bool:
    a, b = _bare_host(a), _bare_host(b)
    try:
        return ipaddress.ip_address(a) == ipaddress.ip_address(b)
    except ValueError:
        return a.lower() == b.lower()


#: Receive buffer asked for on the UDP socket (the kernel caps it at net.core.rmem_max): a
#: room's fan-out brings back a burst of 200 OKs at once, and the default (~208 KiB) drops
#: some under load, each costing its sender a retransmission 500 ms later.
UDP_RECEIVE_BUFFER = 4 * 1024 * 1024


def _enlarge_receive_buffer(sock: socket.socket | None) -> None:
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, UDP_RECEIVE_BUFFER)
    except OSError as exc:  # not fatal: the default buffer works, it only drops sooner
        log.warning("could not enlarge the SIP UDP receive buffer: %s", exc)


def stamp_via(request: SipRequest, flow: Flow) -> None:
    """Add ``received``/``rport`` to the top Via (§18.2.1, RFC 3581 §4); ValueError if bad."""
    index = request.headers.index("Via")
    if index is not None:  # the usual first Via line: one plain value asking for rport
        value = request.headers.first("Via") or ""
        if "," not in value and value.endswith(";rport"):
            stamped = stamp_rport(value, flow.host, flow.port)
            if stamped is not None:
                request.headers.replace_at(index, stamped)
                return
    for index, (name, value) in enumerate(request.headers):
        if name != "Via":
            continue
        if "," not in value and value.endswith(";rport"):
            stamped = stamp_rport(value, flow.host, flow.port)
            if stamped is not None:
                request.headers.replace_at(index, stamped)
                return
        parts = split_comma_list(value) if "," in value else [value.strip()]
        if not parts or not parts[0]:
            continue
        via = parse_via(parts[0])
        changed = via
        if via.has_rport:
            changed = changed.with_param("rport", str(flow.port))
        if via.has_rport or not same_host(via.host, flow.host):
            changed = changed.with_param("received", flow.host)
        if changed is not via:
            parts[0] = str(changed)
            request.headers.replace_at(index, ", ".join(parts))
        return
    raise ValueError("no Via")


def response_flow(request: SipRequest, flow: Flow) -> Flow:
    """Where responses to ``request`` go (§18.2.2, RFC 3581 §4)."""
    if flow.reliable:
        return flow
    try:
        via = parse_via(request.get("Via") or "")
    except ValueError:
        return flow
    return Flow("udp", *_sent_to(via, DEFAULT_SIP_PORT))


def _sent_to(via: Via, default_port: int) -> tuple[str, int]:
    """The address a response goes to by ``via`` (§18.2.2, RFC 3581): ``received`` and
    ``rport`` before the sent-by host and port."""
    return _bare_host(via.received or via.host), via.rport or via.port or default_port


class UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, layer: TransportLayer) -> None:
        self.layer = layer
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        flow = Flow("udp", str(addr[0]), int(str(addr[1])))
        if not data.startswith(b"SIP/") and self.layer.flood_blocked(flow.host):
            return  # a request from a source over its rate limit: not even parsed
        try:
            message = parse_datagram(
                data, max_size=self.layer.max_message_size, lazy_responses=True
            )
        except RemoteProtocolError as exc:
            self.layer.malformed(exc, flow)
            return
        if message is not None:
            self.layer.deliver(message, flow)

    def send(self, data: bytes, host: str, port: int) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        try:
            self.transport.sendto(data, (host, port))
        except (OSError, ValueError) as exc:
            log.info("cannot send to udp:%s:%d: %s", host, port, exc)
            return False
        return True

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable and friends: the transaction timers cover them.
        log.debug("udp error: %s", exc)


class StreamConnection(asyncio.Protocol):
    """One TCP or TLS connection, accepted by a listener."""

    def __init__(self, layer: TransportLayer, transport_name: str) -> None:
        self.layer = layer
        self.transport_name = transport_name
        self.connection_id = secrets.token_hex(8)
        self.parser = SipStreamParser(
            max_head_size=min(DEFAULT_MAX_HEAD_SIZE, layer.max_message_size),
            max_body_size=layer.max_message_size,
            lazy_responses=True,
        )
        self.transport: asyncio.Transport | None = None
        self.flow = Flow(transport_name, "", 0, self.connection_id)
        self.last_activity = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_LIMIT)
        peer = transport.get_extra_info("peername") or ("", 0)
        self.flow = Flow(self.transport_name, str(peer[0]), int(peer[1]), self.connection_id)
        self.last_activity = self.layer.loop.time()
        if not self.layer.opened(self):
            self.transport.abort()

    def data_received(self, data: bytes) -> None:
        self.last_activity = self.layer.loop.time()
        try:
            for event in self.parser.receive_data(data):
                if isinstance(event, KeepAlivePing):
                    self.write(b"\r\n")  # RFC 5626 §3.5.1: pong
                else:
                    self.layer.deliver(event, self.flow)
        except RemoteProtocolError as exc:
            self.layer.malformed(exc, self.flow)
            self.close()

    def write(self, data: bytes) -> bool:
        if self.transport is None or self.transport.is_closing():
            return False
        self.transport.write(data)
        return True

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.layer.closed(self)


class TransportLayer:
    """The listening sockets and open connections; ``send`` picks the right one for a flow."""

    def __init__(
        self,
        *,
        on_message: MessageHandler,
        on_closed: ClosedHandler,
        idle_timeout: float,
        rate_limiter: RateLimiter | None = None,
        max_connections: int = 0,
        max_connections_per_source: int = 0,
        max_message_size: int = DEFAULT_MAX_DATAGRAM_SIZE,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.on_message = on_message
        self.on_closed = on_closed
        self.idle_timeout = idle_timeout
        self.rate_limiter = rate_limiter or RateLimiter(0, 1.0)
        self.max_connections = max_connections  # TCP + TLS; 0: no limit
        self.max_message_size = max_message_size
        self._refusing_connections = False
        self.sources = SourceLimit(
            max_connections_per_source, "SIP", "IMSTACK_SIP_MAX_CONNECTIONS_PER_SOURCE"
        )
        self.udp: UdpProtocol | None = None
        #: The IPv6 socket when SIP listens on an IPv4 and an IPv6 address (``udp``: IPv4).
        self.udp6: UdpProtocol | None = None
        self.servers: list[asyncio.Server] = []
        self.connections: dict[str, StreamConnection] = {}
        self.bound: list[tuple[str, str, int]] = []  # (transport, host, port) listening
        #: Set when MSRP shares the SIP ports: builds the MSRP protocol (secure=TLS) for a
        #: connection whose first bytes are an MSRP start line.
        self.msrp_factory: Callable[[bool], asyncio.Protocol] | None = None

    async def start(
        self, hosts: list[str], port: int, tls_port: int, tls_context: ssl.SSLContext | None
    ) -> None:
        """Listen on ``hosts``: one address, or an IPv4 and an IPv6 one (Settings.sip_hosts)."""
        for host in hosts:
            udp_transport, udp = await self.loop.create_datagram_endpoint(
                lambda: UdpProtocol(self), local_addr=(host, port)
            )
            _enlarge_receive_buffer(udp_transport.get_extra_info("socket"))
            if len(hosts) > 1 and ":" in host:
                self.udp6 = udp
            else:
                self.udp = udp
            self.bound.append(("udp", host, port))
        for host in hosts:
            factory = self._stream_factory("tcp")
            self.servers.append(await self.loop.create_server(factory, host, port))
            self.bound.append(("tcp", host, port))
            if tls_context is not None:
                factory = self._stream_factory("tls")
                self.servers.append(
                    await self.loop.create_server(factory, host, tls_port, ssl=tls_context)
                )
                self.bound.append(("tls", host, tls_port))
        log.info("SIP listening on %s", ", ".join(f"{t}:{h}:{p}" for t, h, p in self.bound))

    def _stream_factory(self, name: str) -> Callable[[], asyncio.Protocol]:
        msrp = self.msrp_factory
        if msrp is None:
            return lambda: StreamConnection(self, name)
        secure = name == "tls"
        return lambda: ProtocolSniffer(lambda: StreamConnection(self, name), lambda: msrp(secure))

    def stop_accepting(self) -> None:
        for server in self.servers:
            server.close()

    def close(self) -> None:
        self.stop_accepting()
        for conn in list(self.connections.values()):
            conn.close()
        for udp in (self.udp, self.udp6):
            if udp is not None and udp.transport is not None:
                udp.transport.close()

    # -- callbacks from the protocols ---------------------------------------------------

    def opened(self, conn: StreamConnection) -> bool:
        """Register a new connection; False (close it) when there are too many already."""
        if 0 < self.max_connections <= len(self.connections):
            if not self._refusing_connections:  # log when the limit is reached, not per refusal
                self._refusing_connections = True
                log.warning(
                    "SIP: %d TCP/TLS connections open; refusing new ones", len(self.connections)
                )
            return False
        self._refusing_connections = False
        if not self.sources.admit(conn.flow.host):
            return False
        self.connections[conn.connection_id] = conn
        return True

    def closed(self, conn: StreamConnection) -> None:
        if self.connections.pop(conn.connection_id, None) is not None:
            self.sources.release(conn.flow.host)
            self.on_closed(conn.flow)

    def flood_blocked(self, host: str) -> bool:
        return self.rate_limiter.enabled and self.rate_limiter.blocked(host, self.loop.time())

    def deliver(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        if isinstance(message, SipRequest):
            if self.rate_limiter.enabled and not self.rate_limiter.allow(
                flow.host, self.loop.time()
            ):
                self._refuse_flood(message, flow)
                return
            try:
                stamp_via(message, flow)
            except ValueError as exc:
                self.malformed(RemoteProtocolError(f"bad Via: {exc}", partial=message), flow)
                return
        self.on_message(message, flow)

    def _refuse_flood(self, request: SipRequest, flow: Flow) -> None:
        # Over UDP the source address may be forged: answering would reflect the flood.
        if not flow.reliable or request.method == "ACK":
            return
        retry = self.rate_limiter.retry_after(flow.host, self.loop.time())
        try:
            response = make_response(request, 503, headers=[("Retry-After", str(retry))])
        except LocalProtocolError:
            return
        self.send(flow, response.to_bytes())

    def malformed(self, exc: RemoteProtocolError, flow: Flow) -> None:
        """Answer what can be answered (§8.2.6, §16.3 step 1); log once; never raise."""
        if self.rate_limiter.enabled and not self.rate_limiter.allow(flow.host, self.loop.time()):
            return  # junk counts against the sender's rate like any request
        log.info("malformed SIP from %s: %s", flow, exc)
        request = exc.partial
        if not isinstance(request, SipRequest) or request.method == "ACK":
            return
        target = flow
        if not flow.reliable:
            try:
                stamp_via(request, flow)
                target = response_flow(request, flow)
            except ValueError:
                target = flow
        try:
            data = make_response(request, exc.status_hint).to_bytes()
        except LocalProtocolError:
            return
        self.send(target, data)

    # -- sending ------------------------------------------------------------------------

    def send(self, flow: Flow, data: bytes) -> bool:
        """Send ``data`` on ``flow``; False when that is impossible (connection gone)."""
        if flow.transport == "udp":
            udp = self.udp6 if self.udp6 is not None and ":" in flow.host else self.udp
            return udp is not None and udp.send(data, flow.host, flow.port)
        if flow.connection_id is None:
            return False
        conn = self.connections.get(flow.connection_id)
        return conn is not None and conn.write(data)

    def has_connection(self, connection_id: str) -> bool:
        return connection_id in self.connections

    def connection_from(self, transport: str, host: str, port: int) -> Flow | None:
        """The flow of a TCP/TLS connection open from ``host``:``port`` (we open none)."""
        for conn in self.connections.values():
            flow = conn.flow
            if flow.transport == transport and flow.port == port and same_host(flow.host, host):
                return flow
        return None

    def upstream_flow(self, via: str) -> Flow | None:
        """Where a response goes that we forward by its next ``via`` alone (§18.2.2,
        RFC 3581): ``received``/``rport`` first; TCP/TLS only on a connection still open."""
        try:
            parsed = parse_via(via)
        except ValueError:
            return None
        transport = parsed.transport.lower()
        default = DEFAULT_SIPS_PORT if transport == "tls" else DEFAULT_SIP_PORT
        host, port = _sent_to(parsed, default)
        if transport == "udp":
            return Flow("udp", host, port)
        if transport in ("tcp", "tls"):
            return self.connection_from(transport, host, port)
        return None

    def sweep_idle(self) -> None:
        now = self.loop.time()
        for conn in list(self.connections.values()):
            if now - conn.last_activity > self.idle_timeout:
                log.info("closing idle SIP connection %s", conn.flow)
                conn.close()
