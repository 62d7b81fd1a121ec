from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db.migrate import (
    MIGRATION_LOCK_KEY,
    Migration,
    is_migrated,
    load_migrations,
    migrate,
)


def test_migrations_are_numbered_in_order_without_gaps() -> None:
    versions = [m.version for m in load_migrations()]
    assert versions == list(range(1, len(versions) + 1))


async def test_migrate_applies_everything_in_order_once(empty_database_url: str) -> None:
    conn = await asyncpg.connect(empty_database_url)
    try:
        assert not await is_migrated(conn)
        applied = await migrate(conn)
        assert [m.version for m in applied] == [m.version for m in load_migrations()]
        rows = await conn.fetch(
            "SELECT version FROM schema_migrations ORDER BY applied_at, version"
        )
        assert [r["version"] for r in rows] == [m.version for m in load_migrations()]
        assert await is_migrated(conn)
        # Idempotent: a second run applies nothing and changes nothing.
        assert await migrate(conn) == []
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == len(rows)
        assert await conn.fetchval("SELECT to_regclass('users') IS NOT NULL")
    finally:
        await conn.close()


async def test_concurrent_migrators_apply_each_migration_exactly_once(
    empty_database_url: str,
) -> None:
    conns = [await asyncpg.connect(empty_database_url) for _ in range(4)]
    try:
        results = await asyncio.gather(*(migrate(c) for c in conns))
        applied = [m.version for result in results for m in result]
        assert sorted(applied) == [m.version for m in load_migrations()]
        assert await conns[0].fetchval("SELECT count(*) FROM schema_migrations") == len(applied)
    finally:
        for c in conns:
            await c.close()


async def test_migrator_waits_for_the_lock_holder(empty_database_url: str) -> None:
    holder = await asyncpg.connect(empty_database_url)
    waiter = await asyncpg.connect(empty_database_url)
    try:
        await holder.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK_KEY)
        task = asyncio.create_task(migrate(waiter))
        await asyncio.sleep(0.3)
        assert not task.done(), "migration ran while another process held the lock"
        await holder.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK_KEY)
        applied = await asyncio.wait_for(task, 10)
        assert len(applied) == len(load_migrations())
    finally:
        await holder.close()
        await waiter.close()


async def test_a_failing_migration_is_rolled_back_and_stops_the_run(
    empty_database_url: str,
) -> None:
    good = Migration(1, "good", "CREATE TABLE good (id int)")
    bad = Migration(2, "bad", "CREATE TABLE half_applied (id int); SELECT * FROM no_such_table")
    after = Migration(3, "after", "CREATE TABLE after_bad (id int)")
    conn = await asyncpg.connect(empty_database_url)
    try:
        with pytest.raises(asyncpg.UndefinedTableError):
            await migrate(conn, [good, bad, after])
        assert await conn.fetchval("SELECT array_agg(version) FROM schema_migrations") == [1]
        assert await conn.fetchval("SELECT to_regclass('good') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('half_applied') IS NOT NULL")
        assert not await conn.fetchval("SELECT to_regclass('after_bad') IS NOT NULL")
        # The lock was released: a fixed run goes through.
        fixed = Migration(2, "bad", "CREATE TABLE half_applied (id int)")
        assert [m.version for m in await migrate(conn, [good, fixed, after])] == [2, 3]
    finally:
        await conn.close()
