"""Messages that will not be delivered: the sender is told when one expires, and a message
the recipient's client refuses for good is given up after IMSTACK_MSILO_MAX_ATTEMPTS
refusals so that the messages behind it are delivered (services/msilo/notices.py)."""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime
from typing import Any

import pytest

from services.msilo.notices import excerpt, is_permanent
from services.msilo.service import run as run_msilo
from services.msilo.worker import MsiloWorker
from shared.db.offline import (
    GENERATED_HEADER,
    NOTICE_SOURCE,
    OfflineState,
    Undelivered,
    count_messages,
    list_messages,
    store_message,
)
from shared.db.tokens import Scope
from shared.lifecycle import ServiceContext
from tests.api.api_client import client_for, new_token
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

ALICE = "alice@example.test"
BOB = "bob@example.test"
SYSTEM = "<sip:example.test>;tag="
PREFIX = re.compile(rb"^\[Offline message - [^\]]+\] ")
LONG = b"hello bob, this is a long message that goes on well past the words a notice quotes"
QUOTED = '"hello bob, this is a long message that goes on well past the..."'


async def store(alice: SipUA, body: bytes, content_type: str = "text/plain;charset=UTF-8") -> None:
    response = await alice.message("sip:bob@example.test", body, content_type)
    assert response.status == 202, response


async def expire_all(sip: SipServer, recipient: str) -> None:
    await sip.pool.execute(
        """UPDATE offline_messages SET expires_at = now() - interval '1 second'
           WHERE recipient = $1""",
        recipient,
    )


async def notices_queued(sip: SipServer) -> int:
    count = await sip.pool.fetchval(
        "SELECT count(*) FROM outbound_messages WHERE source = $1", NOTICE_SOURCE
    )
    return int(count)


def stamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")


async def test_a_registered_sender_is_told_that_their_message_expired(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    await store(alice, LONG)
    (row,) = await list_messages(sip.pool, BOB)
    await expire_all(sip, BOB)

    assert await msilo.purge() == 1
    notice = await alice.next_request()
    assert notice.method == "MESSAGE"
    assert (notice.get("From") or "").startswith(SYSTEM)
    assert notice.get("To") == f"<sip:{ALICE}>"
    assert notice.get(GENERATED_HEADER) == "notice"
    assert notice.body.decode() == (
        f"*** Your message to {BOB} of {stamp(row.received_at)} expired undelivered: {QUOTED}"
    )
    alice.answer(notice, 200)
    assert await count_messages(sip.pool, BOB) == 0
    assert msilo.stats.expired == 1 and msilo.stats.notices == 1
    # Told once: a second purge finds nothing and says nothing.
    assert await msilo.purge() == 0
    assert await notices_queued(sip) == 1


async def test_an_offline_sender_finds_the_notice_stored_and_its_expiry_tells_nobody(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")  # never registered
    await store(alice, b"are you there?")
    (row,) = await list_messages(sip.pool, BOB)
    await expire_all(sip, BOB)
    assert await msilo.purge() == 1
    assert await notices_queued(sip) == 0
    (stored,) = await list_messages(sip.pool, ALICE)
    assert stored.sender_uri == "sip:example.test"
    expected = (
        f"*** Your message to {BOB} of {stamp(row.received_at)} expired undelivered: "
        '"are you there?"'
    )
    assert stored.body.decode() == expected

    # Its own expiry is not noticed: no notice about a notice, stored or queued.
    await expire_all(sip, ALICE)
    assert await msilo.purge() == 1
    assert await count_messages(sip.pool, ALICE) == 0
    assert await count_messages(sip.pool, "example.test") == 0
    assert await notices_queued(sip) == 0
    assert msilo.stats.expired == 2 and msilo.stats.notices == 1


async def test_a_stored_notice_is_delivered_when_the_sender_registers(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"ping")
    await expire_all(sip, BOB)
    assert await msilo.purge() == 1
    assert (await alice.register()).status == 200
    notice = await alice.next_request()
    assert (notice.get("From") or "").startswith(SYSTEM)
    assert PREFIX.sub(b"", notice.body).startswith(f"*** Your message to {BOB} of ".encode())
    assert notice.body.endswith(b' expired undelivered: "ping"')
    alice.answer(notice, 200)

    async def gone() -> bool:
        return await count_messages(sip.pool, ALICE) == 0

    await eventually(gone, "the notice delivered")


@pytest.mark.parametrize("msilo_overrides", [{"msilo_expiry_notice": False}])
async def test_no_expiry_notice_when_turned_off(sip: SipServer, msilo: MsiloWorker) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"one")
    await expire_all(sip, BOB)
    assert await msilo.purge() == 1
    assert await count_messages(sip.pool, ALICE) == 0
    assert await notices_queued(sip) == 0
    assert msilo.stats.notices == 0


async def test_no_expiry_notice_to_senders_of_other_domains(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    async with sip.pool.acquire() as conn, conn.transaction():
        for sender in ("sip:eve@elsewhere.test", "sip:nobody@example.test", "sip:example.test"):
            await store_message(
                conn,
                recipient=BOB,
                sender_uri=sender,
                sender_display=None,
                call_id="x",
                content_type="text/plain",
                body=b"hi",
                extra_headers=[],
                lifetime=60,
            )
    await expire_all(sip, BOB)
    assert await msilo.purge() == 3
    assert await sip.pool.fetchval("SELECT count(*) FROM offline_messages") == 0
    assert await notices_queued(sip) == 0


# -- refused for good ---------------------------------------------------------------------

MAX_TWO: dict[str, Any] = {"msilo_max_attempts": 2}


@pytest.mark.parametrize("msilo_overrides", [MAX_TWO])
async def test_a_message_refused_for_good_is_given_up_and_the_ones_behind_it_arrive(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    for n in range(1, 4):
        await store(alice, f"m{n}".encode(), "text/plain" if n != 1 else "text/x-odd")
    first, *_ = await list_messages(sip.pool, BOB)
    bob = await sip.ua("bob")

    # The first refusal keeps it (and the others behind it, in order).
    assert (await bob.register()).status == 200
    refused = await bob.next_request()
    assert refused.body == b"m1"
    bob.answer(refused, 415)

    async def kept() -> bool:
        rows = await list_messages(sip.pool, BOB)
        return len(rows) == 3 and all(r.state is OfflineState.STORED for r in rows)

    await eventually(kept, "m1 back in the store")
    refusals = await sip.pool.fetchval(
        "SELECT refusals FROM offline_messages WHERE id = $1", first.id
    )
    assert refusals == 1
    assert bob.requests.empty()

    # The second is the last: m1 is given up, alice told, m2 and m3 delivered at once.
    assert (await bob.register()).status == 200
    refused = await bob.next_request()
    assert refused.body == b"m1"
    bob.answer(refused, 415)
    for n in (2, 3):
        received = await bob.next_request()
        assert PREFIX.sub(b"", received.body) == f"m{n}".encode()
        bob.answer(received, 200)
    notice = await alice.next_request()
    assert (notice.get("From") or "").startswith(SYSTEM)
    assert notice.body.decode() == (
        f"*** Your message to {BOB} of {stamp(first.received_at)} could not be delivered "
        '(refused 2 times, last: 415 Unsupported Media Type): "m1"'
    )
    alice.answer(notice, 200)

    async def drained() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(drained, "m2 and m3 delivered")
    assert msilo.stats.undeliverable == 1 and msilo.stats.delivered == 2
    assert msilo.stats.notices == 1


@pytest.mark.parametrize("msilo_overrides", [{"msilo_max_attempts": 1}])
async def test_a_refusal_in_the_middle_of_a_drain_lets_the_rest_through_once_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice", "tcp")
    bodies = [f"n{n}".encode() for n in range(6)]
    for body in bodies:
        await store(alice, body, "text/x-chat")  # not prefixed: the bodies as sent
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    received = []
    while len(received) < 5:
        request = await bob.next_request()
        received.append(request.body)
        bob.answer(request, 606 if request.body == b"n2" else 200)
    assert received == [b"n0", b"n1", b"n2", b"n3", b"n4"]
    last = await bob.next_request()
    assert last.body == b"n5"
    bob.answer(last, 200)

    async def drained() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(drained, "all but n2 delivered")
    assert bob.requests.empty()
    assert msilo.stats.delivered == 5 and msilo.stats.undeliverable == 1
    # alice is offline: her notice waits for her.
    (notice,) = await list_messages(sip.pool, ALICE)
    assert "(refused once, last: 606 " in notice.body.decode()
    assert notice.body.endswith(b': "n2"')


@pytest.mark.parametrize("status", [408, 480, 503])
@pytest.mark.parametrize("msilo_overrides", [{"msilo_max_attempts": 1}])
async def test_transient_failures_never_count(
    sip: SipServer, msilo: MsiloWorker, status: int
) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"later")
    bob = await sip.ua("bob")
    for attempt in (1, 2):
        assert (await bob.register()).status == 200
        received = await bob.next_request()
        assert received.body.endswith(b"later")
        bob.answer(received, status)

        async def back(attempt: int = attempt) -> bool:
            rows = await list_messages(sip.pool, BOB)
            return (
                len(rows) == 1
                and rows[0].state is OfflineState.STORED
                and rows[0].attempts == attempt
            )

        await eventually(back, f"kept after {status}")
    assert await sip.pool.fetchval("SELECT refusals FROM offline_messages") == 0
    assert (await bob.register()).status == 200
    received = await bob.next_request()
    bob.answer(received, 200)

    async def delivered() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(delivered, "delivered at last")
    assert msilo.stats.undeliverable == 0
    assert await count_messages(sip.pool, ALICE) == 0


@pytest.mark.parametrize("msilo_overrides", [{"msilo_max_attempts": 0}])
async def test_max_attempts_zero_never_gives_up(sip: SipServer, msilo: MsiloWorker) -> None:
    alice = await sip.ua("alice")
    await store(alice, b"stubborn")
    bob = await sip.ua("bob")
    for count in range(1, 4):
        assert (await bob.register()).status == 200
        received = await bob.next_request()
        bob.answer(received, 606)

        async def back(count: int = count) -> bool:
            value = await sip.pool.fetchval(
                "SELECT refusals FROM offline_messages WHERE state = 'stored'"
            )
            return value == count

        await eventually(back, f"kept after refusal {count}")
    assert msilo.stats.undeliverable == 0


# -- the policy and the notice text --------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (None, False),
        (302, False),
        (403, True),
        (404, True),
        (408, False),
        (415, True),
        (429, False),
        (480, False),
        (486, False),
        (488, True),
        (500, False),
        (503, False),
        (600, False),
        (603, True),
        (606, True),
    ],
)
def test_which_answers_are_refusals(status: int | None, permanent: bool) -> None:
    assert is_permanent(status) is permanent


def _undelivered(content_type: str, body: bytes, head: int = 512) -> Undelivered:
    return Undelivered(
        id=1,
        recipient=BOB,
        sender_uri=f"sip:{ALICE}",
        received_at=datetime(2026, 11, 26, tzinfo=UTC),
        content_type=content_type,
        head=body[:head],
        size=len(body),
        notice=False,
        refusals=1,
    )


def test_the_excerpt_is_the_first_words_of_text() -> None:
    assert excerpt(_undelivered("text/plain", b"  two\r\n  words ")) == '"two words"'
    assert excerpt(_undelivered("text/plain", LONG)) == QUOTED
    latin = "café au lait".encode("latin-1")
    assert excerpt(_undelivered("text/plain;charset=ISO-8859-1", latin)) == '"café au lait"'
    cpim = b"From: <sip:alice@example.test>\r\n\r\nContent-Type: text/plain\r\n\r\nhi there"
    assert excerpt(_undelivered("message/cpim", cpim)) == '"hi there"'
    assert excerpt(_undelivered("image/png", bytes(300))) == "(image/png, 300 bytes)"
    # A body longer than what was read is marked as cut.
    assert excerpt(_undelivered("text/plain", b"short words and more", head=11)) == (
        '"short words..."'
    )


# -- what the control API shows --------------------------------------------------------------


async def test_the_statistics_count_expired_and_undeliverable_messages(
    sip: SipServer, database_url: str
) -> None:
    """msilo running as its service (publishing its counters); the API reads them."""
    alice = await sip.ua("alice")  # offline: both notices are stored for her
    await store(alice, b"refused")
    await store(alice, b"too late")
    _, late = await list_messages(sip.pool, BOB)
    await sip.pool.execute(
        "UPDATE offline_messages SET expires_at = now() - interval '1 second' WHERE id = $1",
        late.id,
    )
    stop = asyncio.Event()
    configured = sip.settings.model_copy(update={"stats_interval": 0.2, "msilo_max_attempts": 1})
    service = asyncio.create_task(
        run_msilo(ServiceContext(configured, database_url, sip.pool, stop))
    )
    token = await new_token(sip.pool, "reader", Scope.READ)
    try:
        bob = await sip.ua("bob")
        assert (await bob.register()).status == 200
        refused = await bob.next_request()
        assert refused.body.endswith(b"refused")
        bob.answer(refused, 488)
        async with client_for(configured, sip.pool, token=token) as http:

            async def counted() -> bool:
                assert not service.done()
                stats = (await http.get("/api/v1/statistics")).json()["messages"]
                return stats["expired"] == 1 and stats["undeliverable"] == 1

            await eventually(counted, "expired and undeliverable counted")
        notices = [m.body.decode() for m in await list_messages(sip.pool, ALICE)]
        assert len(notices) == 2
        assert notices[0].endswith('expired undelivered: "too late"')
        assert "could not be delivered (refused once, last: 488 " in notices[1], notices[1]
        assert notices[1].endswith('): "refused"')
        assert await count_messages(sip.pool, BOB) == 0
    finally:
        stop.set()
        await asyncio.wait_for(service, 10)
