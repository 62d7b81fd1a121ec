from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import asyncpg
import pytest

from shared.db.listen import Listener, Notification, notify, parse_payload


class Recorder:
    def __init__(self) -> None:
        self.seen: list[Notification] = []
        self.catch_ups = 0
        self.changed = asyncio.Event()

    def on_notify(self, n: Notification) -> None:
        self.seen.append(n)
        self.changed.set()

    async def catch_up(self) -> None:
        self.catch_ups += 1
        self.changed.set()

    async def wait_for(self, predicate: Callable[[], object]) -> None:
        async with asyncio.timeout(10):
            while not predicate():
                self.changed.clear()
                await self.changed.wait()


@pytest.fixture
async def listening(database_url: str) -> AsyncIterator[tuple[Listener, Recorder]]:
    rec = Recorder()
    listener = Listener(
        database_url,
        ["registered", "other"],
        rec.on_notify,
        catch_up=rec.catch_up,
        health_interval=0.5,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(listener.run(stop))
    await asyncio.wait_for(listener.connected.wait(), 10)
    yield listener, rec
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_notifications_arrive_with_type_and_id(
    listening: tuple[Listener, Recorder], pool: asyncpg.Pool
) -> None:
    _, rec = listening
    async with pool.acquire() as conn:
        await notify(conn, "registered", "registered", "alice@example.test")
        await notify(conn, "unrelated", "x", 1)
        await notify(conn, "other", "room", 7)
    await rec.wait_for(lambda: len(rec.seen) >= 2)
    assert [(n.channel, n.type, n.id) for n in rec.seen] == [
        ("registered", "registered", "alice@example.test"),
        ("other", "room", "7"),
    ]
    assert rec.catch_ups == 1


async def test_notify_inside_a_rolled_back_transaction_is_never_delivered(
    listening: tuple[Listener, Recorder], pool: asyncpg.Pool
) -> None:
    _, rec = listening
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await notify(conn, "registered", "registered", "ghost")
        await tx.rollback()
        await notify(conn, "registered", "registered", "real")
    await rec.wait_for(lambda: rec.seen)
    await asyncio.sleep(0.2)
    assert [n.id for n in rec.seen] == ["real"]


async def test_listener_reconnects_after_pg_terminate_backend_and_catches_up(
    listening: tuple[Listener, Recorder], pool: asyncpg.Pool
) -> None:
    listener, rec = listening
    async with pool.acquire() as conn:
        killed = await conn.fetchval(
            """SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND query LIKE 'LISTEN%'"""
        )
        assert killed == 1
        # Sent while the listener is down: lost as a NOTIFY, so the catch-up must cover it.
        await notify(conn, "registered", "registered", "while-down")
    await rec.wait_for(lambda: listener.connections_made == 2 and rec.catch_ups == 2)
    async with pool.acquire() as conn:
        await notify(conn, "registered", "registered", "after")
    await rec.wait_for(lambda: any(n.id == "after" for n in rec.seen))


def test_payloads_that_are_not_json_objects_are_kept_raw() -> None:
    assert parse_payload("c", "hello") == Notification("c", "", None, "hello")
    assert parse_payload("c", "[1]").type == ""
    assert parse_payload("c", '{"type": "t", "id": 5}') == Notification(
        "c", "t", "5", '{"type": "t", "id": 5}'
    )
