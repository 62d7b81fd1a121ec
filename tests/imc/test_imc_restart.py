"""imc stopped and started again against the same database: rooms, members, roles, topic and
history are still there, and a MESSAGE the relay accepted while imc was down is fanned out
once when it is back."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import pytest

from services.imc.worker import ImcWorker
from shared.config import Settings
from shared.db import rooms
from tests.imc.test_imc_ban_history import DEVS_KEY, receive
from tests.imc.test_imc_rooms import expect, registered, send
from tests.relay_sip.conftest import SipServer
from tests.workers import wait_started


@asynccontextmanager
async def running_imc(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[ImcWorker]:
    """One imc worker of its own, stopped (as ``imstack serve imc`` is on SIGTERM) on exit."""
    stop = asyncio.Event()
    worker = ImcWorker(settings, pool, database_url)
    task = asyncio.create_task(worker.run(stop))
    try:
        await wait_started(task, worker.listener.connected, "imc LISTEN connection")
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_rooms_survive_a_restart_and_what_came_meanwhile_is_sent_once(
    sip: SipServer, settings: Settings, database_url: str
) -> None:
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    async with running_imc(settings, sip.pool, database_url) as first:
        await send(alice, "#create")
        await expect(alice, "*** Room was created")
        await send(alice, "#topic Plans for the week")
        await expect(alice, "*** [alice] changed the topic to: Plans for the week")
        await send(bob, "#join")
        await expect(alice, "*** [bob] has joined the room")
        await expect(bob, "*** [bob] has joined the room\n*** Topic: Plans for the week")
        await send(alice, "#modify bob admin")
        await expect(alice, "*** sip:bob@example.test is now admin")
        await expect(bob, "*** sip:bob@example.test is now admin")
        await send(alice, "before the restart")
        await expect(bob, "[alice]: before the restart")
    assert first.stats.handled == 5

    # imc is down: the relay still takes room traffic (202 once queued).
    await send(alice, "while imc was down")
    assert await rooms.inbox_count(sip.pool) == 1

    async with running_imc(settings, sip.pool, database_url) as second:
        # Picked up at start (no NOTIFY was missed on purpose: imc was not listening).
        await expect(bob, "[alice]: while imc was down")
        await send(bob, "#members")
        await expect(bob, "Members:\n*[alice]\n~[bob]")
        await send(bob, "#topic")
        await expect(bob, "*** Topic: Plans for the week")
        await send(carol, "#join")
        assert sorted(await receive(carol, 3)) == [
            "*** [carol] has joined the room\n*** Topic: Plans for the week",
            "[alice]: before the restart",
            "[alice]: while imc was down",
        ]
        await expect(alice, "*** [carol] has joined the room")
        await expect(bob, "*** [carol] has joined the room")
        # Once: the next thing bob and carol get is new chat, no second copy.
        await send(alice, "after the restart")
        await expect(bob, "[alice]: after the restart")
        await expect(carol, "[alice]: after the restart")
    assert second.stats.handled == 5
    assert await rooms.inbox_count(sip.pool) == 0
    room = await rooms.get_room(sip.pool, DEVS_KEY)
    assert room is not None and room.topic == "Plans for the week"


@pytest.mark.parametrize("imc_overrides", [{"imc_min_interval": 1.0}])
async def test_a_backlog_after_an_outage_is_not_taken_for_a_flood(
    sip: SipServer, settings: Settings, database_url: str
) -> None:
    """Flood control times messages by when the relay took them, not when imc gets to them:
    messages sent at a decent pace while imc was down all go out when it is back."""
    alice, bob = await registered(sip, "alice", "bob")
    async with running_imc(settings, sip.pool, database_url):
        await send(alice, "#create")
        await expect(alice, "*** Room was created")
        await send(bob, "#join")
        await expect(alice, "*** [bob] has joined the room")
        await expect(bob, "*** [bob] has joined the room")
    for n in range(3):
        if n:
            await asyncio.sleep(1.1)
        await send(alice, f"paced {n}")
    assert await rooms.inbox_count(sip.pool) == 3
    async with running_imc(settings, sip.pool, database_url):
        assert sorted(await receive(bob, 3)) == [f"[alice]: paced {n}" for n in range(3)]
        await send(bob, "all there")
        await expect(alice, "[bob]: all there")  # and no "too fast" notice came before it
