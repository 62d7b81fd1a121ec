"""Regression tests for the security review's gaps G1-G5 and G7 (docs/security.md), each
an attack over real sockets against the running SIP edge."""

from __future__ import annotations

import asyncio
import secrets

import pytest

from shared.db.offline import list_messages
from shared.digest import Credentials, compute_response, ha1, parse_challenge
from shared.sip.headers import make_response, parse_name_addr
from shared.sip.message import SipRequest, SipResponse
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA
from tests.relay_sip.test_sip_edge_dialog import _branch, _in_dialog

BOB = "sip:bob@example.test"


async def registered(sip: SipServer, user: str) -> SipUA:
    ua = await sip.ua(user)
    assert (await ua.register()).status == 200
    return ua


def message(ua: SipUA, uri: str, from_uri: str, body: bytes = b"hi") -> SipRequest:
    request = ua.build("MESSAGE", uri, to=BOB, headers=[("Content-Type", "text/plain")], body=body)
    request.headers.set("From", f"<{from_uri}>;tag={secrets.token_hex(4)}")
    return request


async def nothing_arrives(ua: SipUA, seconds: float = 0.5) -> None:
    await asyncio.sleep(seconds)
    assert ua.requests.empty(), ua.requests.get_nowait()


@pytest.mark.parametrize(
    "from_uri",
    [
        "sip:alice@127.0.0.1",  # the relay's own address
        "sip:alice@example.test.",  # trailing dot
        "sip:alice@EXAMPLE.Test",  # another case
        "sip:alice@conference.example.test",  # the room domain
    ],
)
async def test_g1_a_local_identity_in_any_spelling_must_authenticate(
    sip: SipServer, from_uri: str
) -> None:
    bob = await registered(sip, "bob")
    mallory = await sip.ua("alice", password="guessed-wrong")
    refused = await mallory.send(message(mallory, BOB, from_uri))
    assert refused.status == 407
    await nothing_arrives(bob)
    # Even with credentials, they must be those of the From user of our domain.
    _, final = await mallory.send_authenticated(message(mallory, BOB, from_uri))
    assert final.status == 407  # wrong password: challenged again
    await nothing_arrives(bob, 0.1)


async def test_g1_an_authenticated_sender_is_stored_under_its_canonical_address(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    _, final = await alice.send_authenticated(message(alice, BOB, "sip:alice@127.0.0.1"))
    assert final.status == 202
    (row,) = await list_messages(sip.pool, "bob@example.test")
    assert row.sender_uri == "sip:alice@example.test"


async def test_g1_senders_of_other_domains_still_need_no_password(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    foreign = await sip.ua("carol")
    sent = message(foreign, BOB, "sip:mallory@elsewhere.test")
    foreign.send_bytes(sent.to_bytes())
    received = await bob.next_request()
    assert received.get("From") == sent.get("From")
    bob.answer(received, 200)
    assert (await foreign.wait_response(_branch(sent))).status == 200


async def test_g2_a_local_sender_to_a_registered_contact_must_authenticate(
    sip: SipServer,
) -> None:
    bob = await registered(sip, "bob")
    mallory = await sip.ua("alice", password="guessed-wrong")
    refused = await mallory.send(message(mallory, bob.contact, "sip:alice@example.test"))
    assert refused.status == 407
    await nothing_arrives(bob)
    # The real alice gets through to the contact, asserted by the relay.
    alice = await sip.ua("alice")
    request = message(alice, bob.contact, "sip:alice@example.test")
    challenge = await alice.send(request)
    assert challenge.status == 407
    authorized = alice.authorize(request, challenge)
    alice.send_bytes(authorized.to_bytes())
    received = await bob.next_request()
    assert received.uri == bob.contact
    assert received.get("P-Asserted-Identity") == "<sip:alice@example.test>"
    bob.answer(received, 200)
    assert (await alice.wait_response(_branch(authorized))).status == 200


async def _foreign_call(sip: SipServer, caller: SipUA, bob: SipUA) -> tuple[SipRequest, list[str]]:
    """An INVITE from a foreign caller without credentials; bob answers 200 with the
    Record-Route, which the caller learns (token included)."""
    invite = caller.build(
        "INVITE",
        BOB,
        to=BOB,
        headers=[("Contact", f"<{caller.contact}>"), ("Content-Type", "application/sdp")],
        body=b"v=0\r\n",
    )
    invite.headers.set("From", f"<sip:ceo@bank.example>;tag={secrets.token_hex(4)}")
    caller.send_bytes(invite.to_bytes())
    received = await bob.next_request()
    assert received.method == "INVITE"
    record_route = received.get_all("Record-Route")
    ok = make_response(
        received,
        200,
        to_tag="bobtag",
        headers=[("Contact", f"<{bob.contact}>"), *(("Record-Route", v) for v in record_route)],
    )
    bob.send_bytes(ok.to_bytes())
    answered = await caller.wait_response(_branch(invite))
    assert answered.status == 200
    return invite, answered.get_all("Record-Route")


async def test_g3_a_dialog_token_forwards_nothing_to_a_third_address(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    caller = await sip.ua("carol")  # anyone, speaking for a foreign domain
    victim = await sip.ua("dave")  # a UDP socket nobody in the dialog is
    invite, record_route = await _foreign_call(sip, caller, bob)
    # The caller reuses the token: same Call-ID, a To-tag, a Request-URI of its choosing.
    abuse = _in_dialog(
        caller,
        "MESSAGE",
        f"sip:anyone@127.0.0.1:{victim.local_port}",
        routes=list(reversed(record_route)),
        local=invite.get("From") or "",
        remote=f"<{BOB}>;tag=bobtag",
        call_id=invite.get("Call-ID") or "",
        cseq=2,
    )
    abuse.body = b"transfer the money"
    assert (await caller.send(abuse)).status == 403
    await nothing_arrives(victim)
    # Nor can bob, the other party, send it to somebody else.
    bye = _in_dialog(
        bob,
        "BYE",
        f"sip:anyone@127.0.0.1:{victim.local_port}",
        routes=record_route,
        local=f"<{BOB}>;tag=bobtag",
        remote=invite.get("From") or "",
        call_id=invite.get("Call-ID") or "",
        cseq=1,
    )
    assert (await bob.send(bye)).status == 403
    await nothing_arrives(victim, 0.1)
    # A forged token of the right shape does not work either.
    route = parse_name_addr(record_route[0]).uri.replace("dlg=", "dlg=0", 1)[:-3] + ";lr"
    forged = _in_dialog(
        caller,
        "MESSAGE",
        f"sip:anyone@127.0.0.1:{victim.local_port}",
        routes=[f"<{route}>"],
        local=invite.get("From") or "",
        remote=f"<{BOB}>;tag=bobtag",
        call_id=invite.get("Call-ID") or "",
        cseq=3,
    )
    assert (await caller.send(forged)).status == 403
    # The dialog itself still works: bob hangs up through the relay, the caller gets it.
    hangup = _in_dialog(
        bob,
        "BYE",
        caller.contact,
        routes=record_route,
        local=f"<{BOB}>;tag=bobtag",
        remote=invite.get("From") or "",
        call_id=invite.get("Call-ID") or "",
        cseq=2,
    )
    bob.send_bytes(hangup.to_bytes())
    got = await caller.next_request()
    assert got.method == "BYE" and got.uri == caller.contact
    caller.answer(got, 200)
    assert (await bob.wait_response(_branch(hangup))).status == 200


async def test_g4_identity_headers_of_an_unauthenticated_sender_are_removed(
    sip: SipServer,
) -> None:
    bob = await registered(sip, "bob")
    foreign = await sip.ua("carol")
    sent = message(foreign, BOB, "sip:mallory@elsewhere.test")
    sent.headers.add("P-Asserted-Identity", "<sip:alice@example.test>")
    sent.headers.add("P-Preferred-Identity", "<sip:alice@example.test>")
    foreign.send_bytes(sent.to_bytes())
    received = await bob.next_request()
    assert received.get("P-Asserted-Identity") is None
    assert received.get("P-Preferred-Identity") is None
    bob.answer(received, 200)
    # Stored for an offline user: not kept either.
    to_dave = message(foreign, "sip:carol@example.test", "sip:mallory@elsewhere.test")
    to_dave.headers.set("To", "<sip:carol@example.test>")
    to_dave.headers.add("P-Asserted-Identity", "<sip:alice@example.test>")
    assert (await foreign.send(to_dave)).status == 202
    (row,) = await list_messages(sip.pool, "carol@example.test")
    names = {name.lower() for name, _ in row.extra_headers}
    assert "p-asserted-identity" not in names


async def test_g4_an_authenticated_sender_gets_its_own_asserted_identity(sip: SipServer) -> None:
    bob = await registered(sip, "bob")
    alice = await sip.ua("alice")
    request = message(alice, BOB, "sip:alice@example.test")
    request.headers.add("P-Asserted-Identity", "<sip:carol@example.test>")
    challenge = await alice.send(request)
    alice.send_bytes(alice.authorize(request, challenge).to_bytes())
    received = await bob.next_request()
    assert received.get_all("P-Asserted-Identity") == ["<sip:alice@example.test>"]
    bob.answer(received, 200)


async def test_g5_the_default_quota_stops_a_foreign_sender_filling_a_mailbox(
    sip: SipServer,
) -> None:
    """IMSTACK_MSILO_MAX_MESSAGES is 1000 unless configured otherwise."""
    await sip.pool.execute(
        """INSERT INTO offline_messages (recipient, sender_uri, call_id, received_at,
               expires_at, content_type, body, extra_headers)
           SELECT 'bob@example.test', 'sip:mallory@elsewhere.test', 'c' || n, now(),
                  now() + interval '1 day', 'text/plain', 'spam'::bytea, '[]'::jsonb
           FROM generate_series(1, 999) AS n"""
    )
    foreign = await sip.ua("carol")
    last = await foreign.send(message(foreign, BOB, "sip:mallory@elsewhere.test", b"1000th"))
    assert last.status == 202
    refused = await foreign.send(message(foreign, BOB, "sip:mallory@elsewhere.test", b"more"))
    assert (refused.status, refused.reason) == (480, "Mailbox Full")
    assert len(await list_messages(sip.pool, "bob@example.test")) == 1000


def credentials(
    ua: SipUA, request: SipRequest, challenge: SipResponse, *, uri: str, qop: str | None
) -> str:
    """A Proxy-Authorization for ``challenge`` computed over ``uri`` (with or without qop)."""
    parsed = parse_challenge(challenge.get("Proxy-Authenticate") or "")
    nc, cnonce = ("00000001", secrets.token_hex(4)) if qop else (None, None)
    digest = compute_response(
        parsed.algorithm,
        ha1(parsed.algorithm, ua.user, parsed.realm, ua.password),
        request.method,
        uri,
        parsed.nonce,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    )
    return Credentials(
        username=ua.user,
        realm=parsed.realm,
        nonce=parsed.nonce,
        uri=uri,
        response=digest,
        algorithm=parsed.algorithm,
        qop=qop,
        nc=nc,
        cnonce=cnonce,
    ).to_header()


async def test_g7_credentials_for_another_uri_are_refused_with_400(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    request = message(alice, BOB, "sip:alice@example.test")
    challenge = await alice.send(request)
    assert challenge.status == 407
    moved = message(alice, BOB, "sip:alice@example.test")
    moved.headers.add(
        "Proxy-Authorization",
        credentials(alice, moved, challenge, uri="sip:carol@example.test", qop="auth"),
    )
    refused = await alice.send(moved)
    assert (refused.status, refused.reason) == (400, "Digest URI Does Not Match Request-URI")
    assert await list_messages(sip.pool, "bob@example.test") == []


async def test_g7_credentials_without_qop_are_good_for_one_request(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    challenge = await alice.send(message(alice, BOB, "sip:alice@example.test"))
    first = message(alice, BOB, "sip:alice@example.test", b"mine")
    header = credentials(alice, first, challenge, uri=BOB, qop=None)
    first.headers.add("Proxy-Authorization", header)
    assert (await alice.send(first)).status == 202
    # Replayed (same source address, within the nonce's lifetime) with another body.
    replay = message(alice, BOB, "sip:alice@example.test", b"forged")
    replay.headers.add("Proxy-Authorization", header)
    assert (await alice.send(replay)).status == 407
    assert [m.body for m in await list_messages(sip.pool, "bob@example.test")] == [b"mine"]
