"""``service_stats``: each live service instance's published counters (0010_service_stats.sql)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.db.types import Executor

#: A published counter: a number, or a labelled family ``{label: number}``.
Counters = dict[str, int | dict[str, int]]


@dataclass(frozen=True)
class InstanceStats:
    service: str
    instance: str
    counters: Counters
    gauges: dict[str, float]
    started_at: datetime
    updated_at: datetime


async def upsert(
    conn: Executor,
    service: str,
    instance: str,
    *,
    counters: Mapping[str, Any],
    gauges: Mapping[str, float],
    started_at: datetime,
    stale_after: float,
) -> None:
    await conn.execute(
        """
        INSERT INTO service_stats
               (service, instance, counters, gauges, started_at, updated_at, stale_at)
        VALUES ($1, $2, $3::jsonb, $4::jsonb, $5, now(), now() + make_interval(secs => $6))
        ON CONFLICT (service, instance) DO UPDATE
           SET counters = EXCLUDED.counters, gauges = EXCLUDED.gauges,
               started_at = EXCLUDED.started_at, updated_at = now(),
               stale_at = EXCLUDED.stale_at
        """,
        service,
        instance,
        json.dumps(counters),
        json.dumps(gauges),
        started_at,
        stale_after,
    )


async def delete_dead(conn: Executor, older_than: float) -> int:
    """Delete rows stale for more than ``older_than`` seconds; how many."""
    status: str = await conn.execute(
        "DELETE FROM service_stats WHERE stale_at < now() - make_interval(secs => $1)",
        older_than,
    )
    return int(status.rsplit(" ", 1)[-1])


def _load(value: object) -> Any:
    return json.loads(value) if isinstance(value, str) else value


async def live_instances(conn: Executor) -> list[InstanceStats]:
    """The rows of instances still publishing (``stale_at`` not passed), by service, instance."""
    rows = await conn.fetch(
        """
        SELECT service, instance, counters, gauges, started_at, updated_at
          FROM service_stats
         WHERE stale_at > now()
         ORDER BY service, instance
        """
    )
    return [
        InstanceStats(
            service=row["service"],
            instance=row["instance"],
            counters=_clean_counters(_load(row["counters"])),
            gauges={str(k): float(v) for k, v in _load(row["gauges"]).items()},
            started_at=row["started_at"],
            updated_at=row["updated_at"],
        )
        for row in rows
    ]


def _clean_counters(data: Mapping[str, Any]) -> Counters:
    out: Counters = {}
    for name, value in data.items():
        if isinstance(value, dict):
            out[str(name)] = {str(k): int(v) for k, v in value.items()}
        else:
            out[str(name)] = int(value)
    return out


@dataclass(frozen=True)
class TableCounts:
    """What the database itself knows (no published counter needed)."""

    bindings: int
    registered_users: int
    stored_messages: int
    stored_recipients: int
    rooms: int
    private_rooms: int
    room_members: int
    users: int
    outbound_pending: int


async def table_counts(conn: Executor) -> TableCounts:
    row = await conn.fetchrow(
        """
        SELECT (SELECT count(*) FROM locations WHERE expires_at > now()) AS bindings,
               (SELECT count(DISTINCT aor) FROM locations WHERE expires_at > now())
                   AS registered_users,
               (SELECT count(*) FROM offline_messages) AS stored_messages,
               (SELECT count(DISTINCT recipient) FROM offline_messages) AS stored_recipients,
               (SELECT count(*) FROM rooms) AS rooms,
               (SELECT count(*) FROM rooms WHERE private) AS private_rooms,
               (SELECT count(*) FROM room_members WHERE state = 'active' AND role <> 'invited')
                   AS room_members,
               (SELECT count(*) FROM users) AS users,
               (SELECT count(*) FROM outbound_messages WHERE status IN ('queued', 'sending'))
                   AS outbound_pending
        """
    )
    assert row is not None
    return TableCounts(**{key: int(value) for key, value in row.items()})
