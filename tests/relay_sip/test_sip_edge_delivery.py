"""Outbound delivery: rows queued in ``outbound_messages`` reach the AoR's registered UAs."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.db.outbound import DONE_CHANNEL, OutboundStatus, get_message, queue_message
from tests.relay_sip.conftest import SipServer, eventually

TEXT = "[Offline message] Привет, bob ✓".encode()


async def test_a_queued_message_is_delivered_and_its_outcome_recorded(
    sip: SipServer, database_url: str
) -> None:
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    listener = await asyncpg.connect(database_url)
    outcomes: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(DONE_CHANNEL, lambda *args: outcomes.put_nowait(args[3]))
    try:
        async with sip.pool.acquire() as conn, conn.transaction():
            message_id = await queue_message(
                conn,
                from_uri="sip:alice@example.test",
                from_display="Alice",
                to_aor="bob@example.test",
                body=TEXT,
                extra_headers=[("Date", "Thu, 26 Nov 2026 10:00:00 GMT"), ("Via", "ignored")],
                source="msilo",
                source_id=7,
            )
        received = await bob.next_request()
        assert received.method == "MESSAGE"
        assert received.body == TEXT
        assert received.get("From", "").startswith('"Alice" <sip:alice@example.test>;tag=')
        assert received.get("To") == "<sip:bob@example.test>"
        assert received.get("Content-Type") == "text/plain;charset=UTF-8"
        assert received.get("Date") == "Thu, 26 Nov 2026 10:00:00 GMT"
        assert len(received.get_all("Via")) == 1
        bob.answer(received, 200)
        payload = await asyncio.wait_for(outcomes.get(), 10)
        assert '"type": "delivered"' in payload and f'"id": {message_id}' in payload
    finally:
        await listener.close()
    row = await get_message(sip.pool, message_id)
    assert row is not None
    assert row.status is OutboundStatus.DELIVERED
    assert row.last_status == 200 and row.attempts == 1 and row.finished_at is not None


async def test_a_message_for_an_unregistered_aor_fails_with_480(
    sip: SipServer, database_url: str
) -> None:
    listener = await asyncpg.connect(database_url)
    outcomes: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(DONE_CHANNEL, lambda *args: outcomes.put_nowait(args[3]))
    try:
        async with sip.pool.acquire() as conn, conn.transaction():
            message_id = await queue_message(
                conn, from_uri="sip:alice@example.test", to_aor="carol@example.test", body=b"x"
            )
        payload = await asyncio.wait_for(outcomes.get(), 10)
        assert '"type": "failed"' in payload
    finally:
        await listener.close()
    row = await get_message(sip.pool, message_id)
    assert row is not None and row.status is OutboundStatus.FAILED and row.last_status == 480


async def test_a_rejection_by_the_ua_is_recorded_as_failed(sip: SipServer) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    message_id = await queue_message(
        sip.pool, from_uri="sip:alice@example.test", to_aor="bob@example.test", body=b"x"
    )
    received = await bob.next_request()
    bob.answer(received, 415)

    async def finished() -> bool:
        row = await get_message(sip.pool, message_id)
        return row is not None and row.status is OutboundStatus.FAILED

    await eventually(finished, "outcome recorded")
    row = await get_message(sip.pool, message_id)
    assert row is not None and row.last_status == 415


async def test_a_row_that_would_inject_header_lines_fails_unsent(sip: SipServer) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    bad = await queue_message(
        sip.pool,
        from_uri="sip:alice@example.test",
        to_aor="bob@example.test",
        body=b"x",
        extra_headers=[("Subject", "hi\r\nVia: SIP/2.0/UDP evil.example")],
    )
    good = await queue_message(
        sip.pool, from_uri="sip:alice@example.test", to_aor="bob@example.test", body=b"ok"
    )
    received = await bob.next_request()
    assert received.body == b"ok"  # only the good one reaches bob
    bob.answer(received, 200)

    async def finished() -> bool:
        rows = [await get_message(sip.pool, i) for i in (bad, good)]
        return all(r is not None and r.finished_at is not None for r in rows)

    await eventually(finished, "both outcomes recorded")
    row = await get_message(sip.pool, bad)
    assert row is not None and row.status is OutboundStatus.FAILED and row.last_status == 500
    assert bob.requests.empty()
