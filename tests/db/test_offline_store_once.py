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
