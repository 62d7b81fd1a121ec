"""``/metrics``: Prometheus text format, from a registry owned by one app (no globals).

Requests are counted and timed per route *template* (``/api/v1/users/{address}``), never per
raw path, so user names do not reach the metrics and the label set stays bounded.

``/metrics`` needs no token: Prometheus scrapers are usually set up without one, and what it
shows is aggregate counts and latencies, no names or contents. Keep the API port off the
public network (or filter ``/metrics`` at the proxy) where even counts are private.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import asyncpg
from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.deps import PoolDep
from shared.db import users as users_db

#: Label for requests no route matched (404s for unknown paths): one series for all of them.
UNMATCHED = "<unmatched>"

# Latency buckets in seconds: the target is p99 < 50 ms, so resolve 1-100 ms finely.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5)


@dataclass(frozen=True)
class ApiMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    users: Gauge

    @classmethod
    def create(cls) -> ApiMetrics:
        registry = CollectorRegistry(auto_describe=True)
        return cls(
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


router = APIRouter(tags=["metrics"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text."}},
)
async def metrics(request: Request, pool: PoolDep) -> Response:
    """Prometheus metrics (text format 0.0.4). Open, like /healthz: see the module docstring."""
    registry_metrics: ApiMetrics = request.app.state.metrics
    try:
        by_state = await users_db.count_users_by_state(pool)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        by_state = None  # the request metrics are still worth scraping without the database
    if by_state is not None:
        for state, count in by_state.items():
            registry_metrics.users.labels(state).set(count)
    return Response(generate_latest(registry_metrics.registry), media_type=CONTENT_TYPE_LATEST)
