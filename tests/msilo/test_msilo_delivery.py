"""Delivery on registration: in order, once, deleted only after the client's 2xx, retried
after a failure; expired messages are never delivered and are purged."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import pytest

from services.msilo.worker import MsiloWorker
from shared.db.offline import GENERATED_HEADER, OfflineState, count_messages, list_messages
from shared.db.outbound import NOT_SENT_REASON
from tests.msilo.conftest import StartMsilo
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"
PREFIX = re.compile(rb"^\[Offline message - \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}\] ")
CPIM = b"From: <sip:alice@example.test>\r\n\r\nContent-Type: text/plain\r\n\r\nhi"
DATE = re.compile(r"^\w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT$")


async def store(alice: SipUA, body: bytes, content_type: str = "text/plain;charset=UTF-8") -> None:
    response = await alice.message("sip:bob@example.test", body, content_type)
    assert response.status == 202, response


async def msilo_rows_sent(sip: SipServer) -> int:
    """msilo's deliveries to bob the relay sent (not those withdrawn unsent behind a failure)."""
    count = await sip.pool.fetchval(
        """SELECT count(*) FROM outbound_messages
           WHERE source = 'msilo' AND to_aor = $1 AND last_reason IS DISTINCT FROM $2""",
        BOB,
        NOT_SENT_REASON,
    )
    return int(count)


async def stored_count_is(sip: SipServer, n: int) -> None:
    async def check() -> bool:
        return await count_messages(sip.pool, BOB) == n

    await eventually(check, f"{n} stored message(s) left")


async def test_stored_messages_arrive_once_in_order_and_are_deleted_after_the_200(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    for n in range(1, 4):
        await store(alice, f"offline {n}".encode())
    stored = await list_messages(sip.pool, BOB)
    # Over UDP one at a time (TCP pipelines a chain: tests/msilo/test_msilo_pipeline.py).
    bob = await sip.ua("bob", "udp")
    assert (await bob.register()).status == 200

    for n, row in enumerate(stored, start=1):
        received = await bob.next_request()
        assert received.method == "MESSAGE"
        assert PREFIX.match(received.body), received.body
        assert PREFIX.sub(b"", received.body) == f"offline {n}".encode()
        assert (received.get("From") or "").startswith("<sip:alice@example.test>;tag=")
        assert received.get("To") == "<sip:bob@example.test>"
        assert received.get("Content-Type") == "text/plain;charset=UTF-8"
        assert DATE.match(received.get("Date") or ""), received.get("Date")
        assert received.get(GENERATED_HEADER) == "offline-delivery"
        # Not yet answered: still stored, and the next one waits for this answer.
        current = await list_messages(sip.pool, BOB)
        assert current[0].id == row.id and current[0].state is OfflineState.SENDING
        assert bob.requests.empty()
        bob.answer(received, 200)
        await stored_count_is(sip, 3 - n)

    # A new registration delivers nothing again.
    assert (await bob.register()).status == 200

    async def handled() -> bool:
        return msilo.stats.registrations >= 2

    await eventually(handled, "second registration handled")
    assert await msilo_rows_sent(sip) == 3
    assert bob.requests.empty()


async def test_the_date_header_is_the_time_stored(sip: SipServer, msilo: MsiloWorker) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"when?")
    (row,) = await list_messages(sip.pool, BOB)
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    received = await bob.next_request()
    stamp = datetime.strptime(received.get("Date") or "", "%a, %d %b %Y %H:%M:%S GMT")
    assert stamp.replace(tzinfo=UTC) == row.received_at.replace(microsecond=0)
    assert received.body == (
        f"[Offline message - {row.received_at.strftime('%a %b %e %H:%M:%S %Y')}] when?".encode()
    )
    bob.answer(received, 200)
    await stored_count_is(sip, 0)


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("message/cpim", CPIM),
        ("application/octet-stream", bytes(range(256))),
        ("text/plain;charset=UTF-16", "hallo".encode("utf-16")),
    ],
)
async def test_other_bodies_are_delivered_byte_exact(
    sip: SipServer, msilo: MsiloWorker, content_type: str, body: bytes
) -> None:
    alice = await sip.ua("alice", "tcp")
    await store(alice, body, content_type)
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    received = await bob.next_request()
    assert received.body == body
    assert received.get("Content-Type") == content_type
    bob.answer(received, 200)
    await stored_count_is(sip, 0)


@pytest.mark.parametrize("msilo_overrides", [{"msilo_add_date": False}])
async def test_no_prefix_when_add_date_is_off(sip: SipServer, msilo: MsiloWorker) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"plain")
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    received = await bob.next_request()
    assert received.body == b"plain" and received.get("Date") is not None
    bob.answer(received, 200)
    await stored_count_is(sip, 0)


async def test_a_message_the_client_refuses_stays_stored_and_comes_on_the_next_registration(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    for n in range(1, 4):
        await store(alice, f"m{n}".encode())
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    first = await bob.next_request()
    assert first.body.endswith(b"m1")
    bob.answer(first, 200)
    second = await bob.next_request()
    assert second.body.endswith(b"m2")
    bob.answer(second, 480)

    async def kept() -> bool:
        rows = await list_messages(sip.pool, BOB)
        return len(rows) == 2 and rows[0].state is OfflineState.STORED

    await eventually(kept, "m2 back in the store")
    m2, m3 = await list_messages(sip.pool, BOB)
    assert m2.body == b"m2" and m2.last_status == 480 and m2.attempts == 1
    assert m3.body == b"m3" and m3.attempts == 0  # order: m3 waits behind m2
    assert m2.retry_at is not None
    assert bob.requests.empty()

    assert (await bob.register()).status == 200
    again = await bob.next_request()
    assert again.body.endswith(b"m2")
    bob.answer(again, 200)
    third = await bob.next_request()
    assert third.body.endswith(b"m3")
    bob.answer(third, 200)
    await stored_count_is(sip, 0)
    assert await msilo_rows_sent(sip) == 4


async def test_registration_while_msilo_was_down_is_caught_up_by_its_sweep(
    sip: SipServer, start_msilo: StartMsilo
) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"a")
    await store(alice, b"b")
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200  # nobody LISTENs: the NOTIFY is lost
    await start_msilo()
    for expected in (b"a", b"b"):
        received = await bob.next_request()
        assert received.body.endswith(expected)
        bob.answer(received, 200)
    await stored_count_is(sip, 0)


async def test_two_msilo_workers_deliver_every_message_exactly_once_in_order(
    sip: SipServer, start_msilo: StartMsilo
) -> None:
    first = await start_msilo()
    second = await start_msilo()
    alice = await sip.ua("alice", "tcp")
    bodies = [f"message {n:02d}".encode() for n in range(25)]
    for body in bodies:
        await store(alice, body)
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    received = []
    for _ in bodies:
        request = await bob.next_request()
        received.append(PREFIX.sub(b"", request.body))
        bob.answer(request, 200)
    assert received == bodies
    await stored_count_is(sip, 0)
    assert await msilo_rows_sent(sip) == len(bodies)
    assert first.stats.queued + second.stats.queued == len(bodies)
    assert bob.requests.empty()


async def test_expired_messages_are_never_delivered_and_are_purged(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"too old")
    await store(alice, b"fresh")
    old, _ = await list_messages(sip.pool, BOB)
    await sip.pool.execute(
        "UPDATE offline_messages SET expires_at = now() - interval '1 second' WHERE id = $1",
        old.id,
    )
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    received = await bob.next_request()
    assert received.body.endswith(b"fresh")
    bob.answer(received, 200)

    async def only_expired_left() -> bool:
        return [m.id for m in await list_messages(sip.pool, BOB)] == [old.id]

    await eventually(only_expired_left, "fresh delivered")
    assert await msilo.purge() == 1
    assert await count_messages(sip.pool, BOB) == 0
    assert msilo.stats.expired == 1
