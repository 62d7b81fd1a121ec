"""The real-client story: bob (linphonec) is offline, alice (baresip) sends three messages,
bob starts and receives all three, once, in order."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.msilo.worker import MsiloWorker
from shared.db.locations import get_bindings
from shared.db.offline import count_messages
from tests.relay_sip.conftest import PASSWORDS, SipServer, eventually
from tests.relay_sip.real_clients import Baresip, Linphonec, free_port_block, missing_clients

pytestmark = pytest.mark.skipif(missing_clients() is not None, reason=missing_clients() or "")


async def test_linphonec_gets_three_messages_baresip_sent_while_it_was_offline(
    sip: SipServer, msilo: MsiloWorker, tmp_path: Path
) -> None:
    domain = sip.settings.domain
    server = sip.settings.sip_port
    bob_aor = f"bob@{domain}"
    alice = Baresip(
        tmp_path / "alice", "alice", PASSWORDS["alice"], domain, server, free_port_block(), "udp"
    )
    alice.add_contact(f"sip:{bob_aor}")
    bob = Linphonec(
        tmp_path / "bob", "bob", PASSWORDS["bob"], domain, server, free_port_block(), "udp"
    )
    texts = ["first, while you were out", "second — ünïcödé", "third and last"]
    try:
        await alice.start()
        assert alice.output is not None
        await alice.output.wait_for("registered successfully")
        for n, text in enumerate(texts, start=1):
            await alice.command("message", text)

            async def stored(n: int = n) -> bool:
                return await count_messages(sip.pool, bob_aor) == n

            await eventually(stored, f"message {n} stored")

        await bob.start()
        assert bob.output is not None
        positions = []
        for text in texts:
            line = await bob.output.wait_for(f"] {text}")
            assert f"Message received from sip:alice@{domain}: [Offline message - " in line
            positions.append(bob.output.lines.index(line))
        assert positions == sorted(positions)

        async def drained() -> bool:
            return await count_messages(sip.pool, bob_aor) == 0 and bool(
                await get_bindings(sip.pool, bob_aor)
            )

        await eventually(drained, "all three delivered")
        received = [line for line in bob.output.lines if "Message received from" in line]
        assert len(received) == 3
    finally:
        print("baresip:", alice.output.text() if alice.output else None, sep="\n")
        print("linphonec:", bob.output.text() if bob.output else None, sep="\n")
        await alice.stop()
        await bob.stop()
