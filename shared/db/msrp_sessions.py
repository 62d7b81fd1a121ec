"""``msrp_sessions``: the MSRP relay's live sessions, as it publishes them
(0010_service_stats.sql). The relay writes in batches (one statement per kind of change);
the API reads the rows of relays whose ``service_stats`` row is live."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from shared.db.types import Executor

#: A session's row is shown only while its relay's statistics row is fresh.
_LIVE = """
    EXISTS (SELECT 1 FROM service_stats t
             WHERE t.service = 'relay' AND t.instance = s.relay_instance
               AND t.stale_at > now())
"""


@dataclass(frozen=True)
class NewSession:
    session_id: str
    aor: str
    peer: str
    transport: str
    use_path: str
    client_uri: str
    created_at: datetime
    expires_at: datetime
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class SessionUpdate:
    session_id: str
    expires_at: datetime
    bytes_in: int
    bytes_out: int


@dataclass(frozen=True)
class MsrpSession:
    session_id: str
    relay_instance: str
    aor: str
    peer: str
    transport: str
    use_path: str
    client_uri: str
    created_at: datetime
    expires_at: datetime
    bytes_in: int
    bytes_out: int
    updated_at: datetime


async def delete_instance(conn: Executor, relay_instance: str) -> int:
    """Delete every row of this relay instance (its previous run's, or its own at stop)."""
    status: str = await conn.execute(
        "DELETE FROM msrp_sessions WHERE relay_instance = $1", relay_instance
    )
    return int(status.rsplit(" ", 1)[-1])


async def insert(conn: Executor, relay_instance: str, sessions: Sequence[NewSession]) -> None:
    if not sessions:
        return
    await conn.execute(
        """
        INSERT INTO msrp_sessions (session_id, relay_instance, aor, peer, transport, use_path,
                                   client_uri, created_at, expires_at, bytes_in, bytes_out)
        SELECT v.id, $1, v.aor, v.peer, v.transport, v.use_path, v.client_uri, v.created,
               v.expires, v.bytes_in, v.bytes_out
          FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[],
                      $8::timestamptz[], $9::timestamptz[], $10::bigint[], $11::bigint[])
               AS v(id, aor, peer, transport, use_path, client_uri, created, expires,
                    bytes_in, bytes_out)
        ON CONFLICT (session_id) DO UPDATE
           SET relay_instance = EXCLUDED.relay_instance, expires_at = EXCLUDED.expires_at,
               bytes_in = EXCLUDED.bytes_in, bytes_out = EXCLUDED.bytes_out,
               updated_at = now()
        """,
        relay_instance,
        [s.session_id for s in sessions],
        [s.aor for s in sessions],
        [s.peer for s in sessions],
        [s.transport for s in sessions],
        [s.use_path for s in sessions],
        [s.client_uri for s in sessions],
        [s.created_at for s in sessions],
        [s.expires_at for s in sessions],
        [s.bytes_in for s in sessions],
        [s.bytes_out for s in sessions],
    )


async def update(conn: Executor, relay_instance: str, changes: Sequence[SessionUpdate]) -> None:
    """Write new byte counts / expiry times of sessions, in one statement."""
    if not changes:
        return
    await conn.execute(
        """
        UPDATE msrp_sessions s
           SET expires_at = v.expires, bytes_in = v.bytes_in, bytes_out = v.bytes_out,
               updated_at = now()
          FROM unnest($2::text[], $3::timestamptz[], $4::bigint[], $5::bigint[])
               AS v(id, expires, bytes_in, bytes_out)
         WHERE s.session_id = v.id AND s.relay_instance = $1
        """,
        relay_instance,
        [c.session_id for c in changes],
        [c.expires_at for c in changes],
        [c.bytes_in for c in changes],
        [c.bytes_out for c in changes],
    )


async def delete(conn: Executor, relay_instance: str, session_ids: Sequence[str]) -> None:
    if not session_ids:
        return
    await conn.execute(
        "DELETE FROM msrp_sessions WHERE relay_instance = $1 AND session_id = ANY($2::text[])",
        relay_instance,
        list(session_ids),
    )


async def delete_dead(conn: Executor, older_than: float) -> int:
    """Delete rows of relays that stopped publishing (no statistics row fresh within
    ``older_than`` seconds) and that were not written for as long; how many."""
    status: str = await conn.execute(
        """
        DELETE FROM msrp_sessions s
         WHERE s.updated_at < now() - make_interval(secs => $1)
           AND NOT EXISTS (SELECT 1 FROM service_stats t
                            WHERE t.service = 'relay' AND t.instance = s.relay_instance
                              AND t.stale_at > now() - make_interval(secs => $1))
        """,
        older_than,
    )
    return int(status.rsplit(" ", 1)[-1])


def _row(row: object) -> MsrpSession:
    r = dict(row)  # type: ignore[call-overload]
    return MsrpSession(**r)


_COLUMNS = """s.session_id, s.relay_instance, s.aor, s.peer, s.transport, s.use_path,
              s.client_uri, s.created_at, s.expires_at, s.bytes_in, s.bytes_out, s.updated_at"""


async def count_live(conn: Executor, aor: str | None = None) -> int:
    value = await conn.fetchval(
        f"SELECT count(*) FROM msrp_sessions s WHERE ($1::text IS NULL OR s.aor = $1) AND {_LIVE}",
        aor,
    )
    return int(value)


async def list_live(
    conn: Executor, aor: str | None = None, *, limit: int, offset: int
) -> list[MsrpSession]:
    """Sessions of live relays (of ``aor`` when given), newest first."""
    rows = await conn.fetch(
        f"""
        SELECT {_COLUMNS} FROM msrp_sessions s
         WHERE ($1::text IS NULL OR s.aor = $1) AND {_LIVE}
         ORDER BY s.created_at DESC, s.session_id
         LIMIT $2 OFFSET $3
        """,
        aor,
        limit,
        offset,
    )
    return [_row(row) for row in rows]
