"""Fan-out rows in ``outbound_messages`` (``migrations/0015_outbound_fanout.sql``): one row
per room message, claimed once whoever asks and however (by id or by a scan), its copies'
outcomes recorded a batch at a time and the row finished with the last."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db import rooms
from shared.db.outbound import (
    FanoutProgress,
    OutboundStatus,
    claim_batch,
    claim_fanout,
    get_message,
    queue_message,
    record_fanout,
)

ROOM = "devs@conference.example.test"
MEMBERS = [f"user{i}@example.test" for i in range(5)]


async def fanout_row(pool: asyncpg.Pool) -> int:
    for aor in MEMBERS:
        await pool.execute(
            """INSERT INTO locations (aor, contact, transport, source_host, source_port,
                   relay_instance, call_id, cseq, expires_at)
               VALUES ($1, $2, 'udp', '127.0.0.1', 5070, 'test', 'reg', 1,
                       now() + interval '1 hour')""",
            aor,
            f"sip:{aor}",
        )
    async with pool.acquire() as conn, conn.transaction():
        offline = await rooms.queue_fanout(
            conn,
            from_uri=f"sip:{ROOM}",
            recipients=MEMBERS,
            body=b"[alice]: hi",
            content_type="text/plain",
            extra_headers=[],
            source="imc-chat",
        )
    assert offline == []
    return int(await pool.fetchval("SELECT id FROM outbound_messages"))


async def test_a_fanout_row_is_claimed_once_by_id_or_by_scan(pool: asyncpg.Pool) -> None:
    row_id = await fanout_row(pool)
    single = await queue_message(
        pool, from_uri="sip:a@example.test", to_aor="b@example.test", body=b"x"
    )
    # By id: only fan-out rows (an ordinary row keeps its place in the scan).
    async with pool.acquire() as a, pool.acquire() as b:
        first, second = await asyncio.gather(
            claim_fanout(a, [row_id, single], claimed_by="relay-a"),
            claim_fanout(b, [row_id], claimed_by="relay-b"),
        )
    claimed = [*first, *second]
    assert [m.id for m in claimed] == [row_id]
    assert claimed[0].recipients == tuple(MEMBERS) and claimed[0].pending_recipients() == MEMBERS
    # Claimed already: neither a scan nor another claim by id takes it again.
    async with pool.acquire() as conn:
        scanned = await claim_batch(conn, limit=100, lease=120, claimed_by="relay-b")
        assert [m.id for m in scanned] == [single]
        assert await claim_fanout(conn, [row_id], claimed_by="relay-b") == []


async def test_outcomes_are_recorded_in_batches_and_the_row_finished_with_the_last(
    pool: asyncpg.Pool,
) -> None:
    row_id = await fanout_row(pool)
    async with pool.acquire() as conn:
        await claim_fanout(conn, [row_id], claimed_by="relay-a")
    await record_fanout(pool, [FanoutProgress(row_id, MEMBERS[:2], delivered=2)])
    row = await get_message(pool, row_id)
    assert row is not None and row.status is OutboundStatus.SENDING
    assert row.pending_recipients() == MEMBERS[2:] and row.recipients_delivered == 2
    await record_fanout(
        pool, [FanoutProgress(row_id, MEMBERS[2:], delivered=1, final=True, last_failure=480)]
    )
    row = await get_message(pool, row_id)
    assert row is not None and row.finished_at is not None
    assert (row.status, row.last_status, row.last_reason) == (
        OutboundStatus.DELIVERED,
        200,
        "3 of 5 delivered",
    )
    assert row.pending_recipients() == []
