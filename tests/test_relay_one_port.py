"""SIP and MSRP on one port (IMSTACK_MSRP_PORT = IMSTACK_SIP_PORT), as Kamailio allows."""

from __future__ import annotations

import asyncio

import asyncpg

from services.relay.service import run as run_relay
from shared.config import Settings
from shared.db.users import Address, create_user
from shared.lifecycle import ServiceContext
from shared.msrp import parse_uri
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_sip.sip_ua import SipUA
from tests.test_serve import free_port


async def test_sip_and_msrp_share_the_sip_port(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    await create_user(pool, Address("alice", settings.domain), "alice-pw")
    await create_user(pool, Address("bob", settings.domain), "bob-pw")
    port = free_port()
    shared = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": free_port(),
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
                alice = await MsrpTestClient.connect("127.0.0.1", port, name="a")
                break
            except OSError:
                await asyncio.sleep(0.05)
        # MSRP on the SIP port: AUTH and a SEND between two clients.
        answer = await alice.auth(parse_uri(f"msrp://127.0.0.1:{port};tcp"), "alice", "alice-pw")
        assert answer.head.status == 200  # type: ignore[union-attr]
        assert alice.use_path[0].port == port
        bob = await MsrpTestClient.connect("127.0.0.1", port, name="b")
        await bob.auth(parse_uri(f"msrp://127.0.0.1:{port};tcp"), "bob", "bob-pw")
        sent = await alice.send_text((*alice.use_path, *bob.use_path, bob.uri), b"one port")
        assert sent is not None and sent.head.status == 200  # type: ignore[union-attr]
        assert bytes((await bob.next_request()).body) == b"one port"
        # SIP over TCP on the same port, at the same time.
        ua = await SipUA("tcp", ("127.0.0.1", port), "alice", "alice-pw", shared.domain).start()
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
