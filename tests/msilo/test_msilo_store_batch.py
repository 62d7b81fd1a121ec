"""MESSAGEs for offline users arriving together are stored with one commit (group commit),
yet each is answered for itself: 202 only once committed, 480 Mailbox Full for the ones
over their recipient's quota, an error for a message the database refuses — and 503 for
every one when the database fails. A recipient's messages keep their order of arrival."""

from __future__ import annotations

import asyncio

import asyncpg

from services.relay.sip import handover
from shared.config import Settings
from shared.db.offline import NewMessage, list_messages
from shared.sip.message import SipRequest, SipResponse
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"
CAROL = "carol@example.test"


def offline_request(body: bytes, to: str, call_id: str | None = None) -> SipRequest:
    ua = SipUA("udp", ("127.0.0.1", 9), "alice", "x", "example.test")
    ua.local_port = 5070
    request = ua.build(
        "MESSAGE",
        f"sip:{to}",
        to=f"sip:{to}",
        headers=[("Content-Type", "text/plain")],
        body=body,
    )
    if call_id is not None:
        request.headers.set("Call-ID", call_id)
    return request


async def store_together(
    pool: asyncpg.Pool, settings: Settings, requests: list[tuple[SipRequest, str]]
) -> list[SipResponse]:
    """The stores of ``requests`` (request, recipient), all arriving at once, in order."""
    return await asyncio.gather(
        *(
            handover.store_offline(pool, settings, request, aor, authenticated_user="alice")
            for request, aor in requests
        )
    )


async def commits(pool: asyncpg.Pool) -> int:
    """How many transactions wrote the stored rows."""
    return int(await pool.fetchval("SELECT count(DISTINCT xmin::text) FROM offline_messages"))


async def test_stores_arriving_together_share_a_commit_and_keep_their_order(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    requests = [
        (offline_request(f"{to} {n}".encode(), to), to) for n in range(12) for to in (BOB, CAROL)
    ]
    responses = await store_together(pool, settings, requests)
    assert [r.status for r in responses] == [202] * 24
    for to in (BOB, CAROL):
        stored = await list_messages(pool, to)
        assert [m.body for m in stored] == [f"{to} {n}".encode() for n in range(12)]
        assert [m.call_id for m in stored] == [r.get("Call-ID") for r, aor in requests if aor == to]
    assert await commits(pool) == 1  # they arrived in one turn of the event loop


async def test_a_full_mailbox_refuses_only_its_own_messages(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    quota = settings.model_copy(update={"msilo_max_messages": 3})
    first = await store_together(pool, quota, [(offline_request(b"bob 0", BOB), BOB)])
    assert first[0].status == 202
    requests = [(offline_request(f"bob {n}".encode(), BOB), BOB) for n in range(1, 5)]
    requests.insert(1, (offline_request(b"carol 0", CAROL), CAROL))
    responses = await store_together(pool, quota, requests)
    assert [(r.status, r.reason) for r in responses] == [
        (202, "Accepted"),  # bob 1
        (202, "Accepted"),  # carol 0
        (202, "Accepted"),  # bob 2: bob's third
        (480, "Mailbox Full"),  # bob 3
        (480, "Mailbox Full"),  # bob 4
    ]
    assert "offline mailbox of bob@example.test is full" in (responses[3].get("Warning") or "")
    assert [m.body for m in await list_messages(pool, BOB)] == [b"bob 0", b"bob 1", b"bob 2"]
    assert [m.body for m in await list_messages(pool, CAROL)] == [b"carol 0"]


async def test_a_message_the_database_refuses_fails_alone(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    requests = [(offline_request(f"bob {n}".encode(), BOB), BOB) for n in range(6)]
    # A Call-ID text PostgreSQL cannot hold (a NUL byte) in the middle of the batch.
    requests[3] = (offline_request(b"bob 3", BOB, call_id="bad\x00call@x"), BOB)
    responses = await store_together(pool, settings, requests)
    assert [r.status for r in responses] == [202, 202, 202, 503, 202, 202]
    stored = await list_messages(pool, BOB)
    assert [m.body for m in stored] == [b"bob 0", b"bob 1", b"bob 2", b"bob 4", b"bob 5"]


async def test_a_database_failure_answers_every_store_of_the_batch_503(
    settings: Settings, empty_database_url: str
) -> None:
    # No migrations: every statement fails once the connection is made.
    pool = await asyncpg.create_pool(empty_database_url, min_size=0, max_size=2)
    try:
        requests = [(offline_request(f"bob {n}".encode(), BOB), BOB) for n in range(6)]
        responses = await store_together(pool, settings, requests)
    finally:
        await pool.close()
    assert [r.status for r in responses] == [503] * 6


def new_message(body: bytes) -> NewMessage:
    return NewMessage(BOB, "sip:alice@example.test", None, "c", "text/plain", body, [], 3600)


async def test_under_load_a_store_waits_for_the_others_sent_with_it(
    pool: asyncpg.Pool, settings: Settings
) -> None:
    # Senders answered by one commit send again nearly together: the first of them, just
    # after that commit, waits a little for the rest rather than taking a commit alone.
    idle = handover._batcher(pool, 0)
    assert await idle.store(new_message(b"first")) is not None  # it started at once
    for _ in range(10):  # its stores answered, the batcher goes idle on the next turns
        await asyncio.sleep(0)
    batcher = handover._batcher(pool, 0)  # the next one knows the last went idle just now
    assert batcher is not idle and batcher.idle_since > 0
    batcher.busy, batcher.linger = 5.0, 1.0  # margins for a slow machine, not the defaults
    first = asyncio.ensure_future(batcher.store(new_message(b"next 1")))
    await asyncio.sleep(0.05)  # long after a batch would have started without waiting
    second = batcher.store(new_message(b"next 2"))
    ids = await asyncio.gather(first, second)
    assert None not in ids
    assert [m.body for m in await list_messages(pool, BOB)] == [b"first", b"next 1", b"next 2"]
    assert await commits(pool) == 2  # "next 1" waited for "next 2": one commit for both
