"""Publishing the relay's live MSRP sessions to ``msrp_sessions`` for the control API.

The session table in memory stays the truth; this task mirrors it. It wakes when a session
is issued or dropped (``SessionTable.changed``) and writes what changed since its last write
— new rows in one INSERT, gone ones in one DELETE — at most every ``MIN_GAP`` seconds, so a
burst of AUTHs costs a few statements, not one each. Byte counts and refreshed expiry times
are written once per statistics interval, in one UPDATE. Nothing here runs per chunk: the
connections count their bytes with an integer add.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from services.relay.msrp.relay import MsrpRelay, MsrpStats
from services.relay.msrp.sessions import RelaySession, SessionTable
from shared.config import Settings
from shared.db import msrp_sessions as sessions_db
from shared.db.pool import DATABASE_ERRORS
from shared.db.types import Connection
from shared.stats import GC_AFTER, CounterValue, StatsPublisher, relay_instance

log = logging.getLogger(__name__)

#: Seconds between two writes of new/gone sessions (batches bursts of AUTHs).
MIN_GAP = 0.2


@dataclass
class _Published:
    expires_at: float
    bytes_in: int
    bytes_out: int


class SessionPublisher:
    def __init__(
        self,
        sessions: SessionTable,
        pool: asyncpg.Pool,
        relay_instance: str,
        *,
        interval: float,
    ) -> None:
        self.sessions = sessions
        self.pool = pool
        self.relay_instance = relay_instance
        self.interval = interval
        self.loop = asyncio.get_running_loop()
        self._published: dict[str, _Published] = {}
        #: Set after each write attempt (tests wait on it).
        self.written = asyncio.Event()

    def _wall(self, loop_time: float) -> datetime:
        return datetime.fromtimestamp(time.time() + loop_time - self.loop.time(), UTC)

    async def run(self, stop: asyncio.Event) -> None:
        """Mirror the table until ``stop``; then delete this instance's rows."""
        await self._write(lambda conn: sessions_db.delete_instance(conn, self.relay_instance))
        next_full = self.loop.time()
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                now = self.loop.time()
                full = now >= next_full
                await self.flush(full=full)
                if full:
                    next_full = now + self.interval
                    await self._write(lambda conn: sessions_db.delete_dead(conn, GC_AFTER))
                await asyncio.sleep(MIN_GAP)
                changed = asyncio.ensure_future(self.sessions.changed.wait())
                timeout = max(0.0, next_full - self.loop.time())
                await asyncio.wait(
                    {changed, stopping}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                changed.cancel()
        finally:
            stopping.cancel()
            await self._write(lambda conn: sessions_db.delete_instance(conn, self.relay_instance))

    async def flush(self, *, full: bool) -> None:
        """Write new and gone sessions; with ``full`` also changed byte counts and expiries."""
        self.sessions.changed.clear()
        current: dict[str, RelaySession] = {s.session_id: s for s in self.sessions}
        published = self._published
        added = [s for sid, s in current.items() if sid not in published]
        gone = [sid for sid in published if sid not in current]
        updates: list[sessions_db.SessionUpdate] = []
        if full:
            for sid, seen in published.items():
                session = current.get(sid)
                if session is None:
                    continue
                conn = session.conn
                if (
                    conn.bytes_in != seen.bytes_in
                    or conn.bytes_out != seen.bytes_out
                    or session.expires_at != seen.expires_at
                ):
                    updates.append(
                        sessions_db.SessionUpdate(
                            sid, self._wall(session.expires_at), conn.bytes_in, conn.bytes_out
                        )
                    )
        if not (added or gone or updates):
            return
        rows = [self._new_row(s) for s in added]

        async def write(conn: Connection) -> None:
            async with conn.transaction():
                await sessions_db.delete(conn, self.relay_instance, gone)
                await sessions_db.insert(conn, self.relay_instance, rows)
                await sessions_db.update(conn, self.relay_instance, updates)

        if not await self._write(write):
            return  # tried again next time: nothing was marked published
        for sid in gone:
            published.pop(sid, None)
        for session in added:
            published[session.session_id] = _Published(
                session.expires_at, session.conn.bytes_in, session.conn.bytes_out
            )
        for update in updates:
            session = current[update.session_id]
            published[update.session_id] = _Published(
                session.expires_at, update.bytes_in, update.bytes_out
            )

    def _new_row(self, session: RelaySession) -> sessions_db.NewSession:
        conn = session.conn
        return sessions_db.NewSession(
            session_id=session.session_id,
            aor=session.user,
            peer=conn.peer,
            transport="tls" if conn.secure else "tcp",
            use_path=str(session.uri),
            client_uri=str(session.client_uri),
            created_at=self._wall(session.created_at),
            expires_at=self._wall(session.expires_at),
            bytes_in=conn.bytes_in,
            bytes_out=conn.bytes_out,
        )

    async def _write(self, action: Callable[[Connection], Awaitable[object]]) -> bool:
        try:
            async with self.pool.acquire() as conn:
                await action(conn)
        except DATABASE_ERRORS as exc:
            log.warning("MSRP sessions not published: %s", exc)
            return False
        finally:
            self.written.set()
        return True


def msrp_counters(stats: MsrpStats) -> dict[str, CounterValue]:
    """The MSRP relay's own counters (:class:`MsrpStats`), as published statistics."""
    return {
        "msrp_connections": stats.connections_total,
        "msrp_connections_refused": stats.connections_refused,
        "msrp_auth_ok": stats.auth_ok,
        "msrp_auth_failed": stats.auth_failed,
        "msrp_requests_relayed": stats.requests_relayed,
        "msrp_bytes_relayed": stats.bytes_relayed,
        "msrp_reports_sent": stats.reports_sent,
        "msrp_rejects": {str(status): n for status, n in stats.rejects.items()},
    }


def relay_publishers(
    relay: MsrpRelay, pool: asyncpg.Pool, settings: Settings
) -> tuple[StatsPublisher, SessionPublisher]:
    """The relay's statistics publisher and its MSRP session publisher (one instance id)."""
    instance = relay_instance(settings.sip_port)
    stats = StatsPublisher(
        pool,
        "relay",
        interval=settings.stats_interval,
        instance=instance,
        sources={"msrp": lambda: msrp_counters(relay.stats)},
        gauges={
            "msrp_connections_open": lambda: len(relay.connections),
            "msrp_sessions": lambda: len(relay.sessions),
        },
    )
    sessions = SessionPublisher(relay.sessions, pool, instance, interval=settings.stats_interval)
    return stats, sessions
