"""Forking (RFC 3261 §16.6, §16.7): a request for a user with two bindings goes to both at
once; the first 2xx answers it; every 2xx to an INVITE reaches the caller, a callee's 2xx
sent again included; the branch that lost is cancelled, but never before it has answered
provisionally (§9.1)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import pytest

from shared.sip.headers import make_response, parse_via
from shared.sip.message import SipRequest, SipResponse
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA, ack_for

BOB = "sip:bob@example.test"


async def two_bindings(sip: SipServer) -> tuple[SipUA, SipUA]:
    phone, laptop = await sip.ua("bob"), await sip.ua("bob")
    for ua in (phone, laptop):
        assert (await ua.register()).status == 200
    return phone, laptop


async def send_authorized(alice: SipUA, request: SipRequest) -> str:
    """Send ``request`` with the credentials its challenge asks for; its branch."""
    challenge = await alice.send(request)
    assert challenge.status == 407
    if request.method == "INVITE":
        alice.send_bytes(ack_for(request, challenge.get("To") or "").to_bytes())
    authorized = alice.authorize(request, challenge)
    alice.send_bytes(authorized.to_bytes())
    return parse_via(authorized.get("Via") or "").branch or ""


async def invite_bob(alice: SipUA) -> str:
    invite = alice.build("INVITE", BOB, to=BOB, body=b"v=0\r\n")
    return await send_authorized(alice, invite)


@dataclass
class ForkedInvite:
    alice: SipUA
    branch: str  # alice's
    phone: SipUA
    laptop: SipUA
    to_phone: SipRequest  # the copies of the INVITE each device got
    to_laptop: SipRequest


async def forked_invite(sip: SipServer) -> ForkedInvite:
    """alice calls bob, registered from a phone and a laptop: both get the INVITE."""
    phone, laptop = await two_bindings(sip)
    alice = await sip.ua("alice")
    branch = await invite_bob(alice)
    to_phone, to_laptop = await phone.next_request(), await laptop.next_request()
    assert to_phone.method == to_laptop.method == "INVITE"
    return ForkedInvite(alice, branch, phone, laptop, to_phone, to_laptop)


def answer(ua: SipUA, request: SipRequest, status: int, tag: str) -> SipResponse:
    response = make_response(request, status, to_tag=tag, headers=[("Contact", f"<{ua.contact}>")])
    ua.send_bytes(response.to_bytes())
    return response


async def nothing_more(ua: SipUA, branch: str) -> None:
    await asyncio.sleep(0.3)
    assert ua.responses[branch].empty()


async def test_a_message_goes_to_both_bindings_and_a_2xx_wins_over_an_earlier_failure(
    sip: SipServer,
) -> None:
    phone, laptop = await two_bindings(sip)
    alice = await sip.ua("alice")
    body = "on my way ✓".encode()
    message = alice.build(
        "MESSAGE", BOB, to=BOB, headers=[("Content-Type", "text/plain")], body=body
    )
    branch = await send_authorized(alice, message)

    to_phone, to_laptop = await phone.next_request(), await laptop.next_request()
    assert to_phone.body == to_laptop.body == body
    assert (to_phone.uri, to_laptop.uri) == (phone.contact, laptop.contact)
    assert to_phone.get("Call-ID") == to_laptop.get("Call-ID")
    assert to_phone.get_all("Via")[0] != to_laptop.get_all("Via")[0]  # a branch each

    phone.answer(to_phone, 486)  # busy there: the laptop may still take it
    await asyncio.sleep(0.1)
    laptop.answer(to_laptop, 200)
    final = await alice.wait_response(branch)
    assert final.status == 200
    await nothing_more(alice, branch)


async def test_a_forked_invite_is_won_by_the_first_2xx_and_the_ringing_loser_is_cancelled(
    sip: SipServer,
) -> None:
    call = await forked_invite(sip)
    alice, branch, phone, laptop = call.alice, call.branch, call.phone, call.laptop
    to_phone, to_laptop = call.to_phone, call.to_laptop
    answer(phone, to_phone, 180, "phone")
    answer(laptop, to_laptop, 180, "laptop")
    tags = set()
    while len(tags) < 2:  # (the relay's own 100 Trying comes first, without a tag)
        response = await alice.wait_response(branch, final=False)
        if response.status == 180:
            tags.add((response.get("To") or "").rpartition("tag=")[2])
    assert tags == {"phone", "laptop"}

    answer(laptop, to_laptop, 200, "laptop")
    won = await alice.wait_response(branch)
    assert won.status == 200 and (won.get("To") or "").endswith("tag=laptop")

    cancel = await phone.next_request()
    assert cancel.method == "CANCEL"
    assert cancel.get("Via") == to_phone.get_all("Via")[0]
    phone.answer(cancel, 200)
    answer(phone, to_phone, 487, "phone")
    assert (await phone.next_request()).method == "ACK"  # the relay's, for the 487
    await nothing_more(alice, branch)  # the caller hears nothing of the loser


async def test_a_branch_that_has_not_answered_yet_is_cancelled_only_once_it_rings(
    sip: SipServer,
) -> None:
    call = await forked_invite(sip)
    answer(call.laptop, call.to_laptop, 200, "laptop")  # the phone has said nothing yet
    assert (await call.alice.wait_response(call.branch)).status == 200
    await asyncio.sleep(0.3)
    assert call.phone.requests.empty()  # a CANCEL now could overtake the INVITE (§9.1)

    answer(call.phone, call.to_phone, 180, "phone")
    cancel = await call.phone.next_request()
    assert cancel.method == "CANCEL"
    assert cancel.get("Via") == call.to_phone.get_all("Via")[0]


async def test_a_2xx_from_the_losing_branch_reaches_the_caller_too(sip: SipServer) -> None:
    call = await forked_invite(sip)
    answer(call.phone, call.to_phone, 180, "phone")
    answer(call.laptop, call.to_laptop, 180, "laptop")

    # Both pick up at once: the phone's 2xx is on its way before our CANCEL reaches it.
    answer(call.laptop, call.to_laptop, 200, "laptop")
    answer(call.phone, call.to_phone, 200, "phone")
    tags = set()
    for _ in range(2):
        response = await call.alice.wait_response(call.branch)
        assert response.status == 200
        tags.add((response.get("To") or "").rpartition("tag=")[2])
    assert tags == {"phone", "laptop"}  # two dialogs: the caller ACKs both, then ends one


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_2xx_the_callee_sends_again_reaches_the_caller_again(
    sip: SipServer, transport: str
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    alice = await sip.ua("alice", transport)
    branch = await invite_bob(alice)
    received = await bob.next_request()

    # §13.3.1.4: the callee sends its 2xx again until the ACK comes; our INVITE
    # transactions ended with the first, so the copies go on by their Via alone.
    ok = answer(bob, received, 200, "bob").to_bytes()
    first = await alice.wait_response(branch)
    bob.send_bytes(ok)
    again = await alice.wait_response(branch)
    assert first.status == again.status == 200
    assert again.get("To") == first.get("To") and again.get_all("Via") == first.get_all("Via")


async def test_a_stray_2xx_whose_top_via_is_not_ours_is_not_relayed(sip: SipServer) -> None:
    mallory, carol = await sip.ua("bob"), await sip.ua("carol")
    invite = mallory.build("INVITE", BOB, to=BOB)
    ok = make_response(invite, 200, to_tag="x")
    # Our relay is no stateless reflector: a 2xx naming someone else's Via on top and
    # carol below goes nowhere.
    ok.headers.set("Via", carol.via("z9hG4bKcarol"))
    ok.headers.prepend("Via", "SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-ims-forged")
    mallory.send_bytes(ok.to_bytes())
    await nothing_more(carol, "z9hG4bKcarol")


class TestTimerC:
    """§16.6 step 11: an INVITE branch that goes on ringing is CANCELled after
    IMSTACK_SIP_INVITE_TIMEOUT, which each provisional response starts again."""

    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_invite_timeout": 1.0}

    async def test_a_device_that_rings_too_long_is_cancelled_and_the_caller_gets_408(
        self, sip: SipServer
    ) -> None:
        bob = await sip.ua("bob")
        assert (await bob.register()).status == 200
        alice = await sip.ua("alice")
        branch = await invite_bob(alice)
        invite = await bob.next_request()
        for _ in range(3):  # ringing, then more ringing: each one starts Timer C again
            answer(bob, invite, 180, "bob")
            await asyncio.sleep(0.5)
        assert bob.requests.empty()

        cancel = await bob.next_request()  # a second after the last 180
        assert cancel.method == "CANCEL"
        assert cancel.get("Via") == invite.get_all("Via")[0]
        assert (await alice.wait_response(branch)).status == 408
        bob.answer(cancel, 200)
        answer(bob, invite, 487, "bob")
        assert (await bob.next_request()).method == "ACK"  # the relay's, for the 487
        await nothing_more(alice, branch)  # the 487 stays between the relay and bob
