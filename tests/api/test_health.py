from __future__ import annotations

import asyncpg
import httpx

from services.api.app import create_app
from shared.config import Settings
from shared.db.urls import database_name, with_database


def client_for(settings: Settings, pool: asyncpg.Pool) -> httpx.AsyncClient:
    app = create_app(settings, pool)
    app.state.pool = pool  # the lifespan would set it; ASGITransport does not run it
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


async def test_healthz_answers_while_the_process_lives(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as client:
        response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_is_200_with_a_migrated_database(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["status"] == "ready"
    assert response.json()["schema_version"] >= 1


async def test_readyz_is_503_when_the_schema_is_not_migrated(
    settings: Settings, empty_database_url: str
) -> None:
    pool = await asyncpg.create_pool(empty_database_url, min_size=1, max_size=2)
    try:
        async with client_for(settings, pool) as client:
            response = await client.get("/readyz")
    finally:
        await pool.close()
    assert response.status_code == 503
    assert response.json()["database"] == "not migrated"


async def test_readyz_is_503_when_the_database_goes_away(
    settings: Settings, database_url: str, server_url: str
) -> None:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        async with client_for(settings, pool) as client:
            assert (await client.get("/readyz")).status_code == 200
            name = database_name(database_url)
            admin = await asyncpg.connect(with_database(server_url, "postgres"))
            try:
                await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
            finally:
                await admin.close()
            response = await client.get("/readyz")
            assert (await client.get("/healthz")).status_code == 200
    finally:
        pool.terminate()
    assert response.status_code == 503
    assert response.json()["status"] == "unavailable"
    assert response.json()["database"] == "unreachable"
