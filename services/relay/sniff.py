"""SIP and MSRP on one TCP/TLS port (as Kamailio allows): the first bytes decide.

An MSRP connection starts with ``MSRP `` (RFC 4975 §7.1 start line); anything else on a SIP
port is SIP. The sniffer holds the first bytes until it can tell, then hands the transport
(plain or already TLS-wrapped) and those bytes to the real protocol.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

MSRP_PREFIX = b"MSRP "
SNIFF_TIMEOUT = 10.0  # seconds a connection may stay silent before it is dropped


class ProtocolSniffer(asyncio.Protocol):
    def __init__(
        self,
        sip: Callable[[], asyncio.Protocol],
        msrp: Callable[[], asyncio.Protocol],
    ) -> None:
        self.sip = sip
        self.msrp = msrp
        self.transport: asyncio.BaseTransport | None = None
        self.buffer = b""
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.timer = asyncio.get_running_loop().call_later(SNIFF_TIMEOUT, transport.close)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head = self.buffer[: len(MSRP_PREFIX)]
        if len(head) < len(MSRP_PREFIX) and MSRP_PREFIX.startswith(head):
            return  # could still be MSRP: wait for more
        self.hand_over(self.msrp if head == MSRP_PREFIX else self.sip)

    def hand_over(self, factory: Callable[[], asyncio.Protocol]) -> None:
        assert self.transport is not None
        if self.timer is not None:
            self.timer.cancel()
        protocol = factory()
        self.transport.set_protocol(protocol)
        protocol.connection_made(self.transport)
        data, self.buffer = self.buffer, b""
        protocol.data_received(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
