"""MSRP listeners: plain TCP and, with a certificate, TLS on the same port.

A TLS client speaks first with a handshake record (first byte 0x16); an MSRP client with
``MSRP``. The listener peeks at that byte before it builds the transport, so one port
serves both (RFC 4976 wants TLS to the client; plain TCP is for relays on a private network
and development).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl

from services.relay.msrp.connection import MsrpConnection
from services.relay.msrp.relay import MsrpRelay

log = logging.getLogger(__name__)

TLS_HANDSHAKE = 0x16
FIRST_BYTE_TIMEOUT = 10.0  # seconds a new connection may stay silent before it is dropped


class MsrpListener:
    def __init__(
        self, relay: MsrpRelay, host: str, port: int, server_ssl: ssl.SSLContext | None
    ) -> None:
        self.relay = relay
        self.host = host
        self.port = port
        self.server_ssl = server_ssl
        self.sockets: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            self.host or None, self.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        seen = set()
        for family, _, _, _, address in infos:
            if (family, address[0]) in seen:
                continue
            seen.add((family, address[0]))
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                sock.close()
                raise OSError(
                    exc.errno, f"MSRP cannot listen on {address}: {exc.strerror}"
                ) from None
            sock.listen(1024)
            sock.setblocking(False)
            self.sockets.append(sock)
            if self.port == 0:
                self.port = sock.getsockname()[1]
        for sock in self.sockets:
            self._accepting.append(asyncio.create_task(self._accept_loop(sock), name="msrp-accept"))
        tls = " and TLS" if self.server_ssl else ""
        log.info(
            "MSRP relay listening on %s (TCP%s)", ", ".join(_where(s) for s in self.sockets), tls
        )

    async def _accept_loop(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listening)
            except OSError as exc:
                log.warning("MSRP accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            if not self.relay.accepting():
                self.relay.stats.connections_refused += 1
                sock.close()
                continue
            task = asyncio.create_task(self._setup(sock), name="msrp-setup")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _setup(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = False
        try:
            if self.server_ssl is not None:
                tls = await _first_byte(loop, sock) == TLS_HANDSHAKE
            await loop.connect_accepted_socket(
                lambda: MsrpConnection(self.relay, secure=tls),
                sock,
                ssl=self.server_ssl if tls else None,
                ssl_handshake_timeout=FIRST_BYTE_TIMEOUT if tls else None,
            )
        except (OSError, TimeoutError, ssl.SSLError, ConnectionError) as exc:
            log.info("MSRP connection dropped during set-up: %s", exc)
            sock.close()

    def close(self) -> None:
        """Stop accepting; established connections stay."""
        for task in self._accepting:
            task.cancel()
        for task in self._tasks:
            task.cancel()
        for sock in self.sockets:
            sock.close()
        self._accepting.clear()


async def _first_byte(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> int | None:
    """Peek at the first byte without consuming it."""
    readable: asyncio.Future[None] = loop.create_future()
    fd = sock.fileno()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        async with asyncio.timeout(FIRST_BYTE_TIMEOUT):
            await readable
    finally:
        loop.remove_reader(fd)
    with contextlib.suppress(BlockingIOError):
        data = sock.recv(1, socket.MSG_PEEK)
        return data[0] if data else None
    return None


def _where(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
