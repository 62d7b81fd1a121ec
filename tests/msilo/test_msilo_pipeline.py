"""A drain over TCP is pipelined: up to PIPELINE deliveries in flight on the connection, in
order; a failure in the middle keeps exactly the undelivered messages stored, in order."""

from __future__ import annotations

from services.msilo.worker import WINDOW, MsiloWorker
from services.relay.sip.delivery import PIPELINE
from shared.db.offline import OfflineState, count_messages, list_messages
from tests.msilo.test_msilo_window import BOB, PREFIX, store, stored_count_is, take
from tests.relay_sip.conftest import SipServer, eventually


async def test_a_pipelined_drain_of_several_windows_arrives_once_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    count = WINDOW * 2 + 5
    for n in range(count):
        await store(sip.pool, f"m{n:03d}".encode())
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    # PIPELINE deliveries come without bob answering any (one at a time before).
    first = [await bob.next_request() for _ in range(PIPELINE)]
    assert [PREFIX.sub(b"", r.body) for r in first] == [
        f"m{n:03d}".encode() for n in range(PIPELINE)
    ]
    assert bob.requests.empty()
    assert await count_messages(sip.pool, BOB) == count  # none deleted before its 200
    for request in first:
        bob.answer(request, 200)
    rest = [await take(bob) for _ in range(count - PIPELINE)]
    assert rest == [f"m{n:03d}".encode() for n in range(PIPELINE, count)]
    await stored_count_is(sip.pool, 0)
    assert bob.requests.empty()  # nothing twice
    assert msilo.stats.delivered == count


async def test_a_failure_mid_pipeline_keeps_exactly_the_undelivered_stored_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    count = PIPELINE + 24
    for n in range(count):
        await store(sip.pool, f"m{n:03d}".encode())
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    window = [await bob.next_request() for _ in range(PIPELINE)]
    refused = {b"m004", b"m010", b"m011"}
    delivered: list[bytes] = []
    # m004 is refused while m005.. are in flight: those bob accepts are delivered, the
    # refused ones stay stored; the relay sends nothing new after it saw the failure.
    for request in window:
        body = PREFIX.sub(b"", request.body)
        if body in refused:
            bob.answer(request, 486)
        else:
            bob.answer(request, 200)
            delivered.append(body)

    async def settled() -> bool:
        while not bob.requests.empty():  # sent before the relay saw m004 fail: accepted
            request = bob.requests.get_nowait()
            delivered.append(PREFIX.sub(b"", request.body))
            bob.answer(request, 200)
        rows = await list_messages(sip.pool, BOB)
        return len(rows) + len(delivered) == count and all(
            r.state is OfflineState.STORED for r in rows
        )

    await eventually(settled, "the undelivered ones back in the store")
    sent = len(delivered) + len(refused)
    assert sent >= PIPELINE
    assert delivered == [f"m{n:03d}".encode() for n in range(sent) if n not in (4, 10, 11)]
    rows = await list_messages(sip.pool, BOB)
    kept = [b"m004", b"m010", b"m011", *(f"m{n:03d}".encode() for n in range(sent, count))]
    assert [r.body for r in rows] == kept
    assert rows[0].last_status == 486 and rows[0].retry_at is not None
    assert bob.requests.empty()

    assert (await bob.register()).status == 200  # the next registration: the rest, in order
    again = []
    while len(again) < len(kept):
        request = await bob.next_request()
        again.append(PREFIX.sub(b"", request.body))
        bob.answer(request, 200)
    assert again == kept
    await stored_count_is(sip.pool, 0)
    assert bob.requests.empty()


async def test_over_udp_a_drain_still_waits_for_each_answer(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    for n in range(3):
        await store(sip.pool, f"m{n}".encode())
    bob = await sip.ua("bob", "udp")
    assert (await bob.register()).status == 200
    for n in range(3):
        request = await bob.next_request()
        assert PREFIX.sub(b"", request.body) == f"m{n}".encode()

        async def alone() -> bool:
            rows = await list_messages(sip.pool, BOB)
            return rows[0].state is OfflineState.SENDING

        await eventually(alone, "in flight")
        assert bob.requests.empty()  # the next waits for this answer
        bob.answer(request, 200)
    await stored_count_is(sip.pool, 0)
