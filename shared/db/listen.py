"""LISTEN on a dedicated connection that survives server restarts.

asyncpg resets pooled connections with ``UNLISTEN *``, so LISTEN never uses the pool. When the
connection dies (server restart, ``pg_terminate_backend``, network), the listener reconnects with
backoff, LISTENs again and calls ``catch_up`` — a NOTIFY missed meanwhile costs latency, never work.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import asyncpg

from shared.db.pool import describe
from shared.db.types import Executor
from shared.db.urls import mask_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Notification:
    channel: str
    type: str
    id: str | None
    raw: str


def parse_payload(channel: str, payload: str) -> Notification:
    """Payloads are ``{"type": ..., "id": ...}``; anything else is kept raw with type ``""``."""
    try:
        data = json.loads(payload)
    except ValueError:
        return Notification(channel, "", None, payload)
    if not isinstance(data, dict):
        return Notification(channel, "", None, payload)
    ident = data.get("id")
    return Notification(
        channel, str(data.get("type", "")), None if ident is None else str(ident), payload
    )


async def notify(conn: Executor, channel: str, type_: str, id_: object) -> None:
    """Send ``{"type", "id"}`` on ``channel``; delivered when the transaction commits."""
    payload = json.dumps({"type": type_, "id": id_}, default=str)
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


NotifyHandler = Callable[[Notification], None]
CatchUp = Callable[[], Awaitable[None]]


class Listener:
    """Keeps one connection LISTENing on ``channels`` until ``stop`` is set.

    ``on_notify`` runs in the event loop for every notification (keep it quick: typically it
    wakes a worker). ``catch_up`` runs after every (re)connection, once LISTEN is in place.
    """

    def __init__(
        self,
        url: str,
        channels: Iterable[str],
        on_notify: NotifyHandler,
        *,
        catch_up: CatchUp | None = None,
        health_interval: float = 10.0,
        max_backoff: float = 5.0,
    ) -> None:
        self.url = url
        self.channels = tuple(channels)
        self.on_notify = on_notify
        self.catch_up = catch_up
        self.health_interval = health_interval
        self.max_backoff = max_backoff
        self.connected = asyncio.Event()
        self.connections_made = 0

    async def run(self, stop: asyncio.Event) -> None:
        delay = 0.1
        while not stop.is_set():
            try:
                await self._session(stop)
                delay = 0.1
            except (TimeoutError, OSError, asyncpg.PostgresError) as exc:
                log.warning(
                    "LISTEN connection to %s lost (%s); reconnecting in %.1fs",
                    mask_url(self.url),
                    describe(exc),
                    delay,
                )
            except asyncpg.InterfaceError as exc:
                log.warning("LISTEN connection closed (%s); reconnecting", describe(exc))
            self.connected.clear()
            if stop.is_set():
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            delay = min(delay * 2, self.max_backoff)

    async def _session(self, stop: asyncio.Event) -> None:
        conn = await asyncpg.connect(self.url, timeout=10)
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        try:
            for channel in self.channels:
                await conn.add_listener(channel, self._dispatch)
            self.connections_made += 1
            self.connected.set()
            log.debug("listening on %s", ", ".join(self.channels))
            if self.catch_up is not None:
                await self.catch_up()
            while not stop.is_set() and not lost.is_set():
                waiters = {
                    asyncio.ensure_future(stop.wait()),
                    asyncio.ensure_future(lost.wait()),
                }
                done, pending = await asyncio.wait(
                    waiters, timeout=self.health_interval, return_when=asyncio.FIRST_COMPLETED
                )
                for task in pending:
                    task.cancel()
                if not done:
                    # A half-open TCP connection never reports itself: ask the server.
                    await conn.fetchval("SELECT 1", timeout=5)
            if lost.is_set() and not stop.is_set():
                raise asyncpg.InterfaceError("connection terminated")
        finally:
            if not conn.is_closed():
                await conn.close(timeout=2)

    def _dispatch(
        self,
        _conn: asyncpg.Connection | asyncpg.pool.PoolConnectionProxy,
        pid: int,
        channel: str,
        payload: object,
    ) -> None:
        try:
            self.on_notify(parse_payload(channel, str(payload)))
        except Exception:
            log.exception("notification handler failed for %s", channel)
