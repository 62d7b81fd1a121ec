"""Answered non-INVITE transactions over UDP are retired at once, yet behave as RFC 3261
§17 says until their timers would have ended them: a retransmitted request gets the same
response again for Timer J (32 s) and is a new request after it."""

from __future__ import annotations

import asyncio
import gc
from typing import Any, cast

import pytest

from services.relay.sip.transactions import TIMER_TICK, ServerTxn, TransactionLayer
from services.relay.sip.transport import Flow, TransportLayer
from shared.sip import headers
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


@pytest.mark.interpreted  # a stand-in transport layer, which the compiled build refuses
async def test_answered_transactions_leave_nothing_for_the_garbage_collector() -> None:
    # What an answered transaction leaves for 32 s must be strings, bytes and floats: at
    # thousands of requests a second, anything the collector tracks piles up in its young
    # generation, and each collection of it stops the relay for tens of milliseconds.
    transports = Sent()
    count = 4000

    def answer(txn: ServerTxn) -> None:
        txn.respond(make_response(txn.request, 200, to_tag="b"))

    layer = TransactionLayer(cast(TransportLayer, transports), answer, lambda _r, _f: None)
    requests = [message(f"n{i}") for i in range(count)]  # (made before the count starts)
    gc.collect()
    gc.disable()
    try:
        for request in requests:
            layer.receive(request, ALICE)
        transports.sent.clear()
        assert len(layer.answered) == count
        # The parse memos hold up to 256 recent values each (their own bound, whatever the
        # load): emptied here, so that what is counted is what the transactions left.
        headers._via_memo.clear()
        headers._name_addr_memo.clear()
        kept = len(gc.get_objects(generation=0))  # tracked, made since the collection, alive
    finally:
        gc.enable()
        layer.close()
    assert kept < count // 4, kept


@pytest.mark.interpreted  # a stand-in transport layer, which the compiled build refuses
async def test_a_cancel_from_an_rfc_2543_client_finds_its_invite() -> None:
    # No magic cookie in the branch: the §17.2.3 fallback key, the CANCEL's with INVITE.
    requests: list[ServerTxn] = []
    layer = TransactionLayer(
        cast(TransportLayer, Sent()), requests.append, lambda _request, _flow: None
    )

    def request(method: str, call_id: str = "2543") -> SipRequest:
        data = (
            f"{method} sip:bob@example.test SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=old2543\r\n"
            "Max-Forwards: 70\r\n"
            "From: <sip:alice@example.test>;tag=a\r\n"
            "To: <sip:bob@example.test>\r\n"
            f"Call-ID: {call_id}\r\n"
            f"CSeq: 7 {method}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()
        parsed = parse_datagram(data)
        assert isinstance(parsed, SipRequest)
        return parsed

    try:
        layer.receive(request("INVITE"), ALICE)
        [invite] = requests
        assert layer.find_invite(request("CANCEL")) is invite
        assert layer.find_invite(request("CANCEL", call_id="other")) is None
    finally:
        layer.close()


@pytest.mark.interpreted  # a stand-in transport layer, which the compiled build refuses
async def test_answered_client_transactions_leave_the_timer_heap_small() -> None:
    # Each request we send arms Timer E (T1 = 0.5 s) and is answered within milliseconds;
    # the entries it left behind in the timer heap each came due on their own, one wake-up
    # of the loop per relayed request. The heap is now rebuilt without them, while the
    # timer of a transaction still waiting fires as before.
    transports = Sent()
    bob = Flow("udp", "127.0.0.1", 5080)
    layer = TransactionLayer(cast(TransportLayer, transports), lambda _t: None, lambda _r, _f: None)
    try:
        waiting = layer.send_request(message("waiting"), bob)
        for i in range(2000):
            txn = layer.send_request(message(f"c{i}"), bob)
            layer.receive(make_response(txn.tx.request, 200, to_tag="b"), bob)
            assert txn.final.done()
        assert len(layer._timers) < 200, len(layer._timers)  # 2,001 entries before
        first = [data for flow, data in transports.sent if b"Call-ID: waiting" in data]
        await asyncio.sleep(0.7)  # past Timer E: the waiting request is sent again
        again = [data for flow, data in transports.sent if b"Call-ID: waiting" in data]
        assert len(first) == 1 and len(again) == 2 and again[1] == again[0]
        assert not waiting.final.done()
    finally:
        layer.close()


class CountingLoop:
    """The running loop, counting the timers the layer asks it for."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.timers = 0

    def call_at(self, when: float, callback: Any, *args: Any) -> asyncio.TimerHandle:
        self.timers += 1
        return self.loop.call_at(when, callback, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loop, name)


@pytest.mark.interpreted  # a stand-in transport layer, which the compiled build refuses
async def test_timers_due_close_together_share_one_wake_up() -> None:
    # Forty requests sent a millisecond apart, none answered: their Timer E comes due over
    # about 40 ms, and each is retransmitted, but the loop is woken once per 10 ms tick,
    # not once per request (forty wake-ups, and forty loop timers set and cancelled).
    transports = Sent()
    bob = Flow("udp", "127.0.0.1", 5080)
    layer = TransactionLayer(cast(TransportLayer, transports), lambda _t: None, lambda _r, _f: None)
    loop = CountingLoop(asyncio.get_running_loop())
    layer.loop = cast(asyncio.AbstractEventLoop, loop)
    try:
        started = loop.time()
        for i in range(40):
            layer.send_request(message(f"e{i}"), bob)
            await asyncio.sleep(0.001)
        spread = loop.time() - started
        loop.timers = 0
        await asyncio.sleep(0.5 + spread + 0.05)  # past every Timer E
        sent = [data for _flow, data in transports.sent]
        for i in range(40):
            assert sum(f"Call-ID: e{i}\r\n".encode() in data for data in sent) == 2, i
        ticks = spread / TIMER_TICK
        assert loop.timers <= ticks + 3, (loop.timers, spread)
    finally:
        layer.close()
