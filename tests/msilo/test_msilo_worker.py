"""The msilo worker against the database alone: replicas racing for one recipient, retries
on the timer, the purge at start."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.msilo.worker import WINDOW, MsiloWorker
from shared.config import Settings
from shared.db.offline import OfflineState, count_messages, list_messages, store_message
from shared.db.outbound import finish
from tests.msilo.conftest import StartMsilo
from tests.relay_sip.conftest import SipServer, eventually

BOB = "bob@example.test"


async def register_bob(pool: asyncpg.Pool) -> None:
    await pool.execute(
        """INSERT INTO locations (aor, contact, transport, source_host, source_port,
               relay_instance, call_id, cseq, expires_at)
           VALUES ($1, 'sip:bob@127.0.0.1:5090', 'udp', '127.0.0.1', 5090, 'test', 'c', 1,
                   now() + interval '1 hour')""",
        BOB,
    )


async def store(pool: asyncpg.Pool, body: bytes, lifetime: int = 3600) -> int:
    async with pool.acquire() as conn, conn.transaction():
        new_id = await store_message(
            conn,
            recipient=BOB,
            sender_uri="sip:alice@example.test",
            sender_display=None,
            call_id="x",
            content_type="text/plain",
            body=body,
            extra_headers=[],
            lifetime=lifetime,
        )
    assert new_id is not None
    return new_id


async def queued(pool: asyncpg.Pool) -> list[asyncpg.Record]:
    return await pool.fetch(
        """SELECT id, source_id, status, order_key FROM outbound_messages
           WHERE source = 'msilo' ORDER BY id"""
    )


async def test_racing_workers_queue_each_message_once_in_order(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    workers = [MsiloWorker(settings, pool, database_url) for _ in range(3)]
    ids = [await store(pool, f"m{n}".encode()) for n in range(WINDOW + 10)]
    await register_bob(pool)
    await asyncio.gather(*(w.pump(BOB) for w in workers for _ in range(3)))
    rows = await queued(pool)
    # One window, each message once, in storage order, as one ordered chain.
    assert [r["source_id"] for r in rows] == ids[:WINDOW]
    assert {r["order_key"] for r in rows} == {f"msilo:{BOB}"}
    # Half the window delivered: the worker tops it up with the next ones, once.
    for row in rows[: WINDOW // 2]:
        await finish(pool, row["id"], delivered=True, status=200, reason="OK")
    await asyncio.gather(*(w.pump(BOB) for w in workers for _ in range(3)))
    rows = await queued(pool)
    assert [r["source_id"] for r in rows] == ids
    for row in rows[WINDOW // 2 :]:
        await finish(pool, row["id"], delivered=True, status=200, reason="OK")
    await asyncio.gather(*(w.pump(BOB) for w in workers))
    assert await count_messages(pool, BOB) == 0
    assert sum(w.stats.queued for w in workers) == len(ids)
    assert sum(w.stats.delivered for w in workers) == len(ids)


async def test_nothing_is_queued_for_a_user_who_is_not_registered(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    worker = MsiloWorker(settings, pool, database_url)
    await store(pool, b"wait")
    await worker.pump(BOB)
    await worker.sweep()
    assert await queued(pool) == []
    (row,) = await list_messages(pool, BOB)
    assert row.state is OfflineState.STORED


async def test_a_failed_delivery_waits_for_the_retry_time_or_a_new_registration(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    worker = MsiloWorker(settings, pool, database_url)  # retry interval: an hour
    await store(pool, b"first")
    await store(pool, b"second")
    await register_bob(pool)
    await worker.pump(BOB)
    row, _second = await queued(pool)  # both queued, as one chain
    await finish(pool, row["id"], delivered=False, status=486, reason="Busy Here")
    await worker.pump(BOB)
    await worker.sweep()
    rows = await queued(pool)
    assert len(rows) == 2  # not yet due; "second" waits behind it
    assert rows[1]["status"] == "failed"  # withdrawn unsent: nothing overtakes "first"
    first, second = await list_messages(pool, BOB)
    assert first.state is OfflineState.STORED and first.last_status == 486
    assert second.state is OfflineState.STORED and second.retry_at is None
    # What the worker does on the registrar's NOTIFY.
    await worker.registered(BOB)
    rows = await queued(pool)
    assert [r["source_id"] for r in rows] == [first.id, second.id, first.id, second.id]


@pytest.mark.parametrize(
    "msilo_overrides", [{"msilo_retry_interval": 0.05, "msilo_sweep_interval": 0.05}]
)
async def test_a_client_that_refused_once_gets_the_message_again_while_registered(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    alice = await sip.ua("alice")
    assert (await alice.message("sip:bob@example.test", b"again")).status == 202
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    refused = await bob.next_request()
    bob.answer(refused, 480)
    retried = await bob.next_request()  # no new REGISTER: the retry timer offers it again
    assert retried.body == refused.body
    bob.answer(retried, 200)

    async def delivered() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(delivered, "delivered on the retry")
    assert msilo.stats.failed == 1 and msilo.stats.delivered == 1


async def test_a_starting_worker_purges_expired_messages(
    pool: asyncpg.Pool, start_msilo: StartMsilo
) -> None:
    expired = await store(pool, b"old")
    await store(pool, b"new")
    await pool.execute(
        "UPDATE offline_messages SET expires_at = now() - interval '1 minute' WHERE id = $1",
        expired,
    )
    worker = await start_msilo()

    async def purged() -> bool:
        return [m.body for m in await list_messages(pool, BOB)] == [b"new"]

    await eventually(purged, "expired message purged")
    assert worker.stats.expired == 1
