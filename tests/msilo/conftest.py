"""Fixtures for the msilo tests: the SIP edge (from the relay tests) plus msilo workers.

``msilo_overrides`` (a dict of settings) can be overridden per test with
``@pytest.mark.parametrize("msilo_overrides", [{...}])``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.msilo.worker import MsiloWorker
from services.relay.sip.service import run_sip
from shared.config import Settings
from shared.db.users import Address, create_user
from shared.lifecycle import ServiceContext
from tests.relay_sip.conftest import PASSWORDS, SipServer, free_port
from tests.workers import wait_started, worker_starter

StartMsilo = Callable[[], Awaitable[MsiloWorker]]


@pytest.fixture
def msilo_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(settings: Settings, msilo_overrides: dict[str, Any]) -> Settings:
    # Timers far away: the tests drive sweeps and purges themselves, NOTIFYs do the rest.
    return settings.model_copy(
        update={
            "msilo_sweep_interval": 3600.0,
            "msilo_purge_interval": 3600.0,
            "msilo_retry_interval": 3600.0,
            **msilo_overrides,
        }
    )


@pytest.fixture
async def sip(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[SipServer]:
    """The SIP edge on 127.0.0.1 with the users alice, bob and carol."""
    for name in ("alice", "bob", "carol"):
        await create_user(pool, Address(name, settings.domain), PASSWORDS[name])
    port = free_port()
    configured = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": port,
            "shutdown_timeout": 3.0,
            "sip_delivery_poll_interval": 30.0,
        }
    )
    stop = asyncio.Event()
    started = asyncio.Event()
    task = asyncio.create_task(
        run_sip(ServiceContext(configured, database_url, pool, stop), started=started)
    )
    await wait_started(task, started, "the SIP edge")
    server = SipServer(configured, pool)
    try:
        yield server
    finally:
        for ua in server.uas:
            await ua.close()
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture
async def start_msilo(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[StartMsilo]:
    """Start msilo workers (each LISTENing before it is returned); stopped at the end."""
    async with worker_starter(lambda: MsiloWorker(settings, pool, database_url), "msilo") as start:
        yield start


@pytest.fixture
async def msilo(sip: SipServer, start_msilo: StartMsilo) -> MsiloWorker:
    """One msilo worker next to the SIP edge."""
    return await start_msilo()
