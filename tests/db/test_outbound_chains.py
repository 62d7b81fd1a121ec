"""Ordered chains in ``outbound_messages``: one relay run sends a chain, in order; a chain
whose earlier rows another relay (or an earlier run) holds waits for them."""

from __future__ import annotations

import asyncpg

from shared.db.outbound import (
    NOT_SENT_REASON,
    NewOutbound,
    OutboundStatus,
    cancel_chain,
    claim_batch,
    get_message,
    queue_messages,
    release_previous_runs,
)

KEY = "msilo:bob@example.test"


async def chain(pool: asyncpg.Pool, n: int, key: str | None = KEY) -> list[int]:
    return await queue_messages(
        pool,
        [
            NewOutbound(
                from_uri="sip:alice@example.test",
                to_aor="bob@example.test",
                body=f"m{i}".encode(),
                order_key=key,
            )
            for i in range(n)
        ],
    )


async def claim(pool: asyncpg.Pool, who: str, limit: int = 100) -> list[int]:
    async with pool.acquire() as conn, conn.transaction():
        return [m.id for m in await claim_batch(conn, limit=limit, lease=120, claimed_by=who)]


async def test_queue_messages_keeps_the_order_given(pool: asyncpg.Pool) -> None:
    ids = await chain(pool, 50)
    assert ids == sorted(ids)
    bodies = [(await get_message(pool, i)).body for i in ids]  # type: ignore[union-attr]
    assert bodies == [f"m{i}".encode() for i in range(50)]


async def test_a_chain_split_by_the_claim_limit_stays_with_its_relay(pool: asyncpg.Pool) -> None:
    ids = await chain(pool, 6)
    loose = await chain(pool, 1, key=None)
    assert await claim(pool, "relay-a", limit=2) == ids[:2]
    # Another relay (or a restarted one) must not take the rest while relay-a sends the head;
    # a row outside any chain is anyone's.
    assert await claim(pool, "relay-b") == loose
    assert await claim(pool, "relay-a") == ids[2:]


async def test_a_chain_left_by_a_dead_relay_is_taken_whole_after_the_lease(
    pool: asyncpg.Pool,
) -> None:
    ids = await chain(pool, 4)
    assert await claim(pool, "old-run", limit=2) == ids[:2]
    assert await claim(pool, "new-run") == []
    await pool.execute(
        "UPDATE outbound_messages SET updated_at = now() - interval '1 hour' WHERE id = ANY($1)",
        ids[:2],
    )
    assert await claim(pool, "new-run") == ids


async def test_cancel_chain_finishes_the_rest_unsent(pool: asyncpg.Pool) -> None:
    ids = await chain(pool, 5)
    assert await claim(pool, "relay-a", limit=3) == ids[:3]
    cancelled = await cancel_chain(pool, KEY, after=ids[1], claimed_by="relay-a")
    assert cancelled == ids[2:]
    for i in ids[2:]:
        row = await get_message(pool, i)
        assert row is not None and row.status is OutboundStatus.FAILED
        assert row.last_status is None and row.last_reason == NOT_SENT_REASON
    head = await get_message(pool, ids[0])
    assert head is not None and head.status is OutboundStatus.SENDING


async def test_a_restarted_relay_takes_back_what_its_killed_run_left_sending(
    pool: asyncpg.Pool,
) -> None:
    others = await chain(pool, 3, key=None)
    owners = ["host:50600/x", "otherhost:5060/y", "host:5060/new"]  # not a run of host:5060
    for row_id, who in zip(others, owners, strict=True):
        assert await claim(pool, who, limit=1) == [row_id]
    ids = await chain(pool, 4)
    assert await claim(pool, "host:5060/old", limit=2) == ids[:2]  # then SIGKILLed
    assert await claim(pool, "host:5060/new") == []  # the chain waits for its head
    # The new run of host:5060 puts back only its predecessors' rows, at once.
    async with pool.acquire() as conn, conn.transaction():
        assert await release_previous_runs(conn, "host:5060", "host:5060/new") == 2
    assert await claim(pool, "host:5060/new") == ids
    for row_id, who in zip(others, owners, strict=True):
        row = await get_message(pool, row_id)
        assert row is not None and row.status is OutboundStatus.SENDING and row.claimed_by == who


async def test_a_row_another_relay_is_claiming_holds_back_the_rest_of_its_chain(
    pool: asyncpg.Pool,
) -> None:
    ids = await chain(pool, 6)
    loose = await chain(pool, 1, key=None)
    async with pool.acquire() as other, other.transaction():
        # Another relay is claiming the third row right now (its claim locks it).
        await other.execute("SELECT 1 FROM outbound_messages WHERE id = $1 FOR UPDATE", ids[2])
        # Only the rows before it, and rows outside the chain: nothing overtakes it.
        assert await claim(pool, "relay-a") == [*ids[:2], *loose]


async def test_a_long_chain_is_claimed_in_order_batch_by_batch_by_one_relay(
    pool: asyncpg.Pool,
) -> None:
    ids = await chain(pool, 1200)
    taken: list[int] = []
    while batch := await claim(pool, "relay-a", limit=250):
        taken += batch
        assert await claim(pool, "relay-b") == []  # never a row in the middle of it
    assert taken == ids
