"""Interop with real clients: baresip (alice) and linphonec (bob) chat through the edge."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from shared.db.locations import get_bindings
from tests.relay_sip.conftest import PASSWORDS, SipServer, eventually
from tests.relay_sip.real_clients import Baresip, Linphonec, free_port_block, missing_clients

pytestmark = pytest.mark.skipif(missing_clients() is not None, reason=missing_clients() or "")


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_baresip_and_linphonec_register_and_chat(
    sip: SipServer, tmp_path: Path, transport: str
) -> None:
    domain = sip.settings.domain
    server = sip.settings.sip_port
    alice = Baresip(
        tmp_path / "alice",
        "alice",
        PASSWORDS["alice"],
        domain,
        server,
        free_port_block(),
        transport,
    )
    alice.add_contact(f"sip:bob@{domain}")
    bob = Linphonec(
        tmp_path / "bob", "bob", PASSWORDS["bob"], domain, server, free_port_block(), transport
    )
    try:
        await alice.start()
        await bob.start()

        async def both_registered() -> bool:
            a = await get_bindings(sip.pool, f"alice@{domain}")
            b = await get_bindings(sip.pool, f"bob@{domain}")
            return bool(a) and bool(b)

        await eventually(both_registered, "both registered")
        [binding] = await get_bindings(sip.pool, f"bob@{domain}")
        assert binding.transport == transport

        text = "Grüße aus Köln ✓"
        await alice.command("message", text)
        assert bob.output is not None
        await bob.output.wait_for(f"Message received from sip:alice@{domain}: {text}")

        reply = "Привет, alice — ça va?"
        bob.type(f"chat sip:alice@{domain} {reply}")
        assert alice.output is not None
        line = await alice.output.wait_for(f': "{reply}"')
        assert f"bob@{domain}" in line
    finally:
        # Shown by pytest when the test fails.
        print("baresip:", alice.output.text() if alice.output else None, sep="\n")
        print("linphonec:", bob.output.text() if bob.output else None, sep="\n")
        await alice.stop()
        await bob.stop()


class TestWrongPassword:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"auth_block_seconds": 1.0}  # the default 60 s, shortened for the test

    async def test_baresip_with_a_wrong_password_is_refused_and_quit_deregisters(
        self, sip: SipServer, tmp_path: Path
    ) -> None:
        """baresip answers each 401 with its (wrong) credentials again: after
        IMSTACK_AUTH_MAX_FAILURES of them it gets 403 and stops. The right password from the
        same address gets in once the block is over."""
        domain = sip.settings.domain
        server = sip.settings.sip_port
        wrong = Baresip(
            tmp_path / "wrong", "alice", "guess", domain, server, free_port_block(), "udp"
        )
        right = Baresip(
            tmp_path / "right",
            "alice",
            PASSWORDS["alice"],
            domain,
            server,
            free_port_block(),
            "udp",
        )
        try:
            await wrong.start()
            assert wrong.output is not None
            await wrong.output.wait_for(f"reg: sip:alice@{domain}: 403 Too Many Failed Attempts")
            assert await get_bindings(sip.pool, f"alice@{domain}") == []
            await asyncio.sleep(1.1)
            await right.start()
            assert right.output is not None
            await right.output.wait_for("registered successfully")
            assert len(await get_bindings(sip.pool, f"alice@{domain}")) == 1
            await right.stop()  # a graceful quit de-registers

            async def deregistered() -> bool:
                return await get_bindings(sip.pool, f"alice@{domain}") == []

            await eventually(deregistered, "binding removed")
        finally:
            print("wrong:", wrong.output.text() if wrong.output else None, sep="\n")
            await wrong.stop()
            await right.stop()
