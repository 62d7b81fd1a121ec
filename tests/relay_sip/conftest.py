"""Fixtures for the SIP edge tests: the edge running on 127.0.0.1, users, scripted UAs."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import pytest

from services.relay.sip.service import run_sip
from shared.config import Settings
from shared.db.users import Address, create_user, set_disabled
from shared.lifecycle import ServiceContext
from tests.relay_sip.sip_ua import SipUA
from tests.workers import wait_started

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "carol": "carol-pw", "dave": "dave-pw"}
DISABLED = {"dave"}


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


@dataclass
class SipServer:
    settings: Settings
    pool: asyncpg.Pool
    uas: list[SipUA] = field(default_factory=list)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.settings.sip_port)

    async def ua(
        self,
        user: str,
        transport: str = "udp",
        password: str | None = None,
        local_host: str = "127.0.0.1",
    ) -> SipUA:
        ua = SipUA(
            transport,
            self.address,
            user,
            password if password is not None else PASSWORDS.get(user, "x"),
            self.settings.domain,
            local_host=local_host,
        )
        await ua.start()
        self.uas.append(ua)
        return ua


@pytest.fixture
async def users(pool: asyncpg.Pool, settings: Settings) -> dict[str, str]:
    for name, password in PASSWORDS.items():
        await create_user(pool, Address(name, settings.domain), password)
    for name in DISABLED:
        await set_disabled(pool, Address(name, settings.domain), True)
    return PASSWORDS


@pytest.fixture
def sip_settings() -> dict[str, object]:
    """Settings a test module changes for its ``sip`` server (override this fixture)."""
    return {}


@pytest.fixture
async def sip(
    settings: Settings,
    pool: asyncpg.Pool,
    database_url: str,
    users: dict[str, str],
    sip_settings: dict[str, object],
) -> AsyncIterator[SipServer]:
    port = free_port()
    configured = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": port,
            "shutdown_timeout": 3.0,
            "sip_delivery_poll_interval": 30.0,
            **sip_settings,
        }
    )
    stop = asyncio.Event()
    started = asyncio.Event()
    ctx = ServiceContext(configured, database_url, pool, stop)
    task = asyncio.create_task(run_sip(ctx, started=started))
    await wait_started(task, started, "the SIP edge")
    server = SipServer(configured, pool)
    try:
        yield server
    finally:
        for ua in server.uas:
            await ua.close()
        stop.set()
        await asyncio.wait_for(task, 10)


async def eventually(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Wait until ``check()`` is true (the server does it asynchronously); fail after 10 s."""
    async with asyncio.timeout(10):
        while not await check():  # noqa: ASYNC110 - the database has no event to wait on
            await asyncio.sleep(0.02)
