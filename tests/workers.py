"""Starting services' background workers in tests: wait until they are really listening."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol, TypeVar

from shared.db.listen import Listener


class Worker(Protocol):
    listener: Listener

    async def run(self, stop: asyncio.Event) -> None: ...


W = TypeVar("W", bound=Worker)


async def wait_started(task: asyncio.Task[None], ready: asyncio.Event, what: str) -> None:
    """Return once ``ready`` is set; raise what ``task`` raised if it died first."""
    waiting = asyncio.ensure_future(ready.wait())
    await asyncio.wait({task, waiting}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if task.done():
        task.result()
    assert ready.is_set(), f"{what} did not start"


@asynccontextmanager
async def worker_starter(
    make: Callable[[], W], what: str
) -> AsyncIterator[Callable[[], Awaitable[W]]]:
    """Yields ``start()``, which runs a new worker and returns it once its LISTEN connection
    is up; every worker started is stopped on exit."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start() -> W:
        worker = make()
        task = asyncio.create_task(worker.run(stop))
        tasks.append(task)
        await wait_started(task, worker.listener.connected, f"{what} LISTEN connection")
        return worker

    try:
        yield start
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
