"""Fixtures for the imc tests: the SIP edge with alice, bob and carol (from the msilo tests),
imc workers, and an msilo worker for the members who are offline."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.imc.worker import ImcWorker
from shared.config import Settings
from tests.msilo.conftest import msilo, sip, sip_settings, start_msilo, users
from tests.workers import worker_starter

__all__ = ["imc", "msilo", "sip", "sip_settings", "start_imc", "start_msilo", "users"]

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
            # Flood control off unless a test turns it on: tests send chat in bursts.
            "imc_min_interval": 0.0,
            **imc_overrides,
        }
    )


@pytest.fixture
async def start_imc(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> AsyncIterator[StartImc]:
    """Start imc workers (each LISTENing before it is returned); stopped at the end."""
    async with worker_starter(lambda: ImcWorker(settings, pool, database_url), "imc") as start:
        yield start


@pytest.fixture
async def imc(sip: Any, start_imc: StartImc) -> ImcWorker:
    """One imc worker next to the SIP edge."""
    return await start_imc()
