"""A room with real clients: alice (baresip) creates it, bob (linphonec) joins, they chat,
bob lists the members and leaves, alice destroys it (../shared/reference/sip-clients.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.imc.worker import ImcWorker
from shared.db import rooms
from shared.db.locations import get_bindings
from tests.relay_sip.conftest import PASSWORDS, SipServer, eventually
from tests.relay_sip.real_clients import (
    Baresip,
    Linphonec,
    OutputWatcher,
    free_port_block,
    missing_clients,
)

pytestmark = pytest.mark.skipif(missing_clients() is not None, reason=missing_clients() or "")


async def shows(output: OutputWatcher | None, text: str) -> int:
    """Wait until the client printed a line containing ``text``; the index after it."""
    assert output is not None
    line = await output.wait_for(text)
    return output.lines.index(line) + 1


async def test_baresip_and_linphonec_in_a_room(
    sip: SipServer, imc: ImcWorker, tmp_path: Path
) -> None:
    domain = sip.settings.domain
    room = f"sip:devs@{sip.settings.conference_domain}"
    server = sip.settings.sip_port
    alice = Baresip(
        tmp_path / "alice", "alice", PASSWORDS["alice"], domain, server, free_port_block(), "udp"
    )
    alice.add_contact(room)  # baresip messages its current contact: the room
    bob = Linphonec(
        tmp_path / "bob", "bob", PASSWORDS["bob"], domain, server, free_port_block(), "udp"
    )
    from_room = f"Message received from {room}: "  # how linphonec shows a MESSAGE
    try:
        await alice.start()
        await bob.start()

        async def both_registered() -> bool:
            a = await get_bindings(sip.pool, f"alice@{domain}")
            b = await get_bindings(sip.pool, f"bob@{domain}")
            return bool(a) and bool(b)

        await eventually(both_registered, "both registered")

        await alice.command("message", "#create")
        await shows(alice.output, '"*** Room was created"')
        bob.type(f"chat {room} #join")
        await shows(bob.output, f"{from_room}*** [bob] has joined the room")
        await shows(alice.output, '"*** [bob] has joined the room"')

        await alice.command("message", "Hallo aus baresip ✓")
        await shows(bob.output, f"{from_room}[alice]: Hallo aus baresip ✓")
        bob.type(f"chat {room} Salut de linphone")
        line = await alice.output.wait_for('"[bob]: Salut de linphone"') if alice.output else ""
        assert room in line

        bob.type(f"chat {room} #members")
        after = await shows(bob.output, f"{from_room}Members:")
        assert bob.output is not None
        await bob.output.wait_for("[bob]", after)
        assert bob.output.lines[after : after + 2] == ["*[alice]", "[bob]"]

        bob.type(f"chat {room} #leave")
        await shows(bob.output, f"{from_room}*** [bob] has left the room")
        await shows(alice.output, '"*** [bob] has left the room"')
        await alice.command("message", "#destroy")
        await shows(alice.output, '"*** Room has been destroyed"')
        assert await rooms.get_room(sip.pool, f"devs@{sip.settings.conference_domain}") is None
        # bob had left: nothing about the destruction reached him.
        assert not any("destroyed" in line for line in bob.output.lines)
        # Each text reached its reader once: no echo, no IMDN turned into chat.
        assert alice.output is not None
        # (baresip's stdout also has the SIP trace: count what it displays, the quoted body.)
        assert sum('"[bob]: Salut de linphone"' in line for line in alice.output.lines) == 1
        assert sum(f"{from_room}[alice]: Hallo" in line for line in bob.output.lines) == 1
    finally:
        # Shown by pytest when the test fails.
        print("baresip:", alice.output.text() if alice.output else None, sep="\n")
        print("linphonec:", bob.output.text() if bob.output else None, sep="\n")
        await alice.stop()
        await bob.stop()
