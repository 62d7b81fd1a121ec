"""Fixtures for the msilo tests: the SIP edge (from the relay tests) plus msilo workers.

``msilo_overrides`` (a dict of settings) can be overridden per test with
``@pytest.mark.parametrize("msilo_overrides", [{...}])``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from services.msilo.worker import MsiloWorker
from shared.config import Settings
from tests.relay_sip.conftest import SipServer, sip, sip_settings, users
from tests.workers import worker_starter

__all__ = ["msilo", "sip", "sip_settings", "start_msilo", "users"]

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
