"""``/api/v1/statistics``: registrations, MSRP, stored/delivered/expired messages, rooms,
e-mails — per service instance and in total. Any token may read them.

What the database holds is counted in the tables (bindings, stored messages, rooms,
members: exact now); events are summed from the counters each live service instance
publishes to ``service_stats`` every IMSTACK_STATS_INTERVAL seconds (``shared/stats.py``).
"""

from __future__ import annotations

from fastapi import APIRouter

from services.api.deps import PoolDep
from services.api.schemas.statistics import (
    CounterValue,
    EmailStatistics,
    InstancePublic,
    MessageStatistics,
    MsrpStatistics,
    RegistrationStats,
    RoomStatistics,
    StatisticsPublic,
)
from shared.db import msrp_sessions as sessions_db
from shared.db import stats as stats_db
from shared.db.types import Executor
from shared.stats import merge

router = APIRouter(prefix="/statistics", tags=["statistics"])


def _number(totals: dict[str, dict[str, CounterValue]], service: str, name: str) -> int:
    value = totals.get(service, {}).get(name, 0)
    return sum(value.values()) if isinstance(value, dict) else value


def _family(totals: dict[str, dict[str, CounterValue]], service: str, name: str) -> dict[str, int]:
    value = totals.get(service, {}).get(name, {})
    return dict(value) if isinstance(value, dict) else {}


async def collect_statistics(conn: Executor) -> StatisticsPublic:
    """Everything ``/statistics`` and ``/metrics`` report (run it in one snapshot)."""
    tables = await stats_db.table_counts(conn)
    sessions = await sessions_db.count_live(conn)
    instances = await stats_db.live_instances(conn)
    totals: dict[str, dict[str, CounterValue]] = {}
    gauges: dict[str, float] = {}
    for instance in instances:
        merge(totals.setdefault(instance.service, {}), instance.counters)
        for name, value in instance.gauges.items():
            key = f"{instance.service}.{name}"
            gauges[key] = gauges.get(key, 0.0) + value

    def n(service: str, name: str) -> int:
        return _number(totals, service, name)

    return StatisticsPublic(
        users=tables.users,
        registrations=RegistrationStats(bindings=tables.bindings, users=tables.registered_users),
        msrp=MsrpStatistics(
            connections_open=int(gauges.get("relay.msrp_connections_open", 0)),
            connections=n("relay", "msrp_connections"),
            sessions=sessions,
            auth_ok=n("relay", "msrp_auth_ok"),
            auth_failed=n("relay", "msrp_auth_failed"),
            requests_relayed=n("relay", "msrp_requests_relayed"),
            bytes_relayed=n("relay", "msrp_bytes_relayed"),
        ),
        messages=MessageStatistics(
            stored=tables.stored_messages,
            stored_recipients=tables.stored_recipients,
            stored_since_start=n("relay", "messages_stored"),
            relayed=_family(totals, "relay", "forwarded").get("MESSAGE", 0),
            to_rooms=n("relay", "messages_to_rooms"),
            delivered=n("msilo", "delivered"),
            delivery_failed=n("msilo", "failed"),
            expired=n("msilo", "expired"),
            undeliverable=n("msilo", "undeliverable"),
            outbound_pending=tables.outbound_pending,
        ),
        rooms=RoomStatistics(
            rooms=tables.rooms,
            private=tables.private_rooms,
            members=tables.room_members,
            handled=n("imc", "handled"),
            fanned_out=n("imc", "fanned_out"),
            stored_offline=n("imc", "stored_offline"),
            commands=_family(totals, "imc", "commands"),
        ),
        emails=EmailStatistics(sent=n("msilo", "emails_sent"), failed=n("msilo", "emails_failed")),
        totals=totals,
        services=[
            InstancePublic(
                service=i.service,
                instance=i.instance,
                started_at=i.started_at,
                updated_at=i.updated_at,
                counters=dict(i.counters),
                gauges=i.gauges,
            )
            for i in instances
        ],
    )


@router.get("")
async def get_statistics(pool: PoolDep) -> StatisticsPublic:
    """Statistics of the whole bundle: table counts now, event counts of live instances."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return await collect_statistics(conn)
