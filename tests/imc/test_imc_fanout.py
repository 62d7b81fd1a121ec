"""Fan-out to a big room over real sockets: 50 registered members (scripted UAs over UDP),
every member but the sender gets each message exactly once, the sender gets no echo."""

from __future__ import annotations

import asyncio

import pytest

from services.imc.worker import ImcWorker
from shared.db import rooms
from shared.db.users import Address, create_user
from shared.sip.message import SipRequest
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA

MEMBERS = 50
ROOM = "big@conference.example.test"
ROOM_URI = f"sip:{ROOM}"


class Member:
    """A registered UA that tells new MESSAGEs from retransmissions of one it answered (a
    retransmission is the same delivery, answered again; a second copy is a new request)."""

    def __init__(self, ua: SipUA) -> None:
        self.ua = ua
        self.answered: set[tuple[str, str]] = set()

    async def next_message(self) -> str:
        while True:
            request: SipRequest = await self.ua.next_request()
            assert request.method == "MESSAGE"
            assert (request.get("From") or "").startswith(f"<{ROOM_URI}>;tag=")
            self.ua.answer(request, 200)
            transaction = (request.get("Call-ID") or "", request.get("CSeq") or "")
            if transaction not in self.answered:
                self.answered.add(transaction)
                return request.body.decode()


# Every UA sends from 127.0.0.1: the per-source rate limit would refuse the registrations.
@pytest.mark.parametrize("imc_overrides", [{"imc_history": 0, "sip_rate_limit": 0}])
async def test_fan_out_to_50_members_once_each_and_no_echo(sip: SipServer, imc: ImcWorker) -> None:
    users = [f"member{n:02d}" for n in range(MEMBERS)]
    room_id = await rooms.create_room(
        sip.pool, ROOM, owner=f"{users[0]}@example.test", private=False
    )
    for user in users:
        await create_user(sip.pool, Address(user, "example.test"), "x")
        if user != users[0]:
            await rooms.add_member(sip.pool, room_id, f"{user}@example.test", rooms.Role.MEMBER)
    members = []
    for user in users:
        ua = await sip.ua(user)
        assert (await ua.register()).status == 200
        members.append(Member(ua))
    sender, other = members[0], members[1]

    response = await sender.ua.message(ROOM_URI, b"hello fifty")
    assert response.status == 202
    firsts = await asyncio.gather(*(m.next_message() for m in members[1:]))
    assert firsts == ["[member00]: hello fifty"] * (MEMBERS - 1)

    # Each member's next new MESSAGE is the next room message: no second copy of the first,
    # and nothing came back to the sender.
    response = await other.ua.message(ROOM_URI, b"done")
    assert response.status == 202
    nexts = await asyncio.gather(*(m.next_message() for m in members if m is not other))
    assert nexts == ["[member01]: done"] * (MEMBERS - 1)
    assert imc.stats.fanned_out == 2 * (MEMBERS - 1)
    assert imc.stats.stored_offline == 0
