"""A drain of a big backlog: queued in large windows without reading the bodies into msilo,
pipelined over TCP, each message delivered once, in storage order, deleted after its 200."""

from __future__ import annotations

import asyncpg

from services.msilo.worker import WINDOW, MsiloWorker
from shared.config import Settings
from shared.db.offline import apply_delivered, count_messages, list_messages
from shared.db.outbound import finish, get_message
from tests.msilo.test_msilo_window import BOB, PREFIX, stored_count_is
from tests.msilo.test_msilo_worker import register_bob
from tests.relay_sip.conftest import SipServer


async def store_many(pool: asyncpg.Pool, count: int) -> None:
    """``count`` messages for bob in one statement: m00000, m00001..."""
    await pool.execute(
        """INSERT INTO offline_messages (recipient, sender_uri, call_id, expires_at,
               content_type, body)
           SELECT $1, 'sip:alice@example.test', 'c' || n, now() + interval '1 hour',
                  'text/plain', convert_to('m' || lpad(n::text, 5, '0'), 'UTF8')
           FROM generate_series(0, $2 - 1) AS n ORDER BY n""",
        BOB,
        count,
    )


async def test_a_backlog_of_10000_arrives_over_tcp_once_and_in_order(
    sip: SipServer, msilo: MsiloWorker
) -> None:
    count = 10_000
    await store_many(sip.pool, count)
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    got: list[bytes] = []
    for _ in range(count):
        request = await bob.next_request()
        assert request.method == "MESSAGE"
        bob.answer(request, 200)
        got.append(PREFIX.sub(b"", request.body))
    assert got == [f"m{n:05d}".encode() for n in range(count)]
    await stored_count_is(sip.pool, 0)
    assert bob.requests.empty()  # nothing twice
    assert msilo.stats.delivered == count
    sent = await sip.pool.fetchval(
        "SELECT count(*) FROM outbound_messages WHERE source = 'msilo' AND status = 'delivered'"
    )
    assert sent == count  # each queued once


async def test_delivered_outcomes_delete_their_messages_once(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    msilo = MsiloWorker(settings, pool, database_url)  # no relay: the test plays it
    await register_bob(pool)
    await store_many(pool, 3)
    await msilo.pump(BOB)
    rows = await list_messages(pool, BOB)
    outbound = [r.outbound_id for r in rows]
    assert all(outbound) and len(rows) == 3 <= WINDOW
    first, second, third = (i for i in outbound if i is not None)
    await finish(pool, first, delivered=True, status=200, reason="OK")
    await finish(pool, second, delivered=False, status=486, reason="Busy Here")
    outcomes = await apply_delivered(pool, [first, second, third])
    assert [(o.recipient, o.delivered, o.failed, o.last) for o in outcomes] == [
        (BOB, 1, True, second)  # the third is still being sent: not an outcome yet
    ]
    # The same outcomes again (a replica, a repeated NOTIFY): nothing more is deleted.
    assert [o.delivered for o in await apply_delivered(pool, [first, second])] == [0]
    assert await count_messages(pool, BOB) == 2
    row = await get_message(pool, third)
    assert row is not None and row.source_id == rows[2].id
