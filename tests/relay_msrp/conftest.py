from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest

from services.relay.msrp.listener import MsrpListener
from services.relay.msrp.relay import MsrpRelay
from services.relay.tls import client_context, server_context
from shared.config import Settings
from shared.db.users import Address, create_user
from shared.msrp import MsrpUri, parse_uri
from tests.relay_msrp.msrp_client import MsrpTestClient

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw"}


@dataclass
class RunningRelay:
    relay: MsrpRelay
    listener: MsrpListener
    host: str

    @property
    def port(self) -> int:
        return self.listener.port

    def uri(self, scheme: str = "msrp") -> MsrpUri:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return parse_uri(f"{scheme}://{host}:{self.port};tcp")

    async def client(self, name: str, **kwargs: Any) -> MsrpTestClient:
        return await MsrpTestClient.connect(self.host, self.port, name=name, **kwargs)

    async def authed(self, name: str, **kwargs: Any) -> MsrpTestClient:
        """A client that AUTHed as ``name``; its Use-Path is in ``client.use_path``."""
        client = await self.client(name, **kwargs)
        scheme = "msrps" if kwargs.get("tls") else "msrp"
        answer = await client.auth(self.uri(scheme), name, PASSWORDS[name])
        assert answer.head.status == 200, answer.head  # type: ignore[union-attr]
        return client


@asynccontextmanager
async def running_relay(
    settings: Settings, pool: asyncpg.Pool | None, host: str = "127.0.0.1", **overrides: Any
) -> AsyncIterator[RunningRelay]:
    settings = settings.model_copy(
        update={
            "msrp_host": host,
            "msrp_port": 0,
            "msrp_public_host": host,
            "msrp_allow_insecure_auth": True,
            **overrides,
        }
    )
    server_ssl = server_context(settings)
    relay = MsrpRelay(settings, pool, server_ssl=server_ssl, client_ssl=client_context(settings))
    listener = MsrpListener(relay, host, 0, server_ssl)
    await listener.start()
    relay.local_ports.add(listener.port)
    relay.start_timers()
    try:
        yield RunningRelay(relay, listener, host)
    finally:
        listener.close()
        relay.stop_timers()
        for conn in list(relay.connections):
            conn.abort()
        await asyncio.sleep(0)


@pytest.fixture
async def users(pool: asyncpg.Pool, settings: Settings) -> dict[str, str]:
    for name, password in PASSWORDS.items():
        await create_user(pool, Address(name, settings.domain), password)
    return PASSWORDS


RelayFactory = Callable[..., Any]


@pytest.fixture
async def msrp_relay(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> AsyncIterator[RunningRelay]:
    async with running_relay(settings, pool) as running:
        yield running
