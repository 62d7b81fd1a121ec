"""MESSAGE, OPTIONS and the router's refusals, between scripted UAs over real sockets."""

from __future__ import annotations

import asyncio

import pytest

from shared.sip.headers import make_response, parse_via
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA

TEXT = "Grüße, Bob! 👋 — über UDP & TCP".encode()


async def registered(sip: SipServer, user: str, transport: str = "udp") -> SipUA:
    ua = await sip.ua(user, transport)
    response = await ua.register()
    assert response.status == 200, response
    return ua


@pytest.mark.parametrize(("alice_transport", "bob_transport"), [("udp", "udp"), ("tcp", "tcp")])
async def test_message_is_challenged_then_delivered_byte_exact(
    sip: SipServer, alice_transport: str, bob_transport: str
) -> None:
    bob = await registered(sip, "bob", bob_transport)
    alice = await sip.ua("alice", alice_transport)
    request = alice.build(
        "MESSAGE",
        "sip:bob@example.test",
        to="sip:bob@example.test",
        headers=[("Content-Type", "text/plain;charset=UTF-8")],
        body=TEXT,
    )
    first = await alice.send(request)
    assert first.status == 407
    assert 'realm="example.test"' in (first.get("Proxy-Authenticate") or "")
    assert bob.requests.empty()

    authorized = alice.authorize(request, first)
    branch = authorized.get("Via") or ""
    alice.send_bytes(authorized.to_bytes())
    received = await bob.next_request()
    assert received.method == "MESSAGE"
    assert received.body == TEXT
    assert received.get("From") == authorized.get("From")
    assert received.get("To") == authorized.get("To")
    assert received.get("Call-ID") == authorized.get("Call-ID")
    assert received.uri == bob.contact
    assert received.get("Proxy-Authorization") is None
    assert int(received.get("Max-Forwards") or 0) == 69
    assert len(received.get_all("Via")) == 2
    bob.answer(received, 200)
    final = await alice.wait_response(parse_via(branch).branch or "")
    assert final.status == 200


async def test_a_retransmitted_udp_message_reaches_the_callee_once(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    alice = await sip.ua("alice")
    request = alice.build(
        "MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"once"
    )
    first = await alice.send(request)
    authorized = alice.authorize(request, first)
    data = authorized.to_bytes()
    alice.send_bytes(data)
    alice.send_bytes(data)  # a retransmission: absorbed by the server transaction
    received = await bob.next_request()
    bob.answer(received, 200)
    branch = parse_via(authorized.get("Via") or "").branch or ""
    assert (await alice.wait_response(branch)).status == 200
    alice.send_bytes(data)  # after the answer: the 200 is sent again, bob sees nothing
    assert (await alice.wait_response(branch)).status == 200
    assert bob.requests.empty()
    assert sum(b"MESSAGE sip:" in raw for raw in bob.raw_received) == 1
    finals = [raw for raw in alice.raw_received if raw.startswith(b"SIP/2.0 200")]
    assert len(finals) == 2 and finals[0] == finals[1]  # the same response, byte for byte


async def test_a_retransmitted_final_response_is_relayed_once(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    alice = await sip.ua("alice")
    sending = asyncio.create_task(alice.message("sip:bob@example.test", b"hi"))
    received = await bob.next_request()
    answer = make_response(received, 200, to_tag="bob-1").to_bytes()
    bob.send_bytes(answer)
    assert (await sending).status == 200
    bob.send_bytes(answer)  # bob's 200 again (a UDP retransmission): nothing more for alice
    done = asyncio.create_task(alice.message("sip:bob@example.test", b"next"))
    second = await bob.next_request()
    bob.answer(second, 200)
    assert (await done).status == 200
    oks = [raw for raw in alice.raw_received if raw.startswith(b"SIP/2.0 200")]
    assert len(oks) == 2  # one per MESSAGE


async def test_a_failure_from_the_callee_is_relayed_back(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    alice = await sip.ua("alice")
    sending = asyncio.create_task(alice.message("sip:bob@example.test", b"hi"))
    received = await bob.next_request()
    bob.answer(received, 486)
    assert (await sending).status == 486


async def test_message_to_a_user_that_does_not_exist_is_404(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.message("sip:nobody@example.test", b"hi")).status == 404


async def test_message_to_a_user_who_is_not_registered_goes_to_the_offline_store(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    # Stored for carol (tests/msilo cover the rest): 202 once the row is committed.
    assert (await alice.message("sip:carol@example.test", b"later")).status == 202
    stored = await sip.pool.fetchval(
        "SELECT body FROM offline_messages WHERE recipient = 'carol@example.test'"
    )
    assert stored == b"later"


async def test_message_that_every_binding_turns_away_as_unreachable_is_stored(
    sip: SipServer,
) -> None:
    phone, laptop = await registered(sip, "bob"), await registered(sip, "bob")
    alice = await sip.ua("alice")
    sending = asyncio.create_task(alice.message("sip:bob@example.test", b"when you can"))
    phone.answer(await phone.next_request(), 480)  # temporarily unavailable
    laptop.answer(await laptop.next_request(), 503)  # service unavailable
    assert (await sending).status == 202
    stored = await sip.pool.fetchval(
        "SELECT body FROM offline_messages WHERE recipient = 'bob@example.test'"
    )
    assert stored == b"when you can"


async def test_message_for_a_foreign_domain_is_refused(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    to = "sip:someone@elsewhere.example"
    response = await alice.send(alice.build("MESSAGE", to, to=to, body=b"relay me"))
    assert response.status == 403


async def test_message_to_a_room_goes_to_the_room_hand_over(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    # Queued for imc (a committed room_inbox row), then 202 Accepted.
    assert (await alice.message("sip:devs@conference.example.test", b"#list")).status == 202
    assert await sip.pool.fetchval("SELECT count(*) FROM room_inbox") == 1


async def test_sender_must_match_the_credentials(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    request = alice.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x")
    request.headers.set("From", "<sip:bob@example.test>;tag=spoof")
    _, final = await alice.send_authenticated(request)
    assert final.status == 403


async def test_options_to_the_server_is_answered_200(sip: SipServer) -> None:
    ua = await sip.ua("alice")
    response = await ua.send(ua.build("OPTIONS", f"sip:127.0.0.1:{sip.settings.sip_port}"))
    assert response.status == 200
    assert "MESSAGE" in response.get_all("Allow")


async def test_max_forwards_zero_is_483(sip: SipServer) -> None:
    await registered(sip, "bob")
    ua = await sip.ua("alice")
    request = ua.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x")
    request.headers.set("Max-Forwards", "0")
    assert (await ua.send(request)).status == 483


async def test_a_request_that_already_passed_this_relay_is_a_loop(sip: SipServer) -> None:
    ua = await sip.ua("alice")
    request = ua.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x")
    request.headers.add(
        "Via", f"SIP/2.0/UDP 127.0.0.1:{sip.settings.sip_port};branch=z9hG4bK-ims-0123abcd"
    )
    assert (await ua.send(request)).status == 482


async def test_a_malformed_request_is_answered_400_and_the_server_keeps_working(
    sip: SipServer,
) -> None:
    ua = await sip.ua("alice")
    request = ua.build("OPTIONS", "sip:example.test")
    branch = "z9hG4bKmalformed1"
    request.headers.set("Via", f"SIP/2.0/UDP 127.0.0.1:{ua.local_port};branch={branch};rport")
    request.headers.set("CSeq", "1 INVITE")  # CSeq method differs from the request method
    ua.send_bytes(request.to_bytes())
    assert (await ua.wait_response(branch)).status == 400
    ua.send_bytes(b"\x00\xffgarbage that is not SIP\r\n\r\n")
    ok = await ua.send(ua.build("OPTIONS", "sip:example.test"))
    assert ok.status == 200


async def test_a_malformed_request_on_tcp_is_answered_and_the_connection_closed(
    sip: SipServer,
) -> None:
    ua = await sip.ua("alice", "tcp")
    request = ua.build("OPTIONS", "sip:example.test")
    branch = "z9hG4bKmalformed2"
    request.headers.set("Via", f"SIP/2.0/TCP 127.0.0.1:{ua.local_port};branch={branch}")
    request.headers.remove("Max-Forwards")
    ua.send_bytes(request.to_bytes())
    assert (await ua.wait_response(branch)).status == 400
