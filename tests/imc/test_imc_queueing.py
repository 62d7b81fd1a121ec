"""The database side of imc's fan-out path: taking a room MESSAGE off the inbox, the one
statement that queues a chat message's copies, collecting delivery outcomes, and a message
that fails to be handled being dropped alone (the next one still goes out)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.imc import worker as imc_worker
from services.imc.executor import Kind
from services.imc.worker import ImcWorker
from shared.config import Settings
from shared.db import rooms
from shared.db.listen import Listener, Notification
from shared.db.outbound import (
    QUEUED_CHANNEL,
    FanoutProgress,
    OutboundStatus,
    get_message,
    queue_message,
    record_fanout,
)

ROOM = "devs@conference.example.test"


async def bind(pool: asyncpg.Pool, aor: str, *, expired: bool = False) -> None:
    await pool.execute(
        """INSERT INTO locations (aor, contact, transport, source_host, source_port,
               relay_instance, call_id, cseq, expires_at)
           VALUES ($1, $2, 'udp', '127.0.0.1', 5070, 'test', 'reg', 1,
                   now() + CASE WHEN $3 THEN interval '-1 minute' ELSE interval '1 hour' END)""",
        aor,
        f"sip:{aor}",
        expired,
    )


async def enqueue(pool: asyncpg.Pool, sender: str, body: bytes, room: str = ROOM) -> int:
    return await rooms.enqueue(
        pool,
        room=room,
        sender=sender,
        sender_display=None,
        call_id="call",
        content_type="text/plain",
        body=body,
    )


async def test_enqueue_commits_the_row_and_wakes_imc_in_one_statement(
    pool: asyncpg.Pool, database_url: str
) -> None:
    woken: list[Notification] = []
    stop = asyncio.Event()
    listener = Listener(database_url, [rooms.INBOX_CHANNEL], woken.append)
    listening = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        queued = await enqueue(
            pool, "alice@example.test", b"hi", room="Devs@Conference.Example.Test"
        )
        for _ in range(100):
            if woken:
                break
            await asyncio.sleep(0.02)
        assert [(n.type, n.id) for n in woken] == [("queued", str(queued))]
        row = await pool.fetchrow("SELECT room, sender, body FROM room_inbox")
        assert (row["room"], row["sender"], bytes(row["body"])) == (
            ROOM,
            "alice@example.test",
            b"hi",
        )
    finally:
        stop.set()
        await listening


async def test_claim_takes_the_head_of_a_room_and_a_rollback_puts_it_back(
    pool: asyncpg.Pool,
) -> None:
    first = await enqueue(pool, "alice@example.test", b"one")
    second = await enqueue(pool, "alice@example.test", b"two")
    async with pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        taken = await rooms.claim_next(conn)
        assert taken is not None and taken.id == first and taken.body == b"one"
        # Held by this transaction: the room's next message waits behind it.
        async with pool.acquire() as other, other.transaction():
            assert await rooms.claim_next(other) is None
        await transaction.rollback()
    assert await rooms.inbox_count(pool) == 2
    async with pool.acquire() as conn, conn.transaction():
        taken = await rooms.claim_next(conn)
        assert taken is not None and taken.id == first
    async with pool.acquire() as conn, conn.transaction():
        taken = await rooms.claim_next(conn)
        assert taken is not None and taken.id == second
    assert await rooms.inbox_count(pool) == 0


async def test_claiming_chat_takes_its_room_lock_and_a_command_does_not(
    pool: asyncpg.Pool,
) -> None:
    await enqueue(pool, "alice@example.test", b"hello")
    await enqueue(pool, "alice@example.test", b"#members", room="ops@conference.example.test")

    async def room_is_locked(room: str) -> bool:
        async with pool.acquire() as other, other.transaction():
            free = await other.fetchval(
                "SELECT pg_try_advisory_xact_lock(hashtextextended($1, 6))", room
            )
            return not free

    for room, chat in ((ROOM, True), ("ops@conference.example.test", False)):
        async with pool.acquire() as conn:
            transaction = conn.transaction()
            await transaction.start()
            taken = await rooms.claim_next(conn, chat_lock=b"#")
            assert taken is not None and taken.room == room and taken.locked is chat
            # Another imc reading or changing the room waits until this one commits.
            assert await room_is_locked(room) is chat
            await transaction.commit()
        assert not await room_is_locked(room)


async def test_fan_out_queues_members_with_a_binding_in_order_and_wakes_the_relay_once(
    pool: asyncpg.Pool, database_url: str
) -> None:
    await bind(pool, "bob@example.test")
    await bind(pool, "dave@example.test")
    await bind(pool, "erin@example.test", expired=True)
    woken: list[Notification] = []
    stop = asyncio.Event()
    listener = Listener(database_url, [QUEUED_CHANNEL], woken.append)
    listening = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        async with pool.acquire() as conn, conn.transaction():
            offline = await rooms.queue_fanout(
                conn,
                from_uri=f"sip:{ROOM}",
                recipients=[
                    "dave@example.test",
                    "carol@example.test",
                    "bob@example.test",
                    "erin@example.test",
                ],
                body=b"[alice]: hi",
                content_type="text/plain",
                extra_headers=[("Supported", "kamailio/imc"), ("In-Reply-To", "call")],
                source="imc-chat",
            )
        assert offline == ["carol@example.test", "erin@example.test"]
        rows = await pool.fetch(
            """SELECT id, from_uri, to_aor, content_type, body, extra_headers, source, status,
                      recipients, recipients_done
               FROM outbound_messages ORDER BY id"""
        )
        # ONE row for the copies: the room on behalf of whom, the recipients in order.
        assert [(r["to_aor"], r["recipients"]) for r in rows] == [
            (ROOM, ["dave@example.test", "bob@example.test"])
        ]
        for row in rows:
            assert row["recipients_done"] == []
            assert row["from_uri"] == f"sip:{ROOM}"
            assert bytes(row["body"]) == b"[alice]: hi"
            assert row["content_type"] == "text/plain"
            assert row["source"] == "imc-chat" and row["status"] == "queued"
            assert row["extra_headers"] == (
                '[["Supported", "kamailio/imc"], ["In-Reply-To", "call"]]'
            )
        for _ in range(50):
            if woken:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # a second NOTIFY would be here by now
        assert [(n.type, n.id) for n in woken] == [("fanout", str(rows[0]["id"]))]

        # Nobody reachable: nothing queued, nobody woken.
        woken.clear()
        async with pool.acquire() as conn, conn.transaction():
            assert await rooms.queue_fanout(
                conn,
                from_uri=f"sip:{ROOM}",
                recipients=["carol@example.test"],
                body=b"x",
                content_type="text/plain",
                extra_headers=[],
                source="imc-chat",
            ) == ["carol@example.test"]
        await asyncio.sleep(0.2)
        assert woken == []
        assert await pool.fetchval("SELECT count(*) FROM outbound_messages") == 1
    finally:
        stop.set()
        await listening


@pytest.fixture
def imc_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"imc_history": 0, "imc_min_interval": 0.0})


async def _room_with_members(pool: asyncpg.Pool) -> None:
    room_id = await rooms.create_room(pool, ROOM, owner="alice@example.test", private=False)
    for user in ("bob", "carol"):
        await rooms.add_member(pool, room_id, f"{user}@example.test", rooms.Role.MEMBER)
    await bind(pool, "bob@example.test")  # carol has no binding: stored offline


async def test_chat_is_queued_for_the_online_and_stored_for_the_offline(
    pool: asyncpg.Pool, imc_settings: Settings, database_url: str
) -> None:
    await _room_with_members(pool)
    await enqueue(pool, "alice@example.test", b"hello")
    worker = ImcWorker(imc_settings, pool, database_url)
    assert await worker.handle_queued() == 1
    queued = await pool.fetch("SELECT recipients, body, source FROM outbound_messages")
    assert [(r["recipients"], bytes(r["body"]), r["source"]) for r in queued] == [
        (["bob@example.test"], b"[alice]: hello", Kind.CHAT.value)
    ]
    stored = await pool.fetch("SELECT recipient, body FROM offline_messages")
    assert [(r["recipient"], bytes(r["body"])) for r in stored] == [
        ("carol@example.test", b"[alice]: hello")
    ]
    assert worker.stats.fanned_out == 1 and worker.stats.stored_offline == 1
    assert await rooms.inbox_count(pool) == 0


async def test_a_finished_fan_out_row_is_collected_and_nothing_stored_twice(
    pool: asyncpg.Pool, imc_settings: Settings, database_url: str
) -> None:
    await _room_with_members(pool)
    await bind(pool, "carol@example.test")
    await enqueue(pool, "alice@example.test", b"hello")
    worker = ImcWorker(imc_settings, pool, database_url)
    assert await worker.handle_queued() == 1
    row_id = await pool.fetchval("SELECT id FROM outbound_messages")
    # The relay's outcomes, a batch at a time: bob took it; then carol's UA was gone (408),
    # the last copy: the row is finished (the relay stored carol's copy offline as it
    # recorded it, in the same transaction).
    await record_fanout(pool, [FanoutProgress(row_id, ["bob@example.test"], delivered=1)])
    assert await worker.handle_outcomes() == 0  # not finished yet: left alone
    await record_fanout(
        pool, [FanoutProgress(row_id, ["carol@example.test"], final=True, last_failure=408)]
    )
    row = await get_message(pool, row_id)
    assert row is not None
    assert row.recipients_done == ("bob@example.test", "carol@example.test")
    assert (row.status, row.last_status, row.last_reason) == (
        OutboundStatus.DELIVERED,
        200,
        "1 of 2 delivered",
    )
    assert row.finished_at is not None
    assert await worker.handle_outcomes() == 1
    assert await pool.fetchval("SELECT count(*) FROM outbound_messages") == 0
    assert await pool.fetchval("SELECT count(*) FROM offline_messages") == 0
    assert await worker.handle_outcomes() == 0


async def test_a_failed_single_chat_row_is_stored_offline(
    pool: asyncpg.Pool, imc_settings: Settings, database_url: str
) -> None:
    """A chat copy queued as a row of its own (as before fan-out rows, e.g. queued by an
    older imc before an upgrade) that failed as unreachable goes to the offline store."""
    await _room_with_members(pool)
    await queue_message(
        pool,
        from_uri=f"sip:{ROOM}",
        to_aor="carol@example.test",
        body=b"[alice]: hello",
        source=Kind.CHAT.value,
    )
    await pool.execute("UPDATE outbound_messages SET status = 'failed', last_status = 408")
    worker = ImcWorker(imc_settings, pool, database_url)
    assert await worker.handle_outcomes() == 1
    stored = await pool.fetch("SELECT recipient, sender_uri, body FROM offline_messages")
    assert [(r["recipient"], r["sender_uri"], bytes(r["body"])) for r in stored] == [
        ("carol@example.test", f"sip:{ROOM}", b"[alice]: hello")
    ]
    assert await worker.handle_outcomes() == 0


async def test_a_message_that_fails_is_dropped_alone(
    pool: asyncpg.Pool,
    imc_settings: Settings,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await _room_with_members(pool)
    execute = imc_worker.execute

    def failing(config, incoming, room, **kwargs):  # type: ignore[no-untyped-def]
        if incoming.body == b"boom":
            raise RuntimeError("a bug")
        return execute(config, incoming, room, **kwargs)

    monkeypatch.setattr(imc_worker, "execute", failing)
    await enqueue(pool, "alice@example.test", b"boom")
    await enqueue(pool, "alice@example.test", b"after")
    worker = ImcWorker(imc_settings, pool, database_url)
    assert await worker.handle_queued() == 2
    assert await rooms.inbox_count(pool) == 0
    bodies = await pool.fetch("SELECT body FROM outbound_messages ORDER BY id")
    assert [bytes(r["body"]) for r in bodies] == [b"[alice]: after"]


async def test_the_fan_out_statement_keeps_the_history_bounded(pool: asyncpg.Pool) -> None:
    room_id = await rooms.create_room(pool, ROOM, owner="alice@example.test", private=False)
    await bind(pool, "bob@example.test")
    for n, recipients in enumerate(
        (["bob@example.test"], ["carol@example.test"], [], ["bob@example.test"])
    ):
        async with pool.acquire() as conn, conn.transaction():
            await rooms.queue_fanout(
                conn,
                from_uri=f"sip:{ROOM}",
                recipients=recipients,
                body=f"[alice]: m{n}".encode(),
                content_type="text/plain",
                extra_headers=[],
                source="imc-chat",
                remember=rooms.Remembered(
                    room_id, "alice@example.test", "text/plain", f"m{n}".encode(), keep=2
                ),
            )
    # Kept whether anyone was online or not; the newest two.
    kept = await rooms.history(pool, room_id, 20)
    assert [(m.sender, m.body) for m in kept] == [
        ("alice@example.test", b"m2"),
        ("alice@example.test", b"m3"),
    ]
    queued = await pool.fetch("SELECT recipients, body FROM outbound_messages ORDER BY id")
    assert [(r["recipients"], bytes(r["body"])) for r in queued] == [
        (["bob@example.test"], b"[alice]: m0"),
        (["bob@example.test"], b"[alice]: m3"),
    ]
