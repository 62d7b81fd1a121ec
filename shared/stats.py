"""Per-process service counters, and the task that publishes them to the database.

Each service (relay, msilo, imc, api) has one :class:`ServiceStats` per process,
``for_service(name)``. Code counts events with one-line hooks::

    RELAY_STATS.inc("messages_stored")
    RELAY_STATS.inc_label("sip_requests", request.method)

An increment is a dict lookup and an integer add: no lock (one event loop per process), no
I/O. Counts some component already keeps (``MsrpStats``, ``MsiloStats``, ...) are not
counted twice: the service hands the publisher a *source* that reads them when it publishes,
and *gauges* for current values (connections open, sessions).

:class:`StatsPublisher` upserts the service instance's ``service_stats`` row at start, every
``IMSTACK_STATS_INTERVAL`` seconds and once more when the service stops (see
``migrations/0010_service_stats.sql``); the control API sums the live rows. Counters are
counts since the process started, so they fall back to zero when it restarts (Prometheus
treats that as a counter reset).

What each service publishes (``GET /api/v1/statistics`` → ``totals``):

* relay — ``sip_requests`` {method}; ``forwarded`` {method} (forwarded requests that got a
  2xx: MESSAGEs relayed); ``messages_stored`` (202 after storing offline);
  ``messages_to_rooms``; from ``MsrpStats``: ``msrp_connections``, ``msrp_auth_ok``,
  ``msrp_auth_failed``, ``msrp_requests_relayed``, ``msrp_bytes_relayed``, ``msrp_rejects``
  {status}, ...; gauges ``msrp_connections_open``, ``msrp_sessions``. Its live sessions go
  to ``msrp_sessions`` (``services/relay/msrp/session_publisher.py``).
* msilo — from ``MsiloStats``: ``queued``, ``delivered``, ``failed``, ``expired``,
  ``registrations``, ``undeliverable`` (given up after permanent refusals), ``notices``
  (senders told of an expired or given-up message); ``emails_sent``, ``emails_failed``.
* imc — from ``ImcStats``: ``handled``, ``commands`` {command}, ``fanned_out``,
  ``stored_offline``, ``replayed``, ``invitations_failed``.
* api — ``requests`` {status}.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import asyncpg

from shared.db import stats as stats_db
from shared.db.pool import DATABASE_ERRORS

log = logging.getLogger(__name__)

#: A counter: a number, or a labelled family ``{label: number}``.
CounterValue = int | dict[str, int]
Source = Callable[[], Mapping[str, CounterValue]]
Gauge = Callable[[], float]

#: Distinct labels kept per family; more are counted under ``OTHER`` (labels can come from
#: the network, e.g. SIP methods, and must not grow without bound).
MAX_LABELS = 32
OTHER = "other"

#: The label name of each labelled family (for Prometheus); others are "label".
LABEL_NAMES: dict[str, str] = {
    "sip_requests": "method",
    "forwarded": "method",
    "msrp_rejects": "status",
    "commands": "command",
    "requests": "status",
}

#: Rows not refreshed for this many seconds past their ``stale_at`` are deleted.
GC_AFTER = 3600.0


class ServiceStats:
    """One service's event counters in this process."""

    __slots__ = ("counters", "labelled", "service")

    def __init__(self, service: str) -> None:
        self.service = service
        self.counters: dict[str, int] = {}
        self.labelled: dict[str, dict[str, int]] = {}

    def inc(self, name: str, n: int = 1) -> None:
        counters = self.counters
        counters[name] = counters.get(name, 0) + n

    def inc_label(self, family: str, label: str, n: int = 1) -> None:
        values = self.labelled.get(family)
        if values is None:
            values = self.labelled[family] = {}
        if label not in values and len(values) >= MAX_LABELS:
            label = OTHER
        values[label] = values.get(label, 0) + n

    def snapshot(self) -> dict[str, CounterValue]:
        out: dict[str, CounterValue] = dict(self.counters)
        for family, values in self.labelled.items():
            out[family] = dict(values)
        return out


_REGISTRY: dict[str, ServiceStats] = {}


def for_service(service: str) -> ServiceStats:
    """This process's counters of ``service`` (made on first use)."""
    stats = _REGISTRY.get(service)
    if stats is None:
        stats = _REGISTRY[service] = ServiceStats(service)
    return stats


def default_instance() -> str:
    """The instance id of a service without a stable one: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def relay_instance(sip_port: int) -> str:
    """The relay's instance id, stable across its restarts: ``host:sip_port`` (the key of
    ``locations.relay_instance``, so a restart can clean up what the last run left)."""
    return f"{socket.gethostname()}:{sip_port}"


def merge(into: dict[str, CounterValue], values: Mapping[str, CounterValue]) -> None:
    """Add ``values`` to ``into`` (numbers add up, labelled families add up per label)."""
    for name, value in values.items():
        have = into.get(name)
        if isinstance(value, dict):
            family = have if isinstance(have, dict) else {}
            for label, n in value.items():
                family[label] = family.get(label, 0) + int(n)
            into[name] = family
        elif isinstance(have, dict):
            have[OTHER] = have.get(OTHER, 0) + int(value)
        else:
            into[name] = (have or 0) + int(value)


def counters_of(obj: object, **renames: str) -> Source:
    """A source reading the int and ``{label: int}`` attributes of a stats object such as
    ``MsiloStats``; with ``renames`` (attribute → published name) only those attributes."""

    def read() -> dict[str, CounterValue]:
        out: dict[str, CounterValue] = {}
        for name, value in vars(obj).items():
            if renames and name not in renames:
                continue
            if isinstance(value, int) and not isinstance(value, bool):
                out[renames.get(name, name)] = value
            elif isinstance(value, dict):
                out[renames.get(name, name)] = {str(k): int(v) for k, v in value.items()}
        return out

    return read


class StatsPublisher:
    """Writes one service instance's counters to ``service_stats`` now and then."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        service: str,
        *,
        interval: float,
        instance: str | None = None,
        sources: Mapping[str, Source] | None = None,
        gauges: Mapping[str, Gauge] | None = None,
    ) -> None:
        self.pool = pool
        self.stats = for_service(service)
        self.service = service
        self.instance = instance or default_instance()
        self.interval = interval
        self.sources = dict(sources or {})
        self.gauges = dict(gauges or {})
        self.started_at = datetime.now(UTC)

    @property
    def stale_after(self) -> float:
        """Seconds after a publish at which readers stop believing the row."""
        return 3 * self.interval + 5.0

    def collect(self) -> tuple[dict[str, CounterValue], dict[str, float]]:
        counters = self.stats.snapshot()
        for name, source in self.sources.items():
            try:
                merge(counters, source())
            except Exception:  # a broken source must not stop the others
                log.exception("stats source %s of %s failed", name, self.service)
        gauges: dict[str, float] = {}
        for name, gauge in self.gauges.items():
            try:
                gauges[name] = float(gauge())
            except Exception:
                log.exception("stats gauge %s of %s failed", name, self.service)
        return counters, gauges

    async def publish(self) -> bool:
        """Upsert this instance's row and delete long-dead ones; False if the database failed."""
        counters, gauges = self.collect()
        started = time.perf_counter()
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await stats_db.upsert(
                    conn,
                    self.service,
                    self.instance,
                    counters=counters,
                    gauges=gauges,
                    started_at=self.started_at,
                    stale_after=self.stale_after,
                )
                await stats_db.delete_dead(conn, GC_AFTER)
        except DATABASE_ERRORS as exc:
            log.warning("%s: statistics not published: %s", self.service, exc)
            return False
        log.debug(
            "%s: statistics published in %.1f ms",
            self.service,
            1000 * (time.perf_counter() - started),
        )
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Publish now, every ``interval`` seconds until ``stop``, and once more then."""
        while not stop.is_set():
            await self.publish()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval)
        await self.publish()
