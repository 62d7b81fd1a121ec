"""SIP and MSRP on one port (IMSTACK_MSRP_PORT = IMSTACK_SIP_PORT), as Kamailio allows."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import asyncpg
import pytest

from services.relay.service import run as run_relay
from services.relay.tls import write_selfsigned
from shared.config import Settings
from shared.db.users import Address, create_user
from shared.lifecycle import ServiceContext
from shared.msrp import parse_uri
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_sip.sip_ua import SipUA
from tests.test_serve import free_port


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_sip_and_msrp_share_the_sip_port(
    settings: Settings, pool: asyncpg.Pool, database_url: str, tmp_path: Path, transport: str
) -> None:
    await create_user(pool, Address("alice", settings.domain), "alice-pw")
    await create_user(pool, Address("bob", settings.domain), "bob-pw")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_selfsigned(cert, key, ["127.0.0.1"])
    tls = ssl.create_default_context(cafile=str(cert)) if transport == "tls" else None
    sip_port, sip_tls_port = free_port(), free_port()
    port = sip_tls_port if tls else sip_port  # MSRP on IMSTACK_SIP_TLS_PORT: msrps
    scheme = "msrps" if tls else "msrp"
    shared = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": sip_port,
            "sip_tls_port": sip_tls_port,
            "tls_cert": cert,
            "tls_key": key,
            "msrp_host": "127.0.0.1",
            "msrp_port": port,
            "msrp_public_host": "127.0.0.1",
            "msrp_allow_insecure_auth": True,
        }
    )
    stop = asyncio.Event()
    relay = asyncio.create_task(run_relay(ServiceContext(shared, database_url, pool, stop)))
    try:
        for _ in range(100):
            try:
                alice = await MsrpTestClient.connect("127.0.0.1", port, name="a", tls=tls)
                break
            except OSError:
                await asyncio.sleep(0.05)
        # MSRP on the SIP port: AUTH and a SEND between two clients.
        relay_uri = parse_uri(f"{scheme}://127.0.0.1:{port};tcp")
        answer = await alice.auth(relay_uri, "alice", "alice-pw")
        assert answer.head.status == 200  # type: ignore[union-attr]
        assert (alice.use_path[0].scheme, alice.use_path[0].port) == (scheme, port)
        bob = await MsrpTestClient.connect("127.0.0.1", port, name="b", tls=tls)
        await bob.auth(relay_uri, "bob", "bob-pw")
        sent = await alice.send_text((*alice.use_path, *bob.use_path, bob.uri), b"one port")
        assert sent is not None and sent.head.status == 200  # type: ignore[union-attr]
        assert bytes((await bob.next_request()).body) == b"one port"
        # SIP over TCP (TLS) on the same port, at the same time.
        ua = SipUA(
            transport, ("127.0.0.1", port), "alice", "alice-pw", shared.domain, ssl_context=tls
        )
        await ua.start()
        options = await ua.send(ua.build("OPTIONS", f"sip:127.0.0.1:{port}"))
        assert options.status == 200
        registered = await ua.register()
        assert registered.status == 200
        await ua.close()
        await alice.close()
        await bob.close()
    finally:
        stop.set()
        await asyncio.wait_for(relay, 30)
