"""The service runner: stop event, drain within the shutdown timeout, failures."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from shared.config import Settings
from shared.lifecycle import ServiceContext, ServiceFailed, run_services


async def test_services_drain_their_work_after_the_stop(settings: Settings) -> None:
    stop = asyncio.Event()
    drained: list[str] = []

    async def worker(ctx: ServiceContext) -> None:
        await ctx.stop.wait()
        await asyncio.sleep(0.2)  # in-flight work finishing
        drained.append("worker")

    asyncio.get_running_loop().call_later(0.3, stop.set)
    await run_services({"worker": worker}, settings, settings.database_url or "", stop=stop)
    assert drained == ["worker"]


async def test_work_still_running_after_the_shutdown_timeout_is_aborted(
    settings: Settings,
) -> None:
    quick = settings.model_copy(update={"shutdown_timeout": 0.3})
    stop = asyncio.Event()
    cancelled: list[str] = []

    async def stubborn(ctx: ServiceContext) -> None:
        await ctx.stop.wait()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append("stubborn")
            raise

    loop = asyncio.get_running_loop()
    loop.call_later(0.2, stop.set)
    began = loop.time()
    await run_services({"stubborn": stubborn}, quick, quick.database_url or "", stop=stop)
    assert cancelled == ["stubborn"]
    assert loop.time() - began < 5


async def test_sigterm_sets_the_stop_event(settings: Settings) -> None:
    seen: list[bool] = []

    async def waiter(ctx: ServiceContext) -> None:
        await ctx.stop.wait()
        seen.append(True)

    asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(
        run_services({"waiter": waiter}, settings, settings.database_url or ""), 10
    )
    assert seen == [True]


async def test_a_failing_service_stops_the_others_and_is_reported(settings: Settings) -> None:
    stopped: list[str] = []

    async def broken(ctx: ServiceContext) -> None:
        await asyncio.sleep(0.1)
        raise RuntimeError("boom")

    async def healthy(ctx: ServiceContext) -> None:
        await ctx.stop.wait()
        stopped.append("healthy")

    with pytest.raises(ServiceFailed, match="broken"):
        await asyncio.wait_for(
            run_services(
                {"broken": broken, "healthy": healthy}, settings, settings.database_url or ""
            ),
            10,
        )
    assert stopped == ["healthy"]


async def test_services_start_on_a_migrated_database(
    settings: Settings, empty_database_url: str
) -> None:
    stop = asyncio.Event()
    seen: list[bool] = []

    async def check(ctx: ServiceContext) -> None:
        seen.append(await ctx.pool.fetchval("SELECT to_regclass('users') IS NOT NULL"))
        stop.set()

    fresh = settings.model_copy(update={"database_url": empty_database_url})
    await run_services({"check": check}, fresh, empty_database_url, stop=stop)
    assert seen == [True]
