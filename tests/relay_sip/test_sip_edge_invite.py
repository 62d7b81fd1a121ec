"""INVITE through the edge: authenticated, forwarded, provisional responses relayed, CANCEL."""

from __future__ import annotations

from shared.sip.headers import make_response, parse_via
from shared.sip.message import Headers, SipRequest
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import ack_for


async def test_invite_is_forwarded_ringing_relayed_and_cancel_ends_it_with_487(
    sip: SipServer,
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    alice = await sip.ua("alice")
    invite = alice.build(
        "INVITE",
        "sip:bob@example.test",
        to="sip:bob@example.test",
        headers=[("Contact", f"<{alice.contact}>"), ("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    challenge = await alice.send(invite)
    assert challenge.status == 407
    alice.send_bytes(ack_for(invite, challenge.get("To") or "").to_bytes())

    authorized = alice.authorize(invite, challenge)
    branch = parse_via(authorized.get("Via") or "").branch or ""
    alice.send_bytes(authorized.to_bytes())
    trying = await alice.wait_response(branch, final=False)
    assert trying.status == 100
    received = await bob.next_request()
    assert received.method == "INVITE" and received.body == b"v=0\r\n"
    ringing = make_response(received, 180, to_tag="bobtag")
    bob.send_bytes(ringing.to_bytes())
    relayed = await alice.wait_response(branch, final=False)
    assert relayed.status == 180
    assert relayed.get("To", "").endswith("tag=bobtag")

    cancel_headers = Headers()
    cancel_headers.add("Via", authorized.get("Via") or "")
    for name in ("Max-Forwards", "From", "To", "Call-ID"):
        cancel_headers.add(name, authorized.get(name) or "")
    cancel_headers.add("CSeq", f"{(authorized.get('CSeq') or '').split()[0]} CANCEL")
    cancel = SipRequest(method="CANCEL", uri=authorized.uri, headers=cancel_headers)
    alice.send_bytes(cancel.to_bytes())

    # Bob sees the CANCEL of the relay's INVITE branch; he confirms it and ends the INVITE.
    bob_cancel = await bob.next_request()
    assert bob_cancel.method == "CANCEL"
    assert bob_cancel.get("Via") == received.get_all("Via")[0]
    bob.answer(bob_cancel, 200)
    bob.send_bytes(make_response(received, 487, to_tag="bobtag").to_bytes())
    ack = await bob.next_request()  # the relay's hop-by-hop ACK for the 487
    assert ack.method == "ACK"

    finals = {}
    while len(finals) < 2:
        response = await alice.wait_response(branch)
        finals[(response.get("CSeq") or "").split()[1]] = response.status
    assert finals == {"CANCEL": 200, "INVITE": 487}


async def test_invite_to_a_user_without_bindings_is_480(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    invite = alice.build("INVITE", "sip:carol@example.test", to="sip:carol@example.test")
    _, final = await alice.send_authenticated(invite)
    assert final.status == 480


async def test_a_2xx_is_relayed_and_the_ack_sent_through_the_relay_reaches_the_callee(
    sip: SipServer,
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    alice = await sip.ua("alice")
    invite = alice.build(
        "INVITE", "sip:bob@example.test", to="sip:bob@example.test", body=b"v=0\r\n"
    )
    challenge = await alice.send(invite)
    alice.send_bytes(ack_for(invite, challenge.get("To") or "").to_bytes())
    authorized = alice.authorize(invite, challenge)
    branch = parse_via(authorized.get("Via") or "").branch or ""
    alice.send_bytes(authorized.to_bytes())
    received = await bob.next_request()
    ok = make_response(received, 200, to_tag="bobtag", headers=[("Contact", f"<{bob.contact}>")])
    bob.send_bytes(ok.to_bytes())
    answered = await alice.wait_response(branch)
    assert answered.status == 200 and answered.get("Contact") == f"<{bob.contact}>"

    # The ACK for a 2xx is end to end (§13.2.2.4); a UA using us as outbound proxy routes it
    # through the relay, which sends it on to the callee's registered contact.
    ack = ack_for(authorized, answered.get("To") or "")
    ack.uri = bob.contact
    ack.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:{alice.local_port};branch=z9hG4bKack1;rport")
    ack.headers.add("Route", f"<sip:127.0.0.1:{sip.settings.sip_port};lr>")
    alice.send_bytes(ack.to_bytes())
    forwarded = await bob.next_request()
    assert forwarded.method == "ACK"
    assert forwarded.get("Route") is None
    assert forwarded.get("Call-ID") == authorized.get("Call-ID")
