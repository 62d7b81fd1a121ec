"""An AUTHed client cannot make the relay connect wherever it likes (security review G6)."""

from __future__ import annotations

import asyncio

import asyncpg

from shared.config import Settings
from shared.msrp import parse_uri
from tests.relay_msrp.conftest import RunningRelay, running_relay


async def _listener() -> tuple[asyncio.Server, list[bytes], asyncio.Event]:
    """A TCP service on loopback that records every connection's first bytes."""
    received: list[bytes] = []
    arrived = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            received.append(await asyncio.wait_for(reader.read(4096), 2))
        except TimeoutError:
            received.append(b"")
        arrived.set()
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    return server, received, arrived


async def test_a_next_hop_that_is_no_peer_relay_gets_403_and_no_connection(
    msrp_relay: RunningRelay,
) -> None:
    server, received, arrived = await _listener()
    port = server.sockets[0].getsockname()[1]
    try:
        alice = await msrp_relay.authed("alice")
        target = parse_uri(f"msrp://127.0.0.1:{port}/internal;tcp")
        answer = await alice.send_text((*alice.use_path, target), b"SET key value\r\n")
        assert answer is not None
        assert (answer.head.status, answer.head.comment) == (  # type: ignore[union-attr]
            403,
            "Next hop is not a peer relay",
        )
        await asyncio.sleep(0.3)
        assert (
            received == [] and not arrived.is_set()
        )  # the relay opened no connection to the internal service
        assert msrp_relay.relay.outbound == {}
    finally:
        server.close()


async def test_a_configured_peer_relay_is_connected_to(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    server, received, arrived = await _listener()
    port = server.sockets[0].getsockname()[1]
    try:
        async with running_relay(settings, pool, msrp_peer_relays=[f"127.0.0.1:{port}"]) as relay:
            alice = await relay.authed("alice")
            target = parse_uri(f"msrp://127.0.0.1:{port}/peer-session;tcp")
            answer = await alice.send_text((*alice.use_path, target), b"to the peer")
            assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
            await asyncio.wait_for(arrived.wait(), 5)
            assert b"to the peer" in received[0] and received[0].startswith(b"MSRP ")
    finally:
        server.close()
