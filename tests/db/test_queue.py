from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db.queue import WakeReason, Wakeup, claim


@pytest.fixture
async def jobs(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("CREATE TABLE jobs (id int PRIMARY KEY, done_by text)")
    await pool.execute("INSERT INTO jobs (id) SELECT generate_series(1, 60)")
    return pool


async def consume(pool: asyncpg.Pool, name: str, taken: list[int]) -> None:
    while True:
        async with claim(pool, "jobs", where="done_by IS NULL", limit=4) as (conn, rows):
            if not rows:
                return
            for row in rows:
                taken.append(row["id"])
                await conn.execute("UPDATE jobs SET done_by = $2 WHERE id = $1", row["id"], name)
            await asyncio.sleep(0.01)  # hold the claim while "working"


async def test_two_consumers_never_claim_the_same_row(jobs: asyncpg.Pool) -> None:
    a: list[int] = []
    b: list[int] = []
    await asyncio.gather(consume(jobs, "a", a), consume(jobs, "b", b))
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(1, 61))
    assert a and b, "one consumer was blocked instead of skipping locked rows"
    assert await jobs.fetchval("SELECT count(*) FROM jobs WHERE done_by IS NULL") == 0


async def test_a_claim_that_fails_releases_its_rows(jobs: asyncpg.Pool) -> None:
    with pytest.raises(RuntimeError):
        async with claim(jobs, "jobs", where="done_by IS NULL", limit=2) as (conn, rows):
            assert [r["id"] for r in rows] == [1, 2]
            await conn.execute("UPDATE jobs SET done_by = 'crashed' WHERE id = 1")
            raise RuntimeError("worker crashed")
    async with claim(jobs, "jobs", where="done_by IS NULL", limit=2) as (_, rows):
        assert [r["id"] for r in rows] == [1, 2]


async def test_claim_skips_rows_held_by_another_transaction(jobs: asyncpg.Pool) -> None:
    async with (
        claim(jobs, "jobs", limit=3) as (_, first),
        claim(jobs, "jobs", limit=3) as (_, second),
    ):
        assert [r["id"] for r in first] == [1, 2, 3]
        assert [r["id"] for r in second] == [4, 5, 6]


async def test_claim_refuses_a_table_name_that_is_not_an_identifier(jobs: asyncpg.Pool) -> None:
    with pytest.raises(ValueError):
        async with claim(jobs, "jobs; DROP TABLE jobs"):
            pass


async def test_wakeup_returns_on_notify_timeout_or_stop() -> None:
    wake = Wakeup()
    stop = asyncio.Event()
    assert await wake.wait(0.05, stop) is WakeReason.TIMEOUT
    wake.wake()  # a wake-up before the wait is not lost
    assert await wake.wait(10, stop) is WakeReason.NOTIFIED
    asyncio.get_running_loop().call_later(0.05, wake.wake)
    assert await asyncio.wait_for(wake.wait(10, stop), 5) is WakeReason.NOTIFIED
    asyncio.get_running_loop().call_later(0.05, stop.set)
    assert await asyncio.wait_for(wake.wait(10, stop), 5) is WakeReason.STOP
