"""Talking to the control API in-process: the real app and database, no network."""

from __future__ import annotations

import asyncpg
import httpx

from services.api.app import create_app
from shared.config import Settings
from shared.db.tokens import Scope, create_token


def client_for(
    settings: Settings, pool: asyncpg.Pool, token: str | None = None
) -> httpx.AsyncClient:
    app = create_app(settings, pool)
    app.state.pool = pool  # the lifespan would set it; ASGITransport does not run it
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api", headers=headers
    )


async def new_token(pool: asyncpg.Pool, name: str = "test", scope: Scope = Scope.ADMIN) -> str:
    return (await create_token(pool, name, scope)).secret
