"""``message_ops.send`` as one pipelined statement: its routing agrees with the functions it
stands in for (``offline.drain_pending``, ``offline.store_message``'s quota and lock), it
wakes the services with the same NOTIFYs, it keeps the quota exact under concurrent sends
(the API's and the relay's), and it is one transaction — the caller's when there is one."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from services.api import message_ops, room_ops
from services.api.message_ops import MailboxFull, Outcome
from shared.config import Settings
from shared.db import offline as offline_db
from shared.db.offline import SCHEDULED_CHANNEL, STORED_CHANNEL, drain_pending
from shared.db.outbound import QUEUED_CHANNEL, STORE_ON_FAILURE_SOURCE
from shared.db.rooms import INBOX_CHANNEL
from tests.api.api_client import client_for, new_token
from tests.relay_sip.conftest import users

__all__ = ["users"]

BOB = "bob@example.test"
CONF = "conference.example.test"


async def register(pool: asyncpg.Pool, aor: str) -> None:
    """A live binding for ``aor``, as a REGISTER through the relay leaves one."""
    await pool.execute(
        """INSERT INTO locations (aor, contact, transport, source_host, source_port,
               relay_instance, call_id, cseq, expires_at)
           VALUES ($1, $2, 'udp', '127.0.0.1', 5999, 'test', 'reg-1', 1,
                   now() + interval '1 hour')""",
        aor,
        f"sip:{aor}",
    )


async def store(pool: asyncpg.Pool, body: bytes, **changes: Any) -> int:
    """A stored message for bob (as the relay stores one), then ``changes`` to its row."""
    async with pool.acquire() as conn, conn.transaction():
        new_id = await offline_db.store_message(
            conn,
            recipient=BOB,
            sender_uri="sip:carol@example.test",
            sender_display=None,
            call_id=f"c-{body.decode()}",
            content_type="text/plain",
            body=body,
            extra_headers=[],
            lifetime=3600,
        )
        assert new_id is not None
        for column, value in changes.items():
            await conn.execute(
                f"UPDATE offline_messages SET {column} = $2 WHERE id = $1", new_id, value
            )
    return new_id


async def send(pool: asyncpg.Pool, settings: Settings, **kwargs: Any) -> message_ops.Sent:
    kwargs.setdefault("sender", "alice")
    kwargs.setdefault("sender_display", None)
    kwargs.setdefault("content_type", "text/plain")
    kwargs.setdefault("body", b"hello")
    async with pool.acquire() as conn:
        return await message_ops.send(conn, settings, **kwargs)


async def test_a_registered_user_gets_it_now_exactly_when_drain_pending_says_nothing_waits(
    pool: asyncpg.Pool, settings: Settings, users: dict[str, str]
) -> None:
    await register(pool, BOB)
    now = datetime.now(UTC)
    # (what bob has stored, the outcome a new message must have)
    states: list[tuple[str, dict[str, Any], Outcome]] = [
        ("nothing", {}, Outcome.QUEUED),
        ("due", {"expires_at": now + timedelta(hours=1)}, Outcome.STORED),
        ("refused, waiting for a retry", {"retry_at": now + timedelta(hours=1)}, Outcome.QUEUED),
        ("scheduled later", {"not_before": now + timedelta(hours=1)}, Outcome.QUEUED),
        ("scheduled, now due", {"not_before": now - timedelta(minutes=1)}, Outcome.STORED),
        ("expired", {"expires_at": now - timedelta(minutes=1)}, Outcome.QUEUED),
    ]
    for name, changes, expected in states:
        await pool.execute("DELETE FROM offline_messages")
        await pool.execute("DELETE FROM outbound_messages")
        if changes:
            await store(pool, b"old", **changes)
        pending = await drain_pending(pool, BOB)
        sent = await send(pool, settings, to="bob", body=name.encode())
        assert sent.outcome is expected, name
        assert (sent.outcome is Outcome.QUEUED) is (not pending), name
        if expected is Outcome.QUEUED:
            row = await pool.fetchrow("SELECT * FROM outbound_messages WHERE id = $1", sent.id)
            assert (row["to_aor"], row["from_uri"], bytes(row["body"])) == (
                BOB,
                "sip:alice@example.test",
                name.encode(),
            )
            assert row["source"] == STORE_ON_FAILURE_SOURCE  # stored by the relay if it fails
        else:
            stored = await offline_db.list_messages(pool, BOB)
            assert [m.body for m in stored] == [b"old", name.encode()], name  # behind, in order
    # A typing indicator is sent at once even behind stored messages, and never stored.
    await pool.execute("DELETE FROM offline_messages")
    await store(pool, b"old")
    typing = await send(pool, settings, to="bob", content_type="application/im-iscomposing+xml")
    assert typing.outcome is Outcome.QUEUED
    source = await pool.fetchval("SELECT source FROM outbound_messages WHERE id = $1", typing.id)
    assert source is None


async def test_each_outcome_wakes_its_service_with_the_same_notify(
    pool: asyncpg.Pool, settings: Settings, database_url: str, users: dict[str, str]
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await room_ops.create_room(conn, f"lobby@{CONF}", owner="alice@example.test", private=False)
    heard: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    channels = (QUEUED_CHANNEL, STORED_CHANNEL, SCHEDULED_CHANNEL, INBOX_CHANNEL)
    try:
        for channel in channels:
            await listener.add_listener(
                channel, lambda _c, _p, ch, payload: heard.put_nowait((ch, json.loads(payload)))
            )

        async def next_notify() -> tuple[str, dict[str, Any]]:
            return await asyncio.wait_for(heard.get(), 5)

        # Not registered: stored for msilo's next registration sweep, no wake-up needed.
        stored = await send(pool, settings, to="bob")
        assert stored.outcome is Outcome.STORED
        scheduled = await send(
            pool, settings, to="bob", deliver_at=datetime.now(UTC) + timedelta(hours=1)
        )
        assert scheduled.outcome is Outcome.SCHEDULED
        assert await next_notify() == (SCHEDULED_CHANNEL, {"type": "scheduled", "id": BOB})
        await register(pool, BOB)
        # Registered with a stored message due: stored behind it, and msilo is told.
        behind = await send(pool, settings, to="bob")
        assert behind.outcome is Outcome.STORED
        assert await next_notify() == (STORED_CHANNEL, {"type": "stored", "id": BOB})
        await pool.execute("DELETE FROM offline_messages")
        queued = await send(pool, settings, to="bob")
        assert queued.outcome is Outcome.QUEUED
        assert await next_notify() == (QUEUED_CHANNEL, {"type": "queued", "id": queued.id})
        room = await send(pool, settings, to=f"lobby@{CONF}")
        assert room.outcome is Outcome.ROOM
        assert await next_notify() == (INBOX_CHANNEL, {"type": "queued", "id": room.id})
        await asyncio.sleep(0.2)
        assert heard.empty()  # one NOTIFY per send, none for the first one
    finally:
        await listener.close()


@pytest.fixture
def quota_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"msilo_max_messages": 5})


@pytest.fixture
async def big_pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=12, max_size=12)
    yield pool
    await pool.close()


async def test_concurrent_sends_and_relay_stores_keep_the_quota_exact_and_the_order(
    big_pool: asyncpg.Pool, quota_settings: Settings, users: dict[str, str]
) -> None:
    # Twelve at once, from the API and the relay's store, for a mailbox of five: each
    # waits for the recipient's lock and counts what the one before committed.
    async def api(i: int) -> int | None:
        try:
            sent = await send(big_pool, quota_settings, to="bob", body=f"api-{i}".encode())
        except MailboxFull:
            return None
        return sent.id

    async def relay(i: int) -> int | None:
        if i % 2:  # the relay's one-round-trip store (no offline notice to queue with it)
            return await offline_db.store_message_once(
                big_pool,
                recipient=BOB,
                sender_uri="sip:carol@example.test",
                sender_display=None,
                call_id=f"relay-{i}",
                content_type="text/plain",
                body=f"relay-{i}".encode(),
                extra_headers=[],
                lifetime=3600,
                max_messages=quota_settings.msilo_max_messages,
            )
        async with big_pool.acquire() as conn, conn.transaction():
            return await offline_db.store_message(
                conn,
                recipient=BOB,
                sender_uri="sip:carol@example.test",
                sender_display=None,
                call_id=f"relay-{i}",
                content_type="text/plain",
                body=f"relay-{i}".encode(),
                extra_headers=[],
                lifetime=3600,
                max_messages=quota_settings.msilo_max_messages,
            )

    for _ in range(3):
        await big_pool.execute("DELETE FROM offline_messages")
        results = await asyncio.gather(*(api(i) if i % 3 else relay(i) for i in range(12)))
        accepted = [r for r in results if r is not None]
        assert len(accepted) == 5
        stored = await offline_db.list_messages(big_pool, BOB)
        assert sorted(accepted) == [m.id for m in stored]


async def test_the_http_answer_for_a_full_mailbox_under_concurrency(
    pool: asyncpg.Pool, quota_settings: Settings, users: dict[str, str]
) -> None:
    async with client_for(quota_settings, pool, token=await new_token(pool)) as client:
        responses = await asyncio.gather(
            *(
                client.post("/api/v1/messages", json={"to": "bob", "body": f"m{i}"})
                for i in range(10)
            )
        )
    codes = sorted(
        (r.status_code, r.json().get("code", r.json().get("outcome"))) for r in responses
    )
    assert codes == [(202, "stored")] * 5 + [(409, "mailbox_full")] * 5
    assert await offline_db.count_messages(pool, BOB) == 5


async def test_a_send_inside_a_transaction_is_undone_with_it(
    pool: asyncpg.Pool, settings: Settings, users: dict[str, str]
) -> None:
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        sent = await message_ops.send(
            conn,
            settings,
            to="bob",
            sender=None,
            sender_display=None,
            content_type="text/plain",
            body=b"never",
        )
        assert sent.outcome is Outcome.STORED
        assert await conn.fetchval("SELECT count(*) FROM offline_messages") == 1
        await transaction.rollback()
    assert await offline_db.count_messages(pool, BOB) == 0


async def test_the_answer_is_the_documented_json(
    pool: asyncpg.Pool, settings: Settings, users: dict[str, str]
) -> None:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        response = await client.post("/api/v1/messages", json={"to": "bob", "body": "x"})
        schema = (await client.get("/openapi.json")).json()
    assert response.status_code == 202
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {
        "outcome",
        "recipient",
        "sender",
        "outbound_id",
        "offline_id",
        "room_inbox_id",
    }
    assert (body["outcome"], body["recipient"], body["outbound_id"]) == ("stored", BOB, None)
    assert isinstance(body["offline_id"], int)
    documented = schema["paths"]["/api/v1/messages"]["post"]["responses"]["202"]
    assert documented["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/MessageSent"
    }


async def test_the_plan_reads_a_recipients_messages_through_its_index_whatever_the_skew(
    pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    # One recipient holds nearly every stored row (as after bench/api.py's send-stored):
    # statistics then make "recipient = $1" look like the whole table, and a generic plan
    # that scanned the table (or the primary key) for bob's drain check or quota count
    # would cost milliseconds per send. The statement is kept on the (recipient, id) index.
    await pool.execute(
        """INSERT INTO offline_messages (recipient, sender_uri, call_id, received_at,
               expires_at, content_type, body, extra_headers)
           SELECT 'alice@example.test', 'sip:carol@example.test', 'c' || n, now(),
                  now() + interval '1 hour', 'text/plain', 'x', '[]'
           FROM generate_series(1, 20000) AS n"""
    )
    await pool.execute("ANALYZE offline_messages")
    types = (
        "int, text, text, text, text, text, text, bytea, boolean, timestamptz, float8, int, "
        "text, text, text, text, text"
    )
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
        await conn.execute(f"PREPARE send_to_user ({types}) AS {message_ops._SEND_TO_USER}")
        plan = "\n".join(
            row[0]
            for row in await conn.fetch(
                """EXPLAIN EXECUTE send_to_user (1, 'bob', 'example.test', $1, 'sip:a@b',
                       NULL, 'text/plain', 'x', false, NULL, 60, 1000, 'c', NULL, 'q', 's',
                       'd')""".replace("$1", f"'{BOB}'")
            )
        )
        await conn.execute("DEALLOCATE send_to_user")
    assert "Seq Scan on offline_messages" not in plan, plan
    assert "offline_messages_pkey" not in plan, plan
    # the drain check (twice) and the quota count, each on the recipient's index
    assert plan.count(" offline_messages_recipient ") >= 3, plan
