"""Answered non-INVITE transactions over UDP are retired at once, yet behave as RFC 3261
§17 says until their timers would have ended them: a retransmitted request gets the same
response again for Timer J (32 s) and is a new request after it."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest

from services.relay.sip.transactions import ServerTxn, TransactionLayer
from services.relay.sip.transport import Flow, TransportLayer
from shared.sip.headers import make_response
from shared.sip.message import SipRequest
from shared.sip.parser import parse_datagram

ALICE = Flow("udp", "127.0.0.1", 5070)


def message(branch: str) -> SipRequest:
    data = (
        "MESSAGE sip:bob@example.test SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK{branch};rport\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:alice@example.test>;tag=a\r\n"
        "To: <sip:bob@example.test>\r\n"
        f"Call-ID: {branch}\r\n"
        "CSeq: 1 MESSAGE\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()
    request = parse_datagram(data)
    assert isinstance(request, SipRequest)
    return request


class Sent:
    """The transport layer's ``send``: what went where."""

    def __init__(self) -> None:
        self.sent: list[tuple[Flow, bytes]] = []

    def send(self, flow: Flow, data: bytes) -> bool:
        self.sent.append((flow, data))
        return True


class Clock:
    """The loop as the layer sees it, with a time the test sets."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.now = loop.time()

    def time(self) -> float:
        return self.now

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


@pytest.mark.interpreted
async def test_a_retransmission_gets_the_same_response_until_timer_j_then_is_new() -> None:
    transports = Sent()
    requests: list[ServerTxn] = []
    layer = TransactionLayer(
        cast(TransportLayer, transports), requests.append, lambda _request, _flow: None
    )
    clock = Clock(asyncio.get_running_loop())
    layer.loop = cast(asyncio.AbstractEventLoop, clock)
    try:
        layer.receive(message("one"), ALICE)
        [txn] = requests
        txn.respond(make_response(txn.request, 200, to_tag="b"))
        [(flow, answer)] = transports.sent
        assert flow == ALICE and answer.startswith(b"SIP/2.0 200 OK")
        assert layer.server == {}  # retired: only its key and response are left

        clock.now += 31.0
        layer.receive(message("one"), ALICE)  # within Timer J: absorbed, answered again
        assert len(requests) == 1
        assert transports.sent[-1] == (ALICE, answer)

        clock.now += 2.0  # past Timer J (64 * T1 = 32 s after the answer)
        layer.receive(message("two"), ALICE)  # another answered request sweeps the old
        requests[-1].respond(make_response(requests[-1].request, 200, to_tag="c"))
        layer.receive(message("one"), ALICE)
        assert len(requests) == 3  # "one" again is a new request now
        assert list(layer.answered) == [requests[1].key]
    finally:
        layer.close()
