"""``imstack serve api``: the control API served by uvicorn inside the service TaskGroup."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Generator

import uvicorn

from services.api.app import create_app
from shared.lifecycle import ServiceContext, StartupError
from shared.stats import StatsPublisher

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the service runner owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


async def _serve(server: uvicorn.Server, where: str) -> None:
    try:
        await server.serve()
    except SystemExit:  # uvicorn exits the process when it cannot bind
        raise StartupError(f"the API cannot listen on {where} (IMSTACK_API_PORT)") from None


async def run(ctx: ServiceContext) -> None:
    settings = ctx.settings
    config = uvicorn.Config(
        create_app(settings, ctx.pool),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,  # a log record per request costs more than a room creation's SQL
        http="httptools",  # the C parser: h11 (pure Python) costs ~0.3 ms CPU per request
        timeout_graceful_shutdown=int(settings.shutdown_timeout) or None,
    )
    server = _Server(config)
    where = f"{settings.api_host}:{settings.api_port}"
    serving = asyncio.create_task(_serve(server, where), name="api-uvicorn")
    stopping = asyncio.create_task(ctx.stop.wait())
    stats = StatsPublisher(ctx.pool, "api", interval=settings.stats_interval)
    publishing = asyncio.create_task(stats.run(ctx.stop), name="api-stats")
    try:
        await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if serving.done():
            serving.result()
            raise RuntimeError(f"the API server on {where} stopped by itself")
        server.should_exit = True
        await serving
    finally:
        stopping.cancel()
        if not serving.done():
            serving.cancel()
        if not ctx.stop.is_set():
            publishing.cancel()  # failed: no final publish
        await asyncio.gather(publishing, return_exceptions=True)
