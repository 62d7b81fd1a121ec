"""The control API: a FastAPI app factory. The full API grows router by router."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version

import asyncpg
from fastapi import FastAPI

from services.api.routers import health
from shared.config import Settings
from shared.db.pool import create_pool


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
    app.include_router(health.router)
    return app
