"""Test fixtures: a real PostgreSQL server for the session, a fresh database per test.

The server is ``IMSTACK_TEST_DATABASE_URL`` (or ``IMSTACK_DATABASE_URL``) when set — tests only
create and drop databases named ``imstack_test_*`` there — else a throwaway embedded server.
Each test's database is a copy of a migrated template (``CREATE DATABASE … TEMPLATE``).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from shared.config import Settings
from shared.db.embedded import EmbeddedPostgres
from shared.db.migrate import migrate
from shared.db.urls import with_database

TEMPLATE = f"imstack_test_template_{os.getpid()}"

# Settings read from the environment must not leak into tests.
for _name in list(os.environ):
    if _name.startswith("IMSTACK_") and _name not in (
        "IMSTACK_TEST_DATABASE_URL",
        "IMSTACK_DATABASE_URL",
    ):
        del os.environ[_name]


async def _admin(url: str, *statements: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


async def _migrate(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of the PostgreSQL server's maintenance database (``postgres``)."""
    given = os.environ.pop("IMSTACK_TEST_DATABASE_URL", None) or os.environ.pop(
        "IMSTACK_DATABASE_URL", None
    )
    if given:
        yield with_database(given, "postgres")
        return
    embedded = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), database="postgres")
    url = embedded.start()
    try:
        yield url
    finally:
        embedded.stop()


@pytest.fixture(scope="session")
def template_database(server_url: str) -> Iterator[str]:
    asyncio.run(
        _admin(
            server_url,
            f'DROP DATABASE IF EXISTS "{TEMPLATE}"',
            f'CREATE DATABASE "{TEMPLATE}"',
        )
    )
    asyncio.run(_migrate(with_database(server_url, TEMPLATE)))
    yield TEMPLATE
    asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)'))


def _new_database(server_url: str, template: str) -> Iterator[str]:
    name = f"imstack_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}" TEMPLATE "{template}"'))
    try:
        yield with_database(server_url, name)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
def database_url(server_url: str, template_database: str) -> Iterator[str]:
    """A fresh, migrated database for this test."""
    yield from _new_database(server_url, template_database)


@pytest.fixture
def empty_database_url(server_url: str) -> Iterator[str]:
    """A fresh database with no migrations applied."""
    yield from _new_database(server_url, "template0")


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=5)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        database_url=database_url,
        data_dir=tmp_path / "data",
        domain="example.test",
        api_host="127.0.0.1",
        database_connect_timeout=3,
    )


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Tests run on the event loop production uses (``imstack`` picks uvloop when installed)."""
    try:
        import uvloop
    except ImportError:
        return {"asyncio": asyncio.new_event_loop}
    return {"uvloop": uvloop.new_event_loop}
