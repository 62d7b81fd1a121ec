"""Record-Route and loose routing: a whole call (INVITE, 200, ACK, BYE) through the relay.

The caller is not registered, so the callee's BYE can reach her only because the relay
recorded itself in the route set (RFC 3261 §16.6 step 4, §16.12) and the Route it finds
on the BYE is its own.
"""

from __future__ import annotations

import secrets

import pytest

from shared.sip.headers import make_response, parse_name_addr, parse_via
from shared.sip.message import Headers, SipRequest
from shared.sip.uri import parse_sip_uri
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA


def _in_dialog(
    ua: SipUA,
    method: str,
    uri: str,
    *,
    routes: list[str],
    local: str,
    remote: str,
    call_id: str,
    cseq: int,
) -> SipRequest:
    """A request inside a dialog (§12.2.1.1): remote target, route set, tags, CSeq."""
    headers = Headers()
    headers.add("Via", ua.via("z9hG4bK" + secrets.token_hex(8)))
    for route in routes:
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    headers.add("From", local)
    headers.add("To", remote)
    headers.add("Call-ID", call_id)
    headers.add("CSeq", f"{cseq} {method}")
    return SipRequest(method=method, uri=uri, headers=headers)


def _branch(request: SipRequest) -> str:
    return parse_via(request.get("Via") or "").branch or ""


async def _invite(alice: SipUA, to: str) -> SipRequest:
    """Alice's INVITE, past the proxy challenge (the 407 ACKed hop by hop)."""
    invite = alice.build(
        "INVITE",
        to,
        to=to,
        headers=[("Contact", f"<{alice.contact}>"), ("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    challenge = await alice.send(invite)
    assert challenge.status == 407
    ack = _in_dialog(
        alice,
        "ACK",
        invite.uri,
        routes=[],
        local=invite.get("From") or "",
        remote=challenge.get("To") or "",
        call_id=invite.get("Call-ID") or "",
        cseq=int((invite.get("CSeq") or "1").split()[0]),
    )
    ack.headers.set("Via", invite.get("Via") or "")
    alice.send_bytes(ack.to_bytes())
    authorized = alice.authorize(invite, challenge)
    alice.send_bytes(authorized.to_bytes())
    return authorized


@pytest.mark.parametrize(("alice_transport", "bob_transport"), [("udp", "udp"), ("udp", "tcp")])
async def test_a_call_is_record_routed_and_ack_and_bye_follow_the_route_set(
    sip: SipServer, alice_transport: str, bob_transport: str
) -> None:
    bob = await sip.ua("bob", bob_transport)
    assert (await bob.register()).status == 200
    alice = await sip.ua("alice", alice_transport)  # not registered: reachable via the route
    invite = await _invite(alice, "sip:bob@example.test")
    call_id = invite.get("Call-ID") or ""

    received = await bob.next_request()
    assert received.method == "INVITE"
    record_route = received.get_all("Record-Route")
    # One entry per transport the call uses (double Record-Route when they differ).
    assert len(record_route) == (1 if alice_transport == bob_transport else 2)
    for value in record_route:
        uri = parse_sip_uri(parse_name_addr(value).uri)
        assert uri.lr and uri.port == sip.settings.sip_port and uri.host == "127.0.0.1"
    top = parse_sip_uri(parse_name_addr(record_route[0]).uri)
    assert top.transport == (None if bob_transport == "udp" else bob_transport)

    # Bob answers; the 2xx carries the Record-Route back (§12.1.1).
    ok = make_response(
        received,
        200,
        to_tag="bobtag",
        headers=[("Contact", f"<{bob.contact}>"), *(("Record-Route", v) for v in record_route)],
    )
    bob.send_bytes(ok.to_bytes())
    answered = await alice.wait_response(_branch(invite))
    assert answered.status == 200
    assert answered.get_all("Record-Route") == record_route

    # Alice's ACK: remote target = Bob's Contact, route set = Record-Route reversed (§12.1.2).
    alice_routes = list(reversed(answered.get_all("Record-Route")))
    ack = _in_dialog(
        alice,
        "ACK",
        parse_name_addr(answered.get("Contact") or "").uri,
        routes=alice_routes,
        local=invite.get("From") or "",
        remote=answered.get("To") or "",
        call_id=call_id,
        cseq=int((invite.get("CSeq") or "").split()[0]),
    )
    alice.send_bytes(ack.to_bytes())
    bob_ack = await bob.next_request()
    assert bob_ack.method == "ACK" and bob_ack.uri == bob.contact
    assert bob_ack.get("Route") is None  # the relay removed its own entries (§16.4)
    assert bob_ack.get("Call-ID") == call_id

    # Bob hangs up: remote target = Alice's Contact, route set = Record-Route as received.
    bye = _in_dialog(
        bob,
        "BYE",
        alice.contact,
        routes=record_route,
        local=received.get("To", "") + ";tag=bobtag",
        remote=received.get("From") or "",
        call_id=call_id,
        cseq=1,
    )
    bob.send_bytes(bye.to_bytes())
    alice_bye = await alice.next_request()
    assert alice_bye.method == "BYE" and alice_bye.uri == alice.contact
    assert alice_bye.get("Route") is None
    assert alice_bye.get("Record-Route") is None  # in-dialog requests are not recorded again
    assert len(alice_bye.get_all("Via")) == 2
    alice.answer(alice_bye, 200)
    assert (await bob.wait_response(_branch(bye))).status == 200


async def test_a_message_outside_a_dialog_is_not_record_routed(sip: SipServer) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    alice = await sip.ua("alice")
    request = alice.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"hi")
    first = await alice.send(request)
    alice.send_bytes(alice.authorize(request, first).to_bytes())
    received = await bob.next_request()
    assert received.method == "MESSAGE" and received.get("Record-Route") is None
    bob.answer(received, 200)


@pytest.mark.parametrize("token", [None, "0123456789abcdef"])
async def test_an_in_dialog_request_without_our_token_is_not_relayed_to_strangers(
    sip: SipServer, token: str | None
) -> None:
    carol = await sip.ua("carol")
    route = f"sip:127.0.0.1:{sip.settings.sip_port}" + (f";dlg={token}" if token else "") + ";lr"
    bye = _in_dialog(
        carol,
        "BYE",
        "sip:victim@127.0.0.1:9",
        routes=[f"<{route}>"],
        local=f"<{carol.aor}>;tag=a",
        remote="<sip:victim@127.0.0.1>;tag=b",
        call_id=secrets.token_hex(8),
        cseq=1,
    )
    assert (await carol.send(bye)).status == 403


async def test_a_route_to_another_proxy_outside_a_dialog_is_refused(sip: SipServer) -> None:
    carol = await sip.ua("carol")
    request = carol.build(
        "OPTIONS", "sip:someone@elsewhere.test", headers=[("Route", "<sip:proxy.test;lr>")]
    )
    assert (await carol.send(request)).status == 403
