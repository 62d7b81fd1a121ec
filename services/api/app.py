"""The control API: a FastAPI app factory. The full API grows router by router.

``/healthz``, ``/readyz`` and (unless IMSTACK_API_METRICS_PUBLIC is false) ``/metrics`` are
open; everything under ``/api/v1`` needs a bearer token (the v1 router's dependency), and
changes need an admin one (``AdminDep``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import asyncpg
from fastapi import APIRouter, Depends, FastAPI

from services.api.deps import TokenCache, require_token
from services.api.errors import ERROR_RESPONSES, install_error_handlers
from services.api.limits import BodyLimitMiddleware
from services.api.metrics import ApiMetrics, MetricsMiddleware, metrics_router
from services.api.routers import health, messages, registrations, rooms, sessions, statistics, users
from services.api.routers.messages import MAX_BODY_BYTES
from shared.config import Settings
from shared.db.pool import create_pool

#: The largest request body accepted (security review G9). The largest send the API accepts
#: (``MAX_BODY_BYTES`` of body, each byte at most six once JSON-escaped) fits; a bigger body is
#: refused 413 before it is read (at once when its Content-Length says so, else when the bytes
#: received pass the cap).
MAX_REQUEST_BYTES = 1 << 20
assert MAX_REQUEST_BYTES > 6 * MAX_BODY_BYTES + 65536  # and the other fields


def create_app(settings: Settings, pool: asyncpg.Pool | None = None) -> FastAPI:
    """The API app. With ``pool`` (the all-in-one server) it shares that pool; without one its
    lifespan opens a pool on ``settings.database_url`` and closes it at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is not None:
            app.state.pool = pool
            yield
            return
        if settings.database_url is None:
            raise RuntimeError("create_app needs a pool or IMSTACK_DATABASE_URL")
        own = await create_pool(
            settings.database_url,
            connect_timeout=settings.database_connect_timeout,
            max_size=settings.database_pool_size,
        )
        app.state.pool = own
        try:
            yield
        finally:
            await own.close()

    app = FastAPI(
        title="imstack control API",
        version=version("imstack"),
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = ApiMetrics.create()
    app.state.token_cache = TokenCache(settings.api_token_cache_seconds)
    app.add_middleware(BodyLimitMiddleware, limit=MAX_REQUEST_BYTES)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics_router(settings.api_metrics_public))
    app.include_router(api_v1_router())
    return app


def api_v1_router() -> APIRouter:
    """Everything under ``/api/v1``: a token is required on every route."""
    v1 = APIRouter(
        prefix="/api/v1", dependencies=[Depends(require_token)], responses=ERROR_RESPONSES
    )
    # The routes a client calls most often first: a request is matched against the routes
    # in order (POST /messages and /rooms were behind some 25 routes: 0.1-0.2 ms each).
    v1.include_router(messages.router)
    v1.include_router(rooms.router)
    v1.include_router(users.router)
    v1.include_router(registrations.router)
    v1.include_router(sessions.router)
    v1.include_router(statistics.router)
    return v1
