"""The edge's housekeeping: idle TCP connections are closed, expired bindings purged."""

from __future__ import annotations

import asyncio

import pytest

from services.relay.sip import service
from tests.relay_sip.conftest import SipServer, eventually


@pytest.fixture(autouse=True)
def frequent_housekeeping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "PURGE_INTERVAL", 0.1)  # read as the edge starts


@pytest.fixture
def sip_settings() -> dict[str, object]:
    return {"sip_tcp_idle_timeout": 1.0, "registrar_min_expires": 1}


async def test_a_tcp_connection_without_traffic_is_closed(sip: SipServer) -> None:
    reader, writer = await asyncio.open_connection(*sip.address)
    try:
        # Nothing sent: the relay closes it once IMSTACK_SIP_TCP_IDLE_TIMEOUT has passed.
        assert await asyncio.wait_for(reader.read(), 5) == b""
    finally:
        writer.close()


async def test_a_tcp_connection_in_use_is_kept(sip: SipServer) -> None:
    bob = await sip.ua("bob", "tcp")
    for _ in range(6):  # traffic every 0.3 s, for longer than the idle timeout
        assert (await bob.register()).status == 200
        await asyncio.sleep(0.3)
    assert (await bob.register()).status == 200  # the same connection, still open


async def test_an_expired_binding_is_purged(sip: SipServer) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register(expires=1)).status == 200

    async def bindings() -> int:
        query = "SELECT count(*) FROM locations WHERE aor = 'bob@example.test'"
        return int(await sip.pool.fetchval(query))

    async def purged() -> bool:
        return await bindings() == 0

    assert await bindings() == 1
    await eventually(purged, "the expired binding purged")
