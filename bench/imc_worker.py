"""imc alone: CPU and database round trips per chat message into a room of M members.

    python bench/imc_worker.py --members 100 --messages 200

Run by hand, never from the test suite. No SIP: an embedded PostgreSQL (pinned to CPU 1),
a room ``fanout@conference.bench.local`` with M members who all have a binding, and
``--messages`` chat messages queued in ``room_inbox`` as the relay's hand-over queues them.
This process (pinned to CPU 0) then runs imc's worker on them one after the other
(``handle_next``), and afterwards marks every copy delivered and lets the worker collect
the outcomes (``handle_outcomes``), as it does when the relay reports them. Prints the CPU
milliseconds of this process per message and per member copy for both phases, the wall
time per message, and the statements sent per message (counted on the connection).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sip_relay import on_cpu  # noqa: E402
from services.imc.worker import ImcWorker  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db import rooms  # noqa: E402
from shared.db.embedded import EmbeddedPostgres  # noqa: E402
from shared.db.migrate import migrate  # noqa: E402
from shared.db.pool import create_pool  # noqa: E402

DOMAIN = "bench.local"
ROOM = f"fanout@conference.{DOMAIN}"


async def prepare(url: str, members: int, messages: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        await migrate(conn)
        room_id = await rooms.create_room(conn, ROOM, owner=f"user0@{DOMAIN}", private=False)
        for i in range(1, members):
            await rooms.add_member(conn, room_id, f"user{i}@{DOMAIN}", rooms.Role.MEMBER)
        await conn.executemany(
            """INSERT INTO locations (aor, contact, transport, source_host, source_port,
                   relay_instance, call_id, cseq, expires_at)
               VALUES ($1, $2, 'udp', '127.0.0.1', 5070, 'bench', 'reg', 1,
                       now() + interval '1 hour')""",
            [(f"user{i}@{DOMAIN}", f"sip:user{i}@127.0.0.1:5070") for i in range(members)],
        )
        for n in range(messages):
            await rooms.enqueue(
                conn,
                room=ROOM,
                sender=f"user0@{DOMAIN}",
                sender_display=None,
                call_id=f"call-{n}",
                content_type="text/plain",
                body=f"message {n}".encode(),
            )
    finally:
        await conn.close()


class Counting:
    """Counts the statements the worker's pooled connections send."""

    def __init__(self) -> None:
        self.statements = 0
        self.elapsed: dict[str, float] = {}

    def setup(self, conn: asyncpg.Connection) -> None:
        conn.add_query_logger(self._count)

    def _count(self, record: asyncpg.connection.LoggedQuery) -> None:
        self.statements += 1
        key = re.sub(r"savepoint_\w+", "savepoint", " ".join(record.query.split()))[:60]
        self.elapsed[key] = self.elapsed.get(key, 0.0) + record.elapsed

    def reset(self) -> None:
        self.statements = 0
        self.elapsed.clear()


async def run(url: str, members: int, messages: int, history: int) -> dict[str, object]:
    settings = Settings(
        database_url=url,
        domain=DOMAIN,
        imc_history=history,
        imc_min_interval=0.0,
    )
    counting = Counting()
    pool = await create_pool(url, max_size=1)  # imstack's pool
    try:
        worker = ImcWorker(settings, pool, url)
        async with pool.acquire() as conn:
            counting.setup(conn)  # the pool's only connection
        # As handle_queued does: one connection for the lot (an older worker takes one
        # per message from the pool: with max_size=1, the same one).
        if "conn" in inspect.signature(worker.handle_next).parameters:
            conn = await pool.acquire()
            args: tuple[object, ...] = (conn,)
        else:
            args = ()
        await worker.handle_next(*args)  # warm-up: one message
        counting.reset()
        cpu, wall = time.process_time(), time.perf_counter()
        handled = 0
        while await worker.handle_next(*args):
            handled += 1
        if args:
            await pool.release(conn)
        fan_cpu, fan_wall = time.process_time() - cpu, time.perf_counter() - wall
        fan_statements = counting.statements
        slowest = sorted(counting.elapsed.items(), key=lambda item: -item[1])
        # A fan-out row (migration 0015) carries many copies; an older imc queued one each.
        fanout_rows = await pool.fetchval(
            """SELECT EXISTS (SELECT 1 FROM information_schema.columns
                   WHERE table_name = 'outbound_messages' AND column_name = 'recipients')"""
        )
        copies = await pool.fetchval(
            "SELECT coalesce(sum(cardinality(recipients)), 0) FROM outbound_messages"
            if fanout_rows
            else "SELECT count(*) FROM outbound_messages WHERE source = 'imc-chat'"
        )
        await pool.execute(
            """UPDATE outbound_messages SET status = 'delivered', last_status = 200,
                   finished_at = now()"""
        )
        cpu = time.process_time()
        collected = 0
        while n := await worker.handle_outcomes():
            collected += n
        out_cpu = time.process_time() - cpu
    finally:
        await pool.close()
    per = max(handled, 1)
    return {
        "members": members,
        "messages": handled,
        "copies_queued": copies,
        "fanout_cpu_ms_per_message": round(fan_cpu * 1e3 / per, 3),
        "fanout_cpu_ms_per_copy": round(fan_cpu * 1e3 / max(copies, 1), 4),
        "fanout_wall_ms_per_message": round(fan_wall * 1e3 / per, 3),
        "statements_per_message": round(fan_statements / per, 1),
        "statement_ms_per_message": {q: round(t * 1e3 / per, 3) for q, t in slowest[:12]},
        "outcome_rows_collected": collected,
        "outcomes_cpu_ms_per_copy": round(out_cpu * 1e3 / max(copies, 1), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=100)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--history", type=int, default=20, help="IMSTACK_IMC_HISTORY")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="imstack-imc-worker-"))
    embedded = EmbeddedPostgres(workdir / "db")
    try:
        previous = on_cpu(1)
        url = embedded.start()
        if previous is not None:
            on_cpu(0)
        asyncio.run(prepare(url, args.members, args.messages + 1))
        print(json.dumps(asyncio.run(run(url, args.members, args.messages, args.history))))
    finally:
        embedded.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
