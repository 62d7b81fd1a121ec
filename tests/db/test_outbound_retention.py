"""The send log's retention: old finished outbound rows go, everything else stays."""

from __future__ import annotations

import asyncpg

from shared.db.outbound import finish, purge_finished, queue_message


async def test_only_finished_rows_past_the_retention_are_purged(pool: asyncpg.Pool) -> None:
    async def queued(body: bytes) -> int:
        return await queue_message(
            pool, from_uri="sip:alice@example.test", to_aor="bob@example.test", body=body
        )

    old_delivered, old_failed, recent, waiting = (
        await queued(b"1"),
        await queued(b"2"),
        await queued(b"3"),
        await queued(b"4"),
    )
    await finish(pool, old_delivered, delivered=True, status=200, reason="OK")
    await finish(pool, old_failed, delivered=False, status=480, reason="Offline")
    await finish(pool, recent, delivered=True, status=200, reason="OK")
    await pool.execute(
        "UPDATE outbound_messages SET finished_at = now() - interval '8 days' WHERE id = ANY($1)",
        [old_delivered, old_failed],
    )
    # A queued row older than the retention is still work to do, never log.
    await pool.execute(
        "UPDATE outbound_messages SET created_at = now() - interval '30 days' WHERE id = $1",
        waiting,
    )
    assert await purge_finished(pool, older_than=7 * 86400, limit=1) == 1  # batched
    assert await purge_finished(pool, older_than=7 * 86400) == 1
    assert await purge_finished(pool, older_than=7 * 86400) == 0
    left = await pool.fetch("SELECT id, status FROM outbound_messages ORDER BY id")
    assert [(r["id"], r["status"]) for r in left] == [(recent, "delivered"), (waiting, "queued")]
