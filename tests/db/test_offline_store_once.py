"""The relay's one-round-trip store (``offline.store_message_once``): what it stores is what
``store_message`` stores, the quota stays exact and ids follow commit order when many
MESSAGEs for one mailbox arrive at once, and a refused store leaves nothing behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from shared.db import offline as offline_db

BOB = "bob@example.test"


@pytest.fixture
async def big_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=10, max_size=10)
    await pool.execute("DELETE FROM offline_messages WHERE recipient = $1", BOB)
    yield pool
    await pool.execute("DELETE FROM offline_messages WHERE recipient = $1", BOB)
    await pool.close()


async def store(pool: asyncpg.Pool, i: int, *, quota: int) -> int | None:
    return await offline_db.store_message_once(
        pool,
        recipient=BOB,
        sender_uri="sip:alice@example.test",
        sender_display="Alice",
        call_id=f"call-{i}",
        content_type="message/cpim",
        body=b"\x00binary\r\n" + str(i).encode(),
        extra_headers=[("X-Tag", f"t{i}"), ("Privacy", "id")],
        lifetime=600,
        max_messages=quota,
    )


async def test_stores_the_row_store_message_would(big_pool: asyncpg.Pool) -> None:
    new_id = await store(big_pool, 1, quota=0)
    assert new_id is not None
    message = await offline_db.get_message(big_pool, new_id)
    assert message is not None
    assert (message.recipient, message.sender_uri, message.sender_display) == (
        BOB,
        "sip:alice@example.test",
        "Alice",
    )
    assert (message.call_id, message.content_type) == ("call-1", "message/cpim")
    assert message.body == b"\x00binary\r\n1"
    assert message.extra_headers == (("X-Tag", "t1"), ("Privacy", "id"))
    lifetime = (message.expires_at - message.received_at).total_seconds()
    assert lifetime == pytest.approx(600, abs=1)
    assert message.not_before is None


async def test_concurrent_stores_keep_the_quota_exact_and_ids_in_commit_order(
    big_pool: asyncpg.Pool,
) -> None:
    for _ in range(3):
        await big_pool.execute("DELETE FROM offline_messages WHERE recipient = $1", BOB)
        results = await asyncio.gather(*(store(big_pool, i, quota=4) for i in range(10)))
        accepted = [r for r in results if r is not None]
        assert len(accepted) == 4
        stored = await offline_db.list_messages(big_pool, BOB)
        assert [m.id for m in stored] == sorted(accepted)


async def test_expired_messages_do_not_count_against_the_quota(big_pool: asyncpg.Pool) -> None:
    for i in range(2):
        assert await store(big_pool, i, quota=2) is not None
    assert await store(big_pool, 2, quota=2) is None
    await big_pool.execute(
        "UPDATE offline_messages SET expires_at = now() - interval '1 s' WHERE recipient = $1",
        BOB,
    )
    assert await store(big_pool, 3, quota=2) is not None
    assert await store(big_pool, 4, quota=2) is not None
    assert await store(big_pool, 5, quota=2) is None
    assert await offline_db.count_messages(big_pool, BOB) == 4  # 2 expired, 2 live


def new_message(i: int, recipient: str = BOB) -> offline_db.NewMessage:
    return offline_db.NewMessage(
        recipient=recipient,
        sender_uri="sip:alice@example.test",
        sender_display="Alice" if i % 2 else None,
        call_id=f"call-{i}",
        content_type="message/cpim",
        body=b"\x00binary\r\n" + str(i).encode(),
        extra_headers=[("X-Tag", f"t{i}")],
        lifetime=600 + i,
    )


CAROL = "carol@example.test"


async def test_a_batch_stores_each_row_in_order_and_keeps_each_mailboxs_quota(
    big_pool: asyncpg.Pool,
) -> None:
    await big_pool.execute("DELETE FROM offline_messages WHERE recipient = $1", CAROL)
    assert await store(big_pool, 99, quota=3) is not None  # bob has one already
    batch = [new_message(i, BOB if i % 3 else CAROL) for i in range(9)]
    ids = await offline_db.store_messages_once(big_pool, batch, max_messages=3)
    # bob: 1, 2, 4, 5, 7, 8 → room for 2 more (1, 2); carol: 0, 3, 6 → all 3.
    stored_positions = [i for i, new_id in enumerate(ids) if new_id is not None]
    assert stored_positions == [0, 1, 2, 3, 6]
    bob = await offline_db.list_messages(big_pool, BOB)
    carol = await offline_db.list_messages(big_pool, CAROL)
    assert [m.call_id for m in bob] == ["call-99", "call-1", "call-2"]
    assert [m.call_id for m in carol] == ["call-0", "call-3", "call-6"]
    by_id = {m.id: m for m in bob + carol}
    for i in stored_positions:
        message = by_id[ids[i]]  # type: ignore[index]
        assert message.call_id == f"call-{i}"
        assert message.body == batch[i].body
        assert message.sender_display == batch[i].sender_display
        assert message.extra_headers == (("X-Tag", f"t{i}"),)
        lifetime = (message.expires_at - message.received_at).total_seconds()
        assert lifetime == pytest.approx(600 + i, abs=1)
    # Without a quota everything is stored, in the order given.
    more = [new_message(i) for i in range(10, 14)]
    ids = await offline_db.store_messages_once(big_pool, more, max_messages=0)
    assert None not in ids and ids == sorted(ids)
    await big_pool.execute("DELETE FROM offline_messages WHERE recipient = $1", CAROL)


async def test_concurrent_batches_keep_the_quota_exact(big_pool: asyncpg.Pool) -> None:
    results = await asyncio.gather(
        *(
            offline_db.store_messages_once(
                big_pool, [new_message(10 * b + i) for i in range(3)], max_messages=7
            )
            for b in range(5)
        )
    )
    accepted = [new_id for ids in results for new_id in ids if new_id is not None]
    assert len(accepted) == 7
    stored = await offline_db.list_messages(big_pool, BOB)
    assert [m.id for m in stored] == sorted(accepted)
    for ids in results:  # within a batch, the first ones get in
        taken = [new_id is not None for new_id in ids]
        assert taken == sorted(taken, reverse=True)
