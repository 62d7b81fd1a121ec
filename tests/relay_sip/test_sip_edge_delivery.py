"""Outbound delivery: rows queued in ``outbound_messages`` reach the AoR's registered UAs."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg

from services.relay.sip.service import run_sip
from shared.config import Settings
from shared.db.outbound import (
    DONE_CHANNEL,
    NewOutbound,
    OutboundStatus,
    claim_batch,
    get_message,
    queue_message,
    queue_messages,
)
from shared.lifecycle import ServiceContext
from tests.relay_sip.conftest import SipServer, eventually, free_port
from tests.relay_sip.sip_ua import SipUA
from tests.workers import wait_started

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


@contextlib.asynccontextmanager
async def relay(
    settings: Settings, pool: asyncpg.Pool, database_url: str, port: int
) -> AsyncIterator[None]:
    """A relay on ``port``: its relay_instance is host:port."""
    configured = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": port,
            "shutdown_timeout": 3.0,
            "sip_delivery_poll_interval": 30.0,
        }
    )
    started = asyncio.Event()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_sip(ServiceContext(configured, database_url, pool, stop), started=started)
    )
    await wait_started(task, started, "the SIP edge")
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_a_restarted_relay_sends_at_once_what_its_killed_run_left_sending(
    settings: Settings, pool: asyncpg.Pool, database_url: str, users: dict[str, str]
) -> None:
    port = free_port()
    instance = f"{socket.gethostname()}:{port}"
    bob = SipUA("udp", ("127.0.0.1", port), "bob", users["bob"], settings.domain)
    await bob.start()
    try:
        async with relay(settings, pool, database_url, port):
            assert (await bob.register()).status == 200  # (a UDP binding outlives the relay)
        # What a run of this relay SIGKILLed while sending a chain leaves behind (the kill
        # itself, a process, is tests/stack/test_stack_faults.py): rows 'sending', claimed by
        # it, recently; and a row another relay (host:port0, not host:port) is sending.
        ids = await queue_messages(
            pool,
            [
                NewOutbound(
                    from_uri="sip:alice@example.test",
                    to_aor="bob@example.test",
                    body=f"m{n}".encode(),
                    order_key="test:bob",
                )
                for n in range(3)
            ],
        )
        other = await queue_message(
            pool, from_uri="sip:alice@example.test", to_aor="bob@example.test", body=b"other"
        )
        async with pool.acquire() as conn, conn.transaction():
            await claim_batch(conn, limit=3, lease=120, claimed_by=f"{instance}/killed")
            await claim_batch(conn, limit=1, lease=120, claimed_by=f"{instance}0/alive")
        assert (await get_message(pool, other)).status is OutboundStatus.SENDING  # type: ignore[union-attr]
        async with relay(settings, pool, database_url, port):
            # The same relay instance started again: the chain goes out now, not after
            # the 120 s lease (at least once: the killed run may have sent m0 already).
            got = []
            for _ in range(3):
                request = await asyncio.wait_for(bob.next_request(), 10)
                got.append(request.body)
                bob.answer(request, 200)
            assert got == [b"m0", b"m1", b"m2"]

            async def delivered() -> bool:
                rows = [await get_message(pool, i) for i in ids]
                return all(r is not None and r.status is OutboundStatus.DELIVERED for r in rows)

            await eventually(delivered, "the chain delivered")
            row = await get_message(pool, other)
            assert row is not None and row.status is OutboundStatus.SENDING
            assert row.claimed_by == f"{instance}0/alive"
            assert bob.requests.empty()
    finally:
        await bob.close()
