"""#topic, member limits, per-room history length and flood control end to end: scripted UAs,
the SIP edge, imc, the control API and the real database (the executor's texts and rules are
in test_imc_commands.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.imc.worker import ImcWorker
from shared.config import Settings
from shared.db import rooms
from tests.api.api_client import client_for, new_token
from tests.imc.conftest import StartImc
from tests.imc.test_imc_ban_history import DEVS_KEY, receive
from tests.imc.test_imc_rooms import expect, registered, send
from tests.relay_sip.conftest import SipServer

ROOMS = "/api/v1/rooms"
FULL_2 = "*** The room is full (2 members at most)"
TOO_FAST = (
    "*** You are sending messages too fast (one every 30 seconds at most): "
    "your message was not sent"
)


@pytest.fixture
async def api(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        yield client


async def topic_of(pool: asyncpg.Pool) -> str | None:
    room = await rooms.get_room(pool, DEVS_KEY)
    assert room is not None
    return room.topic


# -- #topic -------------------------------------------------------------------------------


async def test_topic_is_shown_set_by_owners_and_admins_and_given_to_newcomers(
    sip: SipServer, imc: ImcWorker
) -> None:
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "#add carol")
    await expect(alice, "*** [carol] has joined the room")
    await expect(carol, "*** [carol] has joined the room")

    await send(bob, "#topic")  # not a member: a public room's topic is public
    await expect(bob, "*** The room has no topic")
    await send(carol, "#topic Carol's rules")
    await expect(carol, "*** You don't have the permission to set the topic of this room")
    assert await topic_of(sip.pool) is None

    await send(alice, "#topic   Release 2.0 planning — Fridays 10:00  ")
    told = "*** [alice] changed the topic to: Release 2.0 planning — Fridays 10:00"
    await expect(alice, told)
    await expect(carol, told)
    assert await topic_of(sip.pool) == "Release 2.0 planning — Fridays 10:00"

    await send(bob, "#join")
    await expect(
        bob, "*** [bob] has joined the room\n*** Topic: Release 2.0 planning — Fridays 10:00"
    )
    await expect(alice, "*** [bob] has joined the room")
    await expect(carol, "*** [bob] has joined the room")
    await send(bob, "#topic")
    await expect(bob, "*** Topic: Release 2.0 planning — Fridays 10:00")

    # An admin may set it too; the room (bob included) is told.
    await send(alice, "#modify carol admin")
    for ua in (alice, bob, carol):
        await expect(ua, "*** sip:carol@example.test is now admin")
    await send(carol, "#topic Carol's rules")
    for ua in (alice, bob, carol):
        await expect(ua, "*** [carol] changed the topic to: Carol's rules")
    await send(bob, "#help")
    help_text = await bob.next_request()
    bob.answer(help_text, 200)
    assert b"#topic [<text>] - show or set the topic of the conference room\r\n" in help_text.body


async def test_a_topic_set_through_the_api_is_the_one_topic_shows(
    sip: SipServer, imc: ImcWorker, api: httpx.AsyncClient
) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    response = await api.post(ROOMS, json={"name": "devs", "owner": "alice", "topic": "From ops"})
    assert response.status_code == 201, response.text
    await send(bob, "#topic")
    await expect(bob, "*** Topic: From ops")

    response = await api.patch(f"{ROOMS}/devs", json={"topic": "Changed by ops"})
    assert response.status_code == 200, response.text
    await send(bob, "#join")
    await expect(bob, "*** [bob] has joined the room\n*** Topic: Changed by ops")
    await expect(alice, "*** [bob] has joined the room")

    # ... and one set by #topic is the one the API shows.
    await send(alice, "#topic Set by alice")
    await expect(alice, "*** [alice] changed the topic to: Set by alice")
    await expect(bob, "*** [alice] changed the topic to: Set by alice")
    assert (await api.get(f"{ROOMS}/devs")).json()["topic"] == "Set by alice"

    assert (await api.patch(f"{ROOMS}/devs", json={"topic": None})).status_code == 200
    await send(bob, "#topic")
    await expect(bob, "*** The room has no topic")


# -- member limit and history length -----------------------------------------------------


async def test_a_full_room_refuses_newcomers_until_its_limit_is_raised(
    sip: SipServer, imc: ImcWorker, api: httpx.AsyncClient
) -> None:
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    response = await api.post(
        ROOMS, json={"name": "devs", "owner": "alice", "member_limit": 2, "history_length": 1}
    )
    assert response.status_code == 201, response.text
    assert (response.json()["member_limit"], response.json()["history_length"]) == (2, 1)

    await send(alice, "#invite carol")  # invitations hold no seat
    await expect(carol, "*** [alice] invites you to join the room (send '#accept' or '#reject')")
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    await send(alice, "one")
    await send(alice, "two")
    assert sorted(await receive(bob, 2)) == ["[alice]: one", "[alice]: two"]

    await send(carol, "#accept")
    await expect(carol, f"{FULL_2}: your invitation stays open, try again later")
    await send(alice, "#add carol")
    await expect(alice, "*** sip:carol@example.test is already invited to the room")
    await send(carol, "#reject")
    await send(carol, "#join")
    await expect(carol, FULL_2)
    await send(alice, "#add carol")
    await expect(alice, f"{FULL_2}: sip:carol@example.test was not added")
    await send(bob, "#members")
    await expect(bob, "Members:\n*[alice]\n[bob]")

    # Back to the default (IMSTACK_IMC_MEMBER_LIMIT 0: none): carol gets in, with the one
    # message the room's history length keeps.
    response = await api.patch(f"{ROOMS}/devs", json={"member_limit": None})
    assert response.json()["member_limit"] is None
    await send(carol, "#join")
    assert sorted(await receive(carol, 2)) == ["*** [carol] has joined the room", "[alice]: two"]
    await expect(alice, "*** [carol] has joined the room")
    await expect(bob, "*** [carol] has joined the room")


@pytest.mark.parametrize("imc_overrides", [{"imc_member_limit": 2}])
async def test_the_default_member_limit_applies_to_rooms_made_by_create(
    sip: SipServer, imc: ImcWorker
) -> None:
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "#add bob")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    await send(bob, "#leave")  # a seat comes free when someone leaves
    await expect(alice, "*** [bob] has left the room")
    await expect(bob, "*** [bob] has left the room")
    await send(carol, "#join")
    await expect(alice, "*** [carol] has joined the room")
    await expect(carol, "*** [carol] has joined the room")
    await send(bob, "#join")
    await expect(bob, FULL_2)
    await send(alice, "#invite bob")
    await expect(alice, f"{FULL_2}: sip:bob@example.test was not invited")


async def test_room_options_in_the_api(
    api: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings
) -> None:
    response = await api.post(ROOMS, json={"name": "plain", "owner": "alice"})
    assert (response.json()["member_limit"], response.json()["history_length"]) == (None, None)
    response = await api.post(
        ROOMS, json={"name": "devs", "owner": "alice", "member_limit": 0, "history_length": 0}
    )
    assert response.status_code == 201, response.text
    room = (await api.get(f"{ROOMS}/devs")).json()
    assert (room["member_limit"], room["history_length"]) == (0, 0)

    response = await api.patch(f"{ROOMS}/devs", json={"member_limit": 50})
    assert (response.json()["member_limit"], response.json()["history_length"]) == (50, 0)
    response = await api.patch(f"{ROOMS}/devs", json={"history_length": None, "private": True})
    body = response.json()
    assert (body["member_limit"], body["history_length"], body["private"]) == (50, None, True)
    listed = (await api.get(ROOMS, params={"name": "devs"})).json()["data"]
    assert [(r["member_limit"], r["history_length"]) for r in listed] == [(50, None)]
    stored = await rooms.get_room(pool, DEVS_KEY)
    assert stored is not None and (stored.member_limit, stored.history_length) == (50, None)

    for field, value in [
        ("member_limit", -1),
        ("member_limit", 1_000_001),
        ("member_limit", "many"),
        ("member_limit", 2.5),
        ("history_length", -1),
        ("history_length", 1001),
    ]:
        for response in (
            await api.post(ROOMS, json={"name": "bad", "owner": "alice", field: value}),
            await api.patch(f"{ROOMS}/devs", json={field: value}),
        ):
            assert response.status_code == 422, (field, value, response.text)
            assert response.json()["code"]
    assert await pool.fetchval("SELECT count(*) FROM rooms WHERE name = 'bad'") == 0
    room = (await api.get(f"{ROOMS}/devs")).json()
    assert (room["member_limit"], room["history_length"]) == (50, None)

    # The database holds the same rules for whoever writes there directly.
    for column, value in [("member_limit", -1), ("history_length", 1001)]:
        with pytest.raises(asyncpg.CheckViolationError):
            await pool.execute(f"UPDATE rooms SET {column} = $1", value)


# -- flood control -----------------------------------------------------------------------


@pytest.mark.parametrize("imc_overrides", [{"imc_min_interval": 30.0}])
async def test_a_member_who_chats_too_fast_is_told_and_not_broadcast(
    sip: SipServer, start_imc: StartImc
) -> None:
    # Two imc workers: the limit is kept in the database, whichever handles the message.
    await start_imc()
    await start_imc()
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")

    await send(alice, "one")
    await expect(bob, "[alice]: one")
    await send(alice, "two")
    await expect(alice, TOO_FAST)
    await send(alice, "#members")  # commands are not chat
    await expect(alice, "Members:\n*[alice]\n[bob]")
    await send(bob, "bob's own pace")  # per member
    await expect(alice, "[bob]: bob's own pace")

    # 30 seconds later (alice's last message moved back rather than waiting): sent again.
    await sip.pool.execute(
        """UPDATE room_members SET last_chat_at = last_chat_at - interval '30 seconds'
           WHERE member = 'alice@example.test'"""
    )
    await send(alice, "three")
    await expect(bob, "[alice]: three")  # "two" never came
    await send(alice, "four")
    await expect(alice, TOO_FAST)
    room = await rooms.get_room(sip.pool, DEVS_KEY)
    assert room is not None
    assert [m.body for m in await rooms.history(sip.pool, room.id, 20)] == [
        b"one",
        b"bob's own pace",
        b"three",
    ]
