"""The user story on the compose topology: an operator creates users and a room through the
API; alice (baresip) and bob (linphonec) chat directly, bob gets what was sent while he was
offline once and in order, both chat in the room; two MSRP clients move 5 MB through the relay.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from shared.msrp import parse_uri
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_sip.real_clients import Baresip, Linphonec, free_port_block, missing_clients
from tests.stack.load import api
from tests.stack.topology import Stack

PASSWORDS = {"alice": "alice-secret-1", "bob": "bob-secret-1", "carol": "carol-secret-1"}
ROOM = "lobby"


async def registered(stack: Stack, user: str, want: bool = True) -> None:
    """Wait until the API lists a registration for ``user`` (or none, ``want=False``)."""
    async with api(stack) as client, asyncio.timeout(20):
        while True:
            answer = await client.get(f"/users/{user}@{stack.domain}/registrations")
            assert answer.status_code == 200, answer.text
            if (answer.json()["count"] > 0) == want:
                return
            await asyncio.sleep(0.1)


async def create_everything(stack: Stack) -> None:
    async with api(stack) as client:
        for user, password in PASSWORDS.items():
            made = await client.post(
                "/users",
                json={"username": user, "password": password, "display_name": user.title()},
            )
            assert made.status_code == 201, made.text
        room = await client.post("/rooms", json={"name": ROOM, "owner": "alice"})
        assert room.status_code == 201, room.text
        member = await client.post(f"/rooms/{ROOM}/members", json={"user": "bob"})
        assert member.status_code == 201, member.text


@pytest.mark.skipif(missing_clients() is not None, reason=missing_clients() or "")
async def test_alice_and_bob_chat_directly_offline_and_in_a_room(
    stack: Stack, tmp_path: Path
) -> None:
    await create_everything(stack)
    domain, server = stack.domain, stack.sip[1]
    room_uri = f"sip:{ROOM}@{stack.conference_domain}"
    alice = Baresip(
        tmp_path / "alice", "alice", PASSWORDS["alice"], domain, server, free_port_block(), "udp"
    )
    alice.add_contact(f"sip:bob@{domain}")
    alice.add_contact(room_uri)
    bob_port = free_port_block()

    def new_bob() -> Linphonec:
        return Linphonec(tmp_path / "bob", "bob", PASSWORDS["bob"], domain, server, bob_port, "udp")

    bob = new_bob()
    try:
        await alice.start()
        await bob.start()
        await registered(stack, "alice")
        await registered(stack, "bob")
        assert alice.output is not None and bob.output is not None

        # Direct chat, both ways.
        await alice.command("message", "hello bob")
        await bob.output.wait_for(f"Message received from sip:alice@{domain}: hello bob")
        bob.type(f"chat sip:alice@{domain} hello alice")
        line = await alice.output.wait_for(': "hello alice"')
        assert f"bob@{domain}" in line

        # bob goes offline (a clean quit de-registers); alice's three messages are stored.
        await bob.stop()
        await registered(stack, "bob", want=False)
        offline = ["first while away", "second while away", "third while away"]
        for text in offline:  # one at a time: each answered 202 before the next
            seen = len(alice.output.lines)
            await alice.command("message", text)
            await alice.output.wait_for("SIP/2.0 202 Accepted", start=seen)
        async with api(stack) as client:
            count = await client.get(f"/users/bob@{domain}/messages/count")
            assert count.json()["count"] == 3, count.text

        # bob comes back: each stored message arrives once, in order.
        bob = new_bob()
        await bob.start()
        assert bob.output is not None
        await bob.output.wait_for(offline[-1])
        await asyncio.sleep(1)  # a duplicate would follow at once
        got = [ln for ln in bob.output.lines if "while away" in ln]
        assert len(got) == 3, got
        for line, text in zip(got, offline, strict=True):
            assert text in line
            assert f"sip:alice@{domain}" in line
        async with api(stack) as client:
            count = await client.get(f"/users/bob@{domain}/messages/count")
            assert count.json()["count"] == 0, count.text

        # Both chat in the room (alice selects the room as her current contact).
        await alice.command("contact_next")
        await alice.command("message", "hi room")
        await bob.output.wait_for("[alice]: hi room")
        bob.type(f"chat {room_uri} hi from bob")
        await alice.output.wait_for("[bob]: hi from bob")
        assert any(f"From: <{room_uri}>" in line for line in alice.output.lines)
    finally:
        print("baresip:", alice.output.text() if alice.output else None, sep="\n")
        print("linphonec:", bob.output.text() if bob.output else None, sep="\n")
        await alice.stop()
        await bob.stop()


async def test_msrp_session_carries_5_mb_through_the_relay(stack: Stack) -> None:
    async with api(stack) as client:
        for user in ("dora", "ed"):
            made = await client.post(
                "/users", json={"username": user, "password": f"{user}-secret-1"}
            )
            assert made.status_code == 201, made.text
    host, port = stack.msrp
    relay = parse_uri(f"msrp://{host}:{port};tcp")
    dora = await MsrpTestClient.connect(host, port, name="dora")
    ed = await MsrpTestClient.connect(host, port, name="ed")
    try:
        assert (await dora.auth(relay, "dora", "dora-secret-1")).head.status == 200  # type: ignore[union-attr]
        assert (await ed.auth(relay, "ed", "ed-secret-1")).head.status == 200  # type: ignore[union-attr]
        payload = os.urandom(5 * 1024 * 1024)
        to_path = (*dora.use_path, *ed.use_path, ed.uri)
        answer = await dora.send_text(to_path, payload)
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        body = bytearray()
        async with asyncio.timeout(60):
            while len(body) < len(payload):
                chunk = await ed.next_request(timeout=30)
                assert chunk.head.method == "SEND"  # type: ignore[union-attr]
                body += chunk.body
        assert bytes(body) == payload
    finally:
        await dora.close()
        await ed.close()
