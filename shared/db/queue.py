"""Queue helpers: claim rows with ``FOR UPDATE SKIP LOCKED``; wait for work.

Rows are the truth; NOTIFY only wakes. A consumer waits on "notified, or the poll interval
passed, or stop requested", then claims what is ready. Locks are held by the claiming
transaction, so a consumer that crashes releases its rows to the next one.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from enum import StrEnum

import asyncpg

from shared.db.types import Connection

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_]*$")


@asynccontextmanager
async def claim(
    pool: asyncpg.Pool,
    table: str,
    *,
    where: str = "TRUE",
    order_by: str = "id",
    limit: int = 1,
    args: Sequence[object] = (),
) -> AsyncIterator[tuple[Connection, list[asyncpg.Record]]]:
    """Lock up to ``limit`` ready rows of ``table`` that no one else holds.

    Yields the connection (inside the claiming transaction) and the rows. Work done with the
    connection commits together with the claim; an exception rolls everything back and the rows
    become claimable again. ``where`` and ``order_by`` are trusted SQL from the caller; values go
    in ``args`` as ``$1``, ``$2``, ...
    """
    if not _IDENTIFIER.match(table):
        raise ValueError(f"not a table name: {table!r}")
    if limit < 1:
        raise ValueError("limit must be at least 1")
    sql = (
        f"SELECT * FROM {table} WHERE {where} ORDER BY {order_by} "
        f"LIMIT {int(limit)} FOR UPDATE SKIP LOCKED"
    )
    async with pool.acquire() as conn, conn.transaction():
        rows = await conn.fetch(sql, *args)
        yield conn, rows


class WakeReason(StrEnum):
    NOTIFIED = "notified"
    TIMEOUT = "timeout"
    STOP = "stop"


class Wakeup:
    """A worker's alarm clock: ``wake()`` from a NOTIFY handler, ``wait()`` in the loop."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def wake(self) -> None:
        self._event.set()

    async def wait(self, poll_interval: float, stop: asyncio.Event) -> WakeReason:
        """Return as soon as woken (a wake-up since the last wait counts), the poll interval
        has passed, or ``stop`` is set — whichever comes first."""
        if stop.is_set():
            return WakeReason.STOP
        if self._event.is_set():
            self._event.clear()
            return WakeReason.NOTIFIED
        woken = asyncio.ensure_future(self._event.wait())
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait(
                {woken, stopped}, timeout=poll_interval, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            woken.cancel()
            stopped.cancel()
        if stop.is_set():
            return WakeReason.STOP
        if self._event.is_set():
            self._event.clear()
            return WakeReason.NOTIFIED
        return WakeReason.TIMEOUT
