"""Rooms end to end over real sockets: scripted UAs, the SIP edge, imc (and msilo for the
members who are away), all through the real database."""

from __future__ import annotations

import re

import pytest

from services.imc.worker import ImcWorker
from services.msilo.worker import MsiloWorker
from shared.db import rooms
from shared.db.offline import GENERATED_HEADER, list_messages
from shared.sip.message import SipRequest
from tests.imc.conftest import StartImc
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

DEVS = "sip:devs@conference.example.test"
OFFLINE_PREFIX = re.compile(rb"^\[Offline message - [^\]]+\] ")


async def expect(ua: SipUA, body: str, *, status: int = 200) -> SipRequest:
    """The next MESSAGE ``ua`` receives: from the room, with ``body``; answered ``status``."""
    request = await ua.next_request()
    assert request.method == "MESSAGE"
    assert request.body.decode() == body
    assert (request.get("From") or "").startswith(f"<{DEVS}>;tag=")
    ua.answer(request, status)
    return request


async def send(ua: SipUA, body: str, to: str = DEVS, content_type: str = "text/plain") -> None:
    response = await ua.message(to, body.encode(), content_type)
    assert response.status == 202, response


async def registered(sip: SipServer, *users: str) -> list[SipUA]:
    uas = []
    for user in users:
        ua = await sip.ua(user)
        assert (await ua.register()).status == 200
        uas.append(ua)
    return uas


async def test_create_invite_accept_and_chat(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create devs")
    await expect(alice, "*** Room was created")

    await send(alice, "#invite bob")
    await expect(bob, "*** [alice] invites you to join the room (send '#accept' or '#reject')")
    await send(bob, "#accept")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")

    call_id = "chat-call-1"
    request = alice.build(
        "MESSAGE",
        DEVS,
        to=DEVS,
        headers=[("Content-Type", "text/plain;charset=UTF-8")],
        body=b"hi",
        call_id=call_id,
    )
    _, final = await alice.send_authenticated(request)
    assert final.status == 202
    received = await expect(bob, "[alice]: hi")
    assert received.get("Content-Type") == "text/plain;charset=UTF-8"
    assert received.get("Supported") == "kamailio/imc"
    assert received.get("In-Reply-To") == call_id
    assert received.get(GENERATED_HEADER) == "room"
    assert received.get("To") == "<sip:bob@example.test>"

    # No echo to alice: the next thing she gets is bob's answer.
    await send(bob, "hello alice")
    await expect(alice, "[bob]: hello alice")

    await send(bob, "#members")
    await expect(bob, "Members:\n*[alice]\n[bob]")
    await send(bob, "#rooms")
    await expect(bob, "Rooms:\n[devs]")
    await send(bob, "#leave")
    await expect(alice, "*** [bob] has left the room")
    await expect(bob, "*** [bob] has left the room")
    await send(alice, "#destroy")
    await expect(alice, "*** Room has been destroyed")
    assert await rooms.get_room(sip.pool, "devs@conference.example.test") is None
    assert await rooms.inbox_count(sip.pool) == 0


async def test_errors_come_back_as_notices_from_the_room(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(bob, "hello?")
    await expect(bob, "*** Room not found")
    await send(alice, "#join")
    await expect(alice, "*** Room was created")
    await send(bob, "hello?")
    await expect(bob, "*** You are not a member of this room: your message was not sent")
    await send(bob, "#destroy")
    await expect(bob, "*** You are not a member of this room")
    await send(bob, "#dance")
    await expect(bob, "*** Invalid command 'dance' (send '#help' for help)")


async def test_typing_and_delivery_notifications_are_not_broadcast(
    sip: SipServer, imc: ImcWorker
) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#join")
    await expect(alice, "*** Room was created")
    await send(bob, "#join")
    await expect(alice, "*** [bob] has joined the room")
    await expect(bob, "*** [bob] has joined the room")
    await send(alice, "<isComposing/>", content_type="application/im-iscomposing+xml")
    await send(alice, "<imdn/>", content_type="message/imdn+xml")
    await send(alice, "real text")
    await expect(bob, "[alice]: real text")


@pytest.mark.parametrize("imc_overrides", [{"msilo_notice_from": "sip:postmaster@example.test"}])
async def test_a_member_who_is_offline_gets_room_messages_from_the_offline_store(
    sip: SipServer, imc: ImcWorker, msilo: MsiloWorker
) -> None:
    (alice,) = await registered(sip, "alice")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(alice, "#add bob")
    await expect(alice, "*** [bob] has joined the room")  # bob is away: it is not kept
    await send(alice, "while you were out")

    async def stored() -> bool:
        return len(await list_messages(sip.pool, "bob@example.test")) == 1

    await eventually(stored, "the room message stored for bob")
    (bob,) = await registered(sip, "bob")
    request = await bob.next_request()
    assert (request.get("From") or "").startswith(f"<{DEVS}>;tag=")
    assert OFFLINE_PREFIX.sub(b"", request.body) == b"[alice]: while you were out"
    bob.answer(request, 200)

    # No "bob is offline" notice came back: not to alice, not into the room.
    await send(bob, "back")
    await expect(alice, "[bob]: back")
    notices = await sip.pool.fetchval(
        "SELECT count(*) FROM outbound_messages WHERE source = 'msilo-notice'"
    )
    assert notices == 0
    assert await rooms.inbox_count(sip.pool) == 0


async def test_a_failed_invitation_is_withdrawn_and_the_inviter_told(
    sip: SipServer, imc: ImcWorker
) -> None:
    (alice,) = await registered(sip, "alice")
    await send(alice, "#create private")
    await expect(alice, "*** Room was created")
    await send(alice, "#invite carol")  # carol is not registered
    await expect(alice, "carol@example.test is not registered.  ")
    room = await rooms.get_room(sip.pool, "devs@conference.example.test")
    assert room is not None and room.find("carol@example.test") is None


async def test_rooms_hides_private_rooms_from_outsiders(sip: SipServer, imc: ImcWorker) -> None:
    alice, bob = await registered(sip, "alice", "bob")
    await send(alice, "#create secret private")
    request = await alice.next_request()
    assert request.body == b"*** Room was created"
    alice.answer(request, 200)
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    await send(bob, "#rooms")
    await expect(bob, "Rooms:\n[devs]")
    await send(alice, "#rooms")
    await expect(alice, "Rooms:\n[devs]\n[secret]")


async def test_two_imc_workers_fan_out_each_message_once(
    sip: SipServer, start_imc: StartImc
) -> None:
    await start_imc()
    await start_imc()
    alice, bob, carol = await registered(sip, "alice", "bob", "carol")
    await send(alice, "#create")
    await expect(alice, "*** Room was created")
    for user, members in (("bob", [alice, bob]), ("carol", [alice, bob, carol])):
        await send(alice, f"#add {user}")
        for member in members:
            await expect(member, f"*** [{user}] has joined the room")
    texts = [f"message {n}" for n in range(20)]
    for body in texts:
        await send(alice, body)
    for ua in (bob, carol):
        received = []
        for _ in texts:
            request = await ua.next_request()
            ua.answer(request, 200)
            received.append(request.body.decode())
        assert sorted(received) == sorted(f"[alice]: {body}" for body in texts)
    # Nothing more: the next MESSAGE each gets is the one sent now, and alice got no echo.
    await send(carol, "done")
    await expect(alice, "[carol]: done")
    await expect(bob, "[carol]: done")
