"""The ``locations`` table: registrar bindings (RFC 3261 §10) of an AoR to its contacts.

AoRs are ``user@domain`` strings. Expiry is computed by the database clock (``now()``) so
that every relay replica agrees on it; ``Binding.expires_in`` is the remaining lifetime in
whole seconds at the time of the query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from shared.db.types import Executor


@dataclass(frozen=True)
class Binding:
    id: int
    aor: str
    contact: str
    transport: str  # udp, tcp or tls
    source_host: str
    source_port: int
    relay_instance: str
    connection_id: str | None
    q: float
    instance_id: str | None
    user_agent: str | None
    call_id: str
    cseq: int
    expires_at: datetime
    expires_in: int
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True)
class NewBinding:
    """What a REGISTER sets for one contact (inserted, or updated in place)."""

    aor: str
    contact: str
    transport: str
    source_host: str
    source_port: int
    relay_instance: str
    connection_id: str | None
    q: float
    instance_id: str | None
    user_agent: str | None
    call_id: str
    cseq: int
    expires: int  # seconds from now, > 0


_COLUMNS = """id, aor, contact, transport, source_host, source_port, relay_instance,
    connection_id, q, instance_id, user_agent, call_id, cseq, expires_at,
    GREATEST(0, ceil(extract(epoch FROM expires_at - now())))::int AS expires_in,
    created_at, updated_at"""


def _binding(row: asyncpg.Record) -> Binding:
    return Binding(*row)  # _COLUMNS lists the fields in the dataclass's order


async def lock_aor(conn: Executor, aor: str) -> None:
    """Serialise registrations of one AoR until the end of the current transaction."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 7))", aor)


async def get_bindings(conn: Executor, aor: str) -> list[Binding]:
    """The AoR's unexpired bindings, best first (highest q, then most recently refreshed)."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM locations WHERE aor = $1 AND expires_at > now()
            ORDER BY q DESC, updated_at DESC, id""",
        aor,
    )
    return [_binding(row) for row in rows]


async def get_bindings_many(conn: Executor, aors: Sequence[str]) -> dict[str, list[Binding]]:
    """:func:`get_bindings` for each of ``aors`` in one query; an AoR with no unexpired
    binding is missing from the result."""
    rows = await conn.fetch(
        f"""SELECT {_COLUMNS} FROM locations WHERE aor = ANY($1::text[]) AND expires_at > now()
            ORDER BY aor, q DESC, updated_at DESC, id""",
        list(aors),
    )
    found: dict[str, list[Binding]] = {}
    for row in rows:
        found.setdefault(row["aor"], []).append(_binding(row))
    return found


async def upsert_binding(conn: Executor, new: NewBinding) -> Binding:
    row = await conn.fetchrow(
        f"""INSERT INTO locations (aor, contact, transport, source_host, source_port,
                relay_instance, connection_id, q, instance_id, user_agent, call_id, cseq,
                expires_at)
            VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12,
                    now() + make_interval(secs => $13))
            ON CONFLICT (aor, contact) DO UPDATE SET
                transport = EXCLUDED.transport, source_host = EXCLUDED.source_host,
                source_port = EXCLUDED.source_port, relay_instance = EXCLUDED.relay_instance,
                connection_id = EXCLUDED.connection_id, q = EXCLUDED.q,
                instance_id = EXCLUDED.instance_id, user_agent = EXCLUDED.user_agent,
                call_id = EXCLUDED.call_id, cseq = EXCLUDED.cseq,
                expires_at = EXCLUDED.expires_at, updated_at = now()
            RETURNING {_COLUMNS}""",
        new.aor,
        new.contact,
        new.transport,
        new.source_host,
        new.source_port,
        new.relay_instance,
        new.connection_id,
        new.q,
        new.instance_id,
        new.user_agent,
        new.call_id,
        new.cseq,
        float(new.expires),
    )
    assert row is not None
    return _binding(row)


async def refresh_binding(
    conn: Executor, new: NewBinding, *, max_contacts: int, channel: str, payload: str
) -> list[Binding]:
    """A REGISTER refreshing one binding, in ONE statement (one round trip, its own
    transaction): the unexpired binding of ``new.aor`` whose contact is exactly
    ``new.contact`` gets ``new``'s values, ``pg_notify(channel, payload)`` is sent, and the
    AoR's bindings are returned (best first, as :func:`get_bindings`).

    Nothing changes and ``[]`` is returned when that is not the whole job — no such
    binding; the same Call-ID with a CSeq not above the stored one (§10.3 step 7); more
    than ``max_contacts`` bindings — and the caller does the full registration instead.
    The row lock serialises it with any other change of that binding (a concurrent update
    re-checks the conditions on the newest row)."""
    rows = await conn.fetch(
        f"""WITH current AS (
                SELECT count(*) AS n FROM locations WHERE aor = $1 AND expires_at > now()
            ), refreshed AS (
                UPDATE locations SET
                    transport = $3, source_host = $4, source_port = $5, relay_instance = $6,
                    connection_id = $7, q = $8, instance_id = $9, user_agent = $10,
                    call_id = $11, cseq = $12, expires_at = now() + make_interval(secs => $13),
                    updated_at = now()
                WHERE aor = $1 AND contact = $2 AND expires_at > now()
                    AND NOT (call_id = $11 AND cseq >= $12)
                    AND (SELECT n FROM current) <= $14
                RETURNING {_COLUMNS}
            ), notified AS (
                SELECT pg_notify($15, $16) FROM (SELECT 1 FROM refreshed LIMIT 1) AS written
            )
            SELECT refreshed.* FROM refreshed CROSS JOIN (SELECT count(*) FROM notified) AS n
            UNION ALL
            SELECT {_COLUMNS} FROM locations
                WHERE aor = $1 AND expires_at > now() AND id <> (SELECT id FROM refreshed)
            ORDER BY q DESC, updated_at DESC, id""",
        new.aor,
        new.contact,
        new.transport,
        new.source_host,
        new.source_port,
        new.relay_instance,
        new.connection_id,
        new.q,
        new.instance_id,
        new.user_agent,
        new.call_id,
        new.cseq,
        float(new.expires),
        max_contacts,
        channel,
        payload,
    )
    return [_binding(row) for row in rows]


_COLUMNS_L = """l.id, l.aor, l.contact, l.transport, l.source_host, l.source_port,
    l.relay_instance, l.connection_id, l.q, l.instance_id, l.user_agent, l.call_id, l.cseq,
    l.expires_at, GREATEST(0, ceil(extract(epoch FROM l.expires_at - now())))::int,
    l.created_at, l.updated_at"""


async def refresh_bindings(
    conn: Executor,
    batch: list[tuple[NewBinding, str]],
    *,
    max_contacts: int,
    channel: str,
) -> list[list[Binding]]:
    """:func:`refresh_binding` for several REGISTERs at once, in ONE statement: each
    (binding, NOTIFY payload) of ``batch`` gets what :func:`refresh_binding` would return
    for it alone (``[]``: do the full registration). The AoRs must differ (a refresh of one
    AoR is judged on the bindings as they were before the statement)."""
    if len({new.aor for new, _ in batch}) != len(batch):
        raise ValueError("one AoR twice in a batch of refreshes")
    rows = await conn.fetch(
        f"""WITH input AS (
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[],
                                     $5::int[], $6::text[], $7::text[], $8::real[],
                                     $9::text[], $10::text[], $11::text[], $12::bigint[],
                                     $13::float8[], $14::text[])
                    WITH ORDINALITY AS i(aor, contact, transport, source_host, source_port,
                                         relay_instance, connection_id, q, instance_id,
                                         user_agent, call_id, cseq, expires, payload, idx)
            ), current AS (
                SELECT i.idx, (SELECT count(*) FROM locations c
                               WHERE c.aor = i.aor AND c.expires_at > now()) AS n
                FROM input i
            ), refreshed AS (
                UPDATE locations l SET
                    transport = i.transport, source_host = i.source_host,
                    source_port = i.source_port, relay_instance = i.relay_instance,
                    connection_id = i.connection_id, q = i.q, instance_id = i.instance_id,
                    user_agent = i.user_agent, call_id = i.call_id, cseq = i.cseq,
                    expires_at = now() + make_interval(secs => i.expires), updated_at = now()
                FROM input i JOIN current USING (idx)
                WHERE l.aor = i.aor AND l.contact = i.contact AND l.expires_at > now()
                    AND NOT (l.call_id = i.call_id AND l.cseq >= i.cseq)
                    AND current.n <= $15
                RETURNING i.idx, {_COLUMNS_L}
            ), notified AS (
                SELECT pg_notify($16, i.payload) FROM input i
                WHERE i.idx IN (SELECT idx FROM refreshed)
            )
            SELECT refreshed.* FROM refreshed CROSS JOIN (SELECT count(*) FROM notified) AS n
            UNION ALL
            SELECT r.idx, {_COLUMNS_L} FROM refreshed r
                JOIN locations l ON l.aor = r.aor AND l.expires_at > now() AND l.id <> r.id
            ORDER BY 1, 10 DESC, 18 DESC, 2""",
        [new.aor for new, _ in batch],
        [new.contact for new, _ in batch],
        [new.transport for new, _ in batch],
        [new.source_host for new, _ in batch],
        [new.source_port for new, _ in batch],
        [new.relay_instance for new, _ in batch],
        [new.connection_id for new, _ in batch],
        [new.q for new, _ in batch],
        [new.instance_id for new, _ in batch],
        [new.user_agent for new, _ in batch],
        [new.call_id for new, _ in batch],
        [new.cseq for new, _ in batch],
        [float(new.expires) for new, _ in batch],
        [payload for _, payload in batch],
        max_contacts,
        channel,
    )
    results: list[list[Binding]] = [[] for _ in batch]
    for row in rows:
        results[row[0] - 1].append(Binding(*tuple(row)[1:]))
    return results


async def delete_bindings(conn: Executor, ids: list[int]) -> int:
    status = await conn.execute("DELETE FROM locations WHERE id = ANY($1::bigint[])", ids)
    return int(status.rsplit(" ", 1)[-1])


async def delete_expired(conn: Executor) -> int:
    """Purge expired bindings; the number removed."""
    status = await conn.execute("DELETE FROM locations WHERE expires_at <= now()")
    return int(status.rsplit(" ", 1)[-1])


async def delete_connection_bindings(
    conn: Executor, relay_instance: str, connection_id: str
) -> list[str]:
    """Remove the bindings that live on one closed TCP/TLS connection; their AoRs."""
    rows = await conn.fetch(
        """DELETE FROM locations WHERE relay_instance = $1 AND connection_id = $2
           RETURNING aor""",
        relay_instance,
        connection_id,
    )
    return [row["aor"] for row in rows]


async def delete_instance_stream_bindings(conn: Executor, relay_instance: str) -> int:
    """At relay start: TCP/TLS bindings an earlier run of this relay held are dead."""
    status = await conn.execute(
        "DELETE FROM locations WHERE relay_instance = $1 AND connection_id IS NOT NULL",
        relay_instance,
    )
    return int(status.rsplit(" ", 1)[-1])


async def find_by_contact(conn: Executor, contact: str) -> Binding | None:
    """The unexpired binding whose contact is exactly ``contact`` (in-dialog requests
    addressed to a registered UA's Contact)."""
    row = await conn.fetchrow(
        f"""SELECT {_COLUMNS} FROM locations WHERE contact = $1 AND expires_at > now()
            ORDER BY updated_at DESC LIMIT 1""",
        contact,
    )
    return None if row is None else _binding(row)


# -- the control API (additive: the relay does not use these) ------------------------------


async def delete_aor_binding(conn: Executor, aor: str, binding_id: int) -> bool:
    """Remove one of the AoR's unexpired bindings; False when it has none with that id."""
    status = await conn.execute(
        "DELETE FROM locations WHERE id = $1 AND aor = $2 AND expires_at > now()",
        binding_id,
        aor,
    )
    return status != "DELETE 0"


async def delete_aor_bindings(conn: Executor, aor: str) -> int:
    """Remove every binding of the AoR (a user being deleted); how many."""
    status = await conn.execute("DELETE FROM locations WHERE aor = $1", aor)
    return int(status.rsplit(" ", 1)[-1])
