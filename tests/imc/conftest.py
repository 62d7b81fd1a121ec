"""Fixtures for the imc tests: the SIP edge with alice, bob and carol (from the msilo tests),
imc workers, and an msilo worker for the members who are offline."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.imc.worker import ImcWorker
from shared.config import Settings
from tests.msilo.conftest import msilo, sip, start_msilo

__all__ = ["imc", "msilo", "sip", "start_imc", "start_msilo"]

StartImc = Callable[[], Awaitable[ImcWorker]]


@pytest.fixture
def imc_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def settings(settings: Settings, imc_overrides: dict[str, Any]) -> Settings:
    # Timers far away: NOTIFYs drive everything, so a test cannot pass by a lucky poll.
    return settings.model_copy(
        update={
            "msilo_sweep_interval": 3600.0,
            "msilo_purge_interval": 3600.0,
            "msilo_retry_interval": 3600.0,
            "imc_poll_interval": 3600.0,
            **imc_overrides,
        }
    )


@pytest.fixture
async def start_imc(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[StartImc]:
    """Start imc workers (each LISTENing before it is returned); stopped at the end."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start() -> ImcWorker:
        worker = ImcWorker(settings, pool, database_url)
        task = asyncio.create_task(worker.run(stop))
        tasks.append(task)
        connected = asyncio.ensure_future(worker.listener.connected.wait())
        await asyncio.wait({task, connected}, timeout=10, return_when="FIRST_COMPLETED")
        if task.done():
            task.result()
        assert connected.done(), "imc did not connect its LISTEN connection"
        return worker

    try:
        yield start
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


@pytest.fixture
async def imc(sip: Any, start_imc: StartImc) -> ImcWorker:
    """One imc worker next to the SIP edge."""
    return await start_imc()
