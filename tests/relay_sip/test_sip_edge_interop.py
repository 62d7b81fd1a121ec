"""Interop with real clients: baresip (alice) and linphonec (bob) chat through
``imstack serve relay``, run as a user runs it (its own process, the real database)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from shared.config import Settings
from shared.db.locations import get_bindings
from tests.cli_helpers import imstack_env
from tests.relay_sip.conftest import PASSWORDS, SipServer, eventually, free_port
from tests.relay_sip.real_clients import Baresip, Linphonec, free_port_block, missing_clients
from tests.test_serve import start

pytestmark = pytest.mark.skipif(missing_clients() is not None, reason=missing_clients() or "")


@pytest.fixture
async def sip(
    settings: Settings,
    pool: asyncpg.Pool,
    database_url: str,
    users: dict[str, str],
    sip_settings: dict[str, object],
    tmp_path: Path,
) -> AsyncIterator[SipServer]:
    """``imstack serve relay`` in a process of its own (``sip_settings`` as its variables)."""
    port = free_port()
    configured = settings.model_copy(update={"sip_host": "127.0.0.1", "sip_port": port})
    env = imstack_env(
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_DATA_DIR=str(tmp_path / "relay"),
        IMSTACK_DOMAIN=configured.domain,
        IMSTACK_SIP_HOST="127.0.0.1",
        IMSTACK_SIP_PORT=str(port),
        IMSTACK_SIP_TLS_PORT=str(free_port()),
        IMSTACK_MSRP_HOST="127.0.0.1",
        IMSTACK_MSRP_PORT=str(free_port()),
        **{f"IMSTACK_{name.upper()}": str(value) for name, value in sip_settings.items()},
    )
    proc = start(env, "relay")
    try:
        async with asyncio.timeout(30):
            while True:  # listening once its TCP port takes a connection
                assert proc.poll() is None, proc.communicate()[0]
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                break
        yield SipServer(configured, pool)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
        print("imstack serve relay:", out, sep="\n")  # shown when a test fails
    assert proc.returncode == 0, out


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
