"""#ban/#unban and room history end to end: scripted UAs, the SIP edge, imc and the real
database (the executor's texts and permissions are in test_imc_commands.py)."""

from __future__ import annotations

import asyncpg
import pytest

from services.imc.worker import ImcWorker
from shared.db import rooms
from shared.db.offline import GENERATED_HEADER
from tests.imc.test_imc_rooms import DEVS, expect, registered, send
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA

DEVS_KEY = "devs@conference.example.test"


async def receive(ua: SipUA, count: int) -> list[str]:
    """The bodies of the next ``count`` MESSAGEs ``ua`` receives (each answered 200)."""
    bodies = []
    for _ in range(count):
        request = await ua.next_request()
        assert request.method == "MESSAGE"
        assert (request.get("From") or "").startswith(f"<{DEVS}>;tag=")
        assert request.get(GENERATED_HEADER) == "room"
        ua.answer(request, 200)
        bodies.append(request.body.decode())
    return bodies


async def state_of(pool: asyncpg.Pool, member: str) -> str | None:
    state: str | None = await pool.fetchval(
        "SELECT state FROM room_members WHERE lower(member) = lower($1)", member
    )
    return state


async def test_a_banned_member_is_out_until_unbanned(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")

    await send(alice, "#ban bob")
    await expect(bob, "*** You have been banned from the room")
    await expect(alice, "*** [bob] has been banned from the room")
    assert await state_of(sip.pool, "bob@example.test") == "banned"

    await send(bob, "let me in")
    await expect(bob, "*** You are banned from this room")
    await send(bob, "#join")
    await expect(bob, "*** You are banned from this room")
    await send(alice, "#add bob")
    await expect(alice, "*** sip:bob@example.test is banned from the room")
    await send(alice, "#members")
    await expect(alice, "Members:\n*[alice]")
    # bob is out of the fan-out: the next thing he gets is the unban notice, not this.
    await send(alice, "bob is gone")

    await send(alice, "#unban bob")
    await expect(bob, "*** You are no longer banned from the room")
    await expect(alice, "*** [bob] is no longer banned from the room")
    assert await state_of(sip.pool, "bob@example.test") is None
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    # What was said while he was out comes with the history (default: on), once.
    assert sorted(await receive(bob, 2)) == [
        "*** [bob] has joined the room",
        "[alice]: bob is gone",
    ]
    await send(alice, "welcome back")
    await expect(bob, "[alice]: welcome back")


async def test_banning_someone_who_is_not_in_the_room_keeps_them_out(
    sip: SipServer, imc: ImcWorker
) -> None:
    alice, carol = await registered(sip, "alice", "carol")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "#ban carol")
    await expect(carol, "*** You have been banned from the room")
    await expect(alice, "*** [carol] has been banned from the room")
    await send(carol, "#join")
    await expect(carol, "*** You are banned from this room")
    await send(alice, "#invite carol")
    await expect(alice, "*** sip:carol@example.test is banned from the room")
    await send(carol, "#rooms")  # a public room is still listed
    await expect(carol, "Rooms:\n[devs]")


@pytest.mark.parametrize("imc_overrides", [{"imc_history": 3}])
async def test_a_member_who_joins_gets_the_last_messages(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "#add carol")
    await receive(alice, 1)
    await receive(carol, 1)
    for n in range(5):
        await send(alice if n % 2 == 0 else carol, f"message {n}")
    # Once carol has every message, every one of them is committed to the history.
    assert sorted(await receive(carol, 3)) == [f"[alice]: message {n}" for n in (0, 2, 4)]
    assert sorted(await receive(alice, 2)) == [f"[carol]: message {n}" for n in (1, 3)]
    room = await rooms.get_room(sip.pool, DEVS_KEY)
    assert room is not None
    kept = await rooms.history(sip.pool, room.id, 20)
    assert [(m.sender, m.body) for m in kept] == [
        ("alice@example.test", b"message 2"),
        ("carol@example.test", b"message 3"),
        ("alice@example.test", b"message 4"),
    ]

    await send(bob, "#join")
    # Queued in this order (the relay sends them in parallel: compared as a set).
    expected = [
        "*** [bob] has joined the room",
        "[alice]: message 2",
        "[carol]: message 3",
        "[alice]: message 4",
    ]
    assert sorted(await receive(bob, 4)) == sorted(expected)
    await receive(alice, 1)
    await receive(carol, 1)
    # Nothing more for bob: the next thing he gets is new chat.
    await send(alice, "hello bob")
    await expect(bob, "[alice]: hello bob")
    await expect(carol, "[alice]: hello bob")
    assert imc.stats.replayed == 3


@pytest.mark.parametrize("imc_overrides", [{"imc_history": 20}])
async def test_an_invited_user_gets_the_history_on_accepting(
    sip: SipServer, imc: ImcWorker
) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create private")
    await expect(alice, "*** Room was created")
    await send(alice, "before bob")  # nobody to fan out to, but kept
    await send(alice, "#invite bob")
    await expect(bob, "*** [alice] invites you to join the room (send '#accept' or '#reject')")
    await send(bob, "#accept")
    await expect(alice, "*** [bob] has joined the room")
    assert sorted(await receive(bob, 2)) == [
        "*** [bob] has joined the room",
        "[alice]: before bob",
    ]


@pytest.mark.parametrize("imc_overrides", [{"imc_history": 0}])
async def test_no_history_is_kept_when_it_is_off(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "unseen")
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    await send(alice, "seen")
    await expect(bob, "[alice]: seen")
    assert await sip.pool.fetchval("SELECT count(*) FROM room_messages") == 0


async def test_history_is_bounded_per_room_and_read_oldest_first(pool: asyncpg.Pool) -> None:
    devs = await rooms.create_room(pool, DEVS_KEY, owner="alice@example.test", private=False)
    ops = await rooms.create_room(
        pool, "ops@conference.example.test", owner="alice@example.test", private=False
    )
    for n in range(10):
        for room_id in (devs, ops):
            await rooms.remember(
                pool,
                room_id,
                sender="alice@example.test",
                content_type="text/plain",
                body=f"{room_id}-{n}".encode(),
                keep=4,
            )
    for room_id in (devs, ops):
        kept = await rooms.history(pool, room_id, 20)
        assert [m.body for m in kept] == [f"{room_id}-{n}".encode() for n in range(6, 10)]
        assert [m.body for m in await rooms.history(pool, room_id, 2)] == [
            f"{room_id}-{n}".encode() for n in (8, 9)
        ]
    await rooms.delete_room(pool, devs)
    assert await pool.fetchval("SELECT count(*) FROM room_messages") == 4
