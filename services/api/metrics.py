"""``/metrics``: Prometheus text format, from a registry owned by one app (no globals).

Requests are counted and timed per route *template* (``/api/v1/users/{address}``), never per
raw path, so user names do not reach the metrics and the label set stays bounded.

The bundle's statistics (``/api/v1/statistics``: registrations, MSRP connections, sessions
and bytes, stored/delivered/expired messages, rooms, members, fan-out, e-mails) are read at
each scrape and exposed as ``imstack_*`` gauges and counters. Event counters are the sums
over the live service instances: they drop when an instance restarts, which Prometheus's
``rate()`` treats as a counter reset.

``/metrics`` needs no token by default (IMSTACK_API_METRICS_PUBLIC=true): Prometheus scrapers
are usually set up without one, and what it shows is aggregate counts and latencies, no names
or contents. Where even counts are private, set IMSTACK_API_METRICS_PUBLIC=false: then it
needs a bearer token like ``/api/v1`` (a read-only one suffices; 401 without a valid one) —
Prometheus sends one with ``authorization: {credentials: <token>}`` in the scrape config.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.deps import PoolDep, require_token
from services.api.errors import ErrorBody
from services.api.routers.statistics import collect_statistics
from services.api.schemas.statistics import StatisticsPublic
from shared.db import users as users_db
from shared.db.pool import DATABASE_ERRORS
from shared.stats import LABEL_NAMES, for_service

#: Label for requests no route matched (404s for unknown paths): one series for all of them.
UNMATCHED = "<unmatched>"

# Latency buckets in seconds: the target is p99 < 50 ms, so resolve 1-100 ms finely.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


class StatisticsCollector(Collector):
    """The bundle's statistics as of the last scrape (set by the ``/metrics`` handler)."""

    def __init__(self) -> None:
        self.latest: StatisticsPublic | None = None

    def describe(self) -> list[Metric]:
        return []  # families depend on what the services published

    def collect(self) -> Iterator[Metric]:
        s = self.latest
        if s is None:
            return
        gauges = {
            "imstack_registrations": ("Unexpired SIP bindings.", s.registrations.bindings),
            "imstack_registered_users": ("Users with a binding.", s.registrations.users),
            "imstack_msrp_connections": ("MSRP connections open.", s.msrp.connections_open),
            "imstack_msrp_sessions": ("Live MSRP relay sessions.", s.msrp.sessions),
            "imstack_stored_messages": ("Messages in the offline store.", s.messages.stored),
            "imstack_rooms": ("Chat rooms.", s.rooms.rooms),
            "imstack_room_members": ("Active room members.", s.rooms.members),
        }
        for name, (doc, value) in gauges.items():
            yield GaugeMetricFamily(name, doc, value=value)
        counters = {
            "imstack_msrp_connections_accepted": (
                "MSRP connections since start.",
                s.msrp.connections,
            ),
            "imstack_msrp_bytes_relayed": ("MSRP body bytes relayed.", s.msrp.bytes_relayed),
            "imstack_messages_stored": ("MESSAGEs stored offline.", s.messages.stored_since_start),
            "imstack_messages_relayed": ("MESSAGEs forwarded (2xx).", s.messages.relayed),
            "imstack_messages_delivered": ("Stored messages delivered.", s.messages.delivered),
            "imstack_messages_expired": ("Stored messages expired.", s.messages.expired),
            "imstack_room_fanout": ("Chat copies fanned out to members.", s.rooms.fanned_out),
            "imstack_emails_sent": ("E-mail notices sent.", s.emails.sent),
            "imstack_emails_failed": ("E-mail notices that failed.", s.emails.failed),
        }
        for name, (doc, value) in counters.items():
            yield CounterMetricFamily(name, doc, value=value)
        # Every published counter, per service (labelled families keep their label).
        events = CounterMetricFamily(
            "imstack_service_events",
            "Published event counters of the live service instances, summed per service.",
            labels=["service", "event", "label"],
        )
        for service, values in sorted(s.totals.items()):
            for event, counted in sorted(values.items()):
                if isinstance(counted, dict):
                    for label, n in sorted(counted.items()):
                        events.add_metric([service, event, label], n)
                else:
                    events.add_metric([service, event, ""], counted)
        yield events
        instances = GaugeMetricFamily(
            "imstack_service_instances", "Live service instances.", labels=["service"]
        )
        per_service: dict[str, int] = {}
        for instance in s.services:
            per_service[instance.service] = per_service.get(instance.service, 0) + 1
        for service, count in sorted(per_service.items()):
            instances.add_metric([service], count)
        yield instances
        commands = CounterMetricFamily(
            "imstack_room_commands", "Room commands run, by name.", labels=["command"]
        )
        for command, count in sorted(s.rooms.commands.items()):
            commands.add_metric([command], count)
        yield commands
        methods = CounterMetricFamily(
            "imstack_sip_requests",
            "SIP requests received by the relays, by method.",
            labels=[LABEL_NAMES["sip_requests"]],
        )
        sip = s.totals.get("relay", {}).get("sip_requests", {})
        for method, count in sorted(sip.items() if isinstance(sip, dict) else ()):
            methods.add_metric([method], count)
        yield methods


@dataclass(frozen=True)
class ApiMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    users: Gauge
    statistics: StatisticsCollector = field(default_factory=StatisticsCollector)

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry(auto_describe=True)
        statistics = StatisticsCollector()
        registry.register(statistics)
        return cls(
            statistics=statistics,
            registry=registry,
            requests=Counter(
                "imstack_api_requests",
                "Control API requests answered, by method, route and status.",
                ["method", "route", "status"],
                registry=registry,
            ),
            latency=Histogram(
                "imstack_api_request_duration_seconds",
                "Control API request latency, by method, route and status.",
                ["method", "route", "status"],
                buckets=LATENCY_BUCKETS,
                registry=registry,
            ),
            users=Gauge(
                "imstack_users",
                "Users in the database, by state (active or disabled).",
                ["state"],
                registry=registry,
            ),
        )


class MetricsMiddleware:
    """Counts and times every HTTP request (pure ASGI: no per-request task or body copy)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            labels = (scope["method"], route_template(scope), str(status))
            for_service("api").inc_label("requests", labels[2])
            self.metrics.requests.labels(*labels).inc()
            self.metrics.latency.labels(*labels).observe(time.perf_counter() - started)


def route_template(scope: Scope) -> str:
    """The path template of the route that answered (``/api/v1/users/{address}``).

    Depending on the FastAPI version, the matched route's ``path`` is the full template or only
    the part below the including routers' prefixes. Prefixes are literal, so the missing head is
    the same number of leading segments of the request path."""
    template = getattr(scope.get("route"), "path", None)
    if not isinstance(template, str) or not template.startswith("/"):
        return UNMATCHED
    if ":path}" in template:  # a parameter spanning segments: the relative template will do
        return template
    segments = str(scope.get("path", "")).split("/")
    head = len(segments) - len(template.split("/"))
    return "/".join(segments[: head + 1]) + template if head > 0 else template


def metrics_router(public: bool) -> APIRouter:
    """The ``/metrics`` route: open when ``public`` (IMSTACK_API_METRICS_PUBLIC), else behind
    the token dependency of ``/api/v1`` (any scope), which the OpenAPI schema then shows."""
    router = APIRouter(tags=["metrics"], dependencies=[] if public else [Depends(require_token)])
    router.add_api_route(
        "/metrics",
        metrics,
        methods=["GET"],
        response_class=Response,
        responses=_RESPONSES if public else {**_RESPONSES, 401: _UNAUTHORIZED},
    )
    return router


_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}
}
_UNAUTHORIZED: dict[str, Any] = {
    "model": ErrorBody,
    "description": "IMSTACK_API_METRICS_PUBLIC is false and no valid token was given.",
}


async def metrics(request: Request, pool: PoolDep) -> Response:
    """Prometheus metrics (text format 0.0.4). Open like /healthz unless
    IMSTACK_API_METRICS_PUBLIC is false: then a token (read-only suffices) is required."""
    registry_metrics: ApiMetrics = request.app.state.metrics
    try:
        async with (
            pool.acquire() as conn,
            conn.transaction(isolation="repeatable_read", readonly=True),
        ):
            by_state = await users_db.count_users_by_state(conn)
            statistics = await collect_statistics(conn)
    except DATABASE_ERRORS:
        by_state = None  # the request metrics are still worth scraping without the database
        statistics = None
    if by_state is not None:
        for state, count in by_state.items():
            registry_metrics.users.labels(state).set(count)
    registry_metrics.statistics.latest = statistics
    return Response(generate_latest(registry_metrics.registry), media_type=CONTENT_TYPE_LATEST)
