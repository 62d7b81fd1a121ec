"""Delivery windows, new messages during a drain, scheduled messages: still once, in order."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta

import asyncpg

from services.msilo.worker import WINDOW, MsiloWorker
from shared.db.offline import OfflineState, count_messages, list_messages, store_message
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"
PREFIX = re.compile(rb"^\[Offline message - [^\]]*\] ")


async def store(pool: asyncpg.Pool, body: bytes, *, not_before: datetime | None = None) -> int:
    async with pool.acquire() as conn, conn.transaction():
        new_id = await store_message(
            conn,
            recipient=BOB,
            sender_uri="sip:alice@example.test",
            sender_display="Alice",
            call_id=f"call-{body.decode()}",
            content_type="text/plain",
            body=body,
            extra_headers=[],
            lifetime=3600,
            not_before=not_before,
        )
    assert new_id is not None
    return new_id


async def take(bob: SipUA, status: int = 200) -> bytes:
    """The next MESSAGE bob gets, answered ``status``; its body without the prefix."""
    request = await bob.next_request()
    assert request.method == "MESSAGE"
    bob.answer(request, status)
    return PREFIX.sub(b"", request.body)


async def stored_count_is(pool: asyncpg.Pool, n: int) -> None:
    async def check() -> bool:
        return await count_messages(pool, BOB) == n

    await eventually(check, f"{n} stored message(s) left")


async def test_a_drain_longer_than_a_window_arrives_once_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    count = WINDOW * 2 + 5
    for n in range(count):
        await store(sip.pool, f"m{n:03d}".encode())
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    got = [await take(bob) for _ in range(count)]
    assert got == [f"m{n:03d}".encode() for n in range(count)]
    await stored_count_is(sip.pool, 0)
    assert bob.requests.empty()  # nothing twice
    assert msilo.stats.delivered == count


async def test_a_failure_in_the_middle_of_a_window_keeps_the_rest_stored_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    for n in range(10):
        await store(sip.pool, f"m{n}".encode())
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    assert [await take(bob) for _ in range(4)] == [b"m0", b"m1", b"m2", b"m3"]
    assert await take(bob, 486) == b"m4"

    async def settled() -> bool:
        rows = await list_messages(sip.pool, BOB)
        return len(rows) == 6 and all(r.state is OfflineState.STORED for r in rows)

    await eventually(settled, "m4..m9 back in the store")
    rows = await list_messages(sip.pool, BOB)
    assert [r.body for r in rows] == [f"m{n}".encode() for n in range(4, 10)]
    assert rows[0].last_status == 486 and rows[0].retry_at is not None
    assert all(r.attempts == 0 and r.retry_at is None for r in rows[1:])
    assert bob.requests.empty()  # nothing overtook m4

    assert (await bob.register()).status == 200  # the next registration: the rest, in order
    assert [await take(bob) for _ in range(6)] == [f"m{n}".encode() for n in range(4, 10)]
    await stored_count_is(sip.pool, 0)
    assert bob.requests.empty()


async def test_a_message_sent_during_a_drain_arrives_after_the_stored_ones(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    for n in range(3):
        await store(sip.pool, f"stored {n}".encode())
    alice = await sip.ua("alice")
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    first = await bob.next_request()  # the drain has begun; bob has not answered yet
    # A MESSAGE now must not overtake the two still stored: it is stored behind them.
    assert (await alice.message("sip:bob@example.test", b"live")).status == 202
    assert bob.requests.empty()
    bob.answer(first, 200)
    rest = [await take(bob) for _ in range(3)]
    assert [PREFIX.sub(b"", first.body), *rest] == [b"stored 0", b"stored 1", b"stored 2", b"live"]
    await stored_count_is(sip.pool, 0)
    # Drained: the next MESSAGE goes straight to bob, answered by bob himself.
    answered = asyncio.ensure_future(alice.message("sip:bob@example.test", b"direct"))
    direct = await bob.next_request()
    assert direct.body == b"direct"
    bob.answer(direct, 200)
    assert (await answered).status == 200


async def test_a_scheduled_message_is_delivered_at_its_time_not_before(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    due = datetime.now(UTC) + timedelta(seconds=1.5)
    await store(sip.pool, b"reminder", not_before=due)
    later = await store(sip.pool, b"not yet", not_before=due + timedelta(hours=1))
    # A scheduled message does not hold up the others: this one arrives at once.
    alice = await sip.ua("alice")
    answered = asyncio.ensure_future(alice.message("sip:bob@example.test", b"now"))
    now = await bob.next_request()
    assert now.body == b"now"
    bob.answer(now, 200)
    assert (await answered).status == 200
    # The reminder comes by itself at its time (the msilo sweep timer is an hour away).
    assert await take(bob) == b"reminder"
    assert datetime.now(UTC) >= due
    await stored_count_is(sip.pool, 1)
    (left,) = await list_messages(sip.pool, BOB)
    assert left.id == later and left.state is OfflineState.STORED
    assert bob.requests.empty()


async def test_a_scheduled_message_for_an_offline_user_waits_for_the_registration(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    due = datetime.now(UTC) + timedelta(seconds=0.5)
    first = await store(sip.pool, b"first")
    scheduled = await store(sip.pool, b"scheduled", not_before=due)
    await store(sip.pool, b"third")
    future = await store(sip.pool, b"tomorrow", not_before=due + timedelta(days=1))
    await asyncio.sleep(max(0.0, (due - datetime.now(UTC)).total_seconds()) + 0.1)
    (row,) = [r for r in await list_messages(sip.pool, BOB) if r.id == scheduled]
    assert row.state is OfflineState.STORED and row.not_before == due  # kept while offline
    assert first < scheduled
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    assert [await take(bob) for _ in range(3)] == [b"first", b"scheduled", b"third"]
    await stored_count_is(sip.pool, 1)
    (left,) = await list_messages(sip.pool, BOB)
    assert left.id == future
    assert bob.requests.empty()


async def test_a_message_scheduled_in_the_past_reaches_a_registered_user_at_once(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200

    async def registration_handled() -> bool:
        return msilo.stats.registrations >= 1

    await eventually(registration_handled, "registration handled")
    await store(sip.pool, b"overdue", not_before=datetime.now(UTC) - timedelta(minutes=5))
    assert await take(bob) == b"overdue"  # no sweep (an hour away): the store woke msilo
    await stored_count_is(sip.pool, 0)
