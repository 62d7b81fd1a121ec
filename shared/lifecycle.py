"""Running services: a stop event set by SIGTERM/SIGINT, one named task per service in a
TaskGroup, a bounded drain on shutdown.

A service is ``async def run(ctx: ServiceContext) -> None``: it works until ``ctx.stop`` is set,
then stops accepting, finishes what is in flight and returns. Whatever has not returned
``shutdown_timeout`` seconds after the stop is cancelled. A second signal aborts at once.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import logging
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import asyncpg

from shared.config import Settings
from shared.db.migrate import migrate
from shared.db.pool import create_pool
from shared.db.urls import mask_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceContext:
    settings: Settings
    database_url: str
    pool: asyncpg.Pool
    stop: asyncio.Event


ServiceMain = Callable[[ServiceContext], Awaitable[None]]

#: Service name → module holding its ``run(ctx)``; ``imstack serve NAME`` runs one.
SERVICES: dict[str, str] = {
    "relay": "services.relay.service",
    "msilo": "services.msilo.service",
    "imc": "services.imc.service",
    "api": "services.api.service",
}


def service_main(name: str) -> ServiceMain:
    module = importlib.import_module(SERVICES[name])
    main: ServiceMain = module.run
    return main


class ServiceFailed(Exception):
    """A service ended by itself or raised; the process exits non-zero."""


class StartupError(Exception):
    """A service cannot start for a reason the operator must fix (a port in use, a certificate
    that cannot be read). The message says what in one line; it is logged without a traceback
    and ends up in the CLI's ``imstack: service failed: <service>: <message>``."""


def startup_failure(exc: BaseException) -> str | None:
    """The one-line reason when ``exc`` is a ``StartupError``, or a group (a service's
    TaskGroup) of nothing but them; None for anything else (a bug: log the traceback)."""
    if isinstance(exc, StartupError):
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        reasons = [startup_failure(inner) for inner in exc.exceptions]
        if reasons and all(reasons):
            return "; ".join(dict.fromkeys(r for r in reasons if r))
    return None


async def prepare_database(settings: Settings, database_url: str) -> asyncpg.Pool:
    """Connect (retrying while the server comes up) and apply pending migrations."""
    pool = await create_pool(
        database_url,
        connect_timeout=settings.database_connect_timeout,
        max_size=settings.database_pool_size,
    )
    try:
        async with pool.acquire() as conn:
            await migrate(conn)
    except BaseException:
        await pool.close()
        raise
    return pool


async def run_services(
    services: Mapping[str, ServiceMain],
    settings: Settings,
    database_url: str,
    *,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the services until SIGTERM/SIGINT (or ``stop``), then drain and return.

    Raises ``ServiceFailed`` if a service fails or ends on its own before the stop.
    """
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    pool = await prepare_database(settings, database_url)
    tasks: list[asyncio.Task[None]] = []

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: aborting now", signal.Signals(signum).name)
            for task in tasks:
                task.cancel()
        else:
            log.info("%s: stopping", signal.Signals(signum).name)
            stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, on_signal, signum)
    failed: list[str] = []

    async def supervise(name: str, main: ServiceMain) -> None:
        ctx = ServiceContext(settings, database_url, pool, stop)
        try:
            await main(ctx)
        except asyncio.CancelledError:
            if not stop.is_set():
                raise
            log.warning(
                "%s: aborted after the %.0fs shutdown timeout", name, settings.shutdown_timeout
            )
            return
        except Exception as exc:
            reason = startup_failure(exc)
            if reason is None:
                log.exception("%s: failed", name)
                failed.append(name)
            else:
                log.error("%s: %s", name, reason)
                failed.append(f"{name}: {reason}")
            stop.set()
            return
        if not stop.is_set():
            log.error("%s: ended by itself", name)
            failed.append(name)
            stop.set()

    async def deadline() -> None:
        await stop.wait()
        _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout)
        for task in pending:
            task.cancel()

    log.info("starting %s (database %s)", ", ".join(services), mask_url(database_url))
    # Everything loaded so far lives as long as the process: keep it out of the collector's
    # full passes, which would otherwise scan it all and stall the event loop for tens of ms.
    gc.collect()
    gc.freeze()
    try:
        async with asyncio.TaskGroup() as group:
            for name, main in services.items():
                tasks.append(group.create_task(supervise(name, main), name=name))
            group.create_task(deadline(), name="shutdown-deadline")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
        await pool.close()
    if failed:
        raise ServiceFailed("; ".join(failed))
    log.info("stopped cleanly")
