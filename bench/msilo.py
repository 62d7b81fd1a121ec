"""Offline store benchmark: store rate to an offline user, drain time on registration.

    python bench/msilo.py                        # 1,000 and 5,000, then 5,000 after a restart
    python bench/msilo.py --counts 1000,5000,10000 --window 8 --restart-count 5000

Run by hand, never from the test suite. Like bench/sip_relay.py (whose set-up it reuses) it
starts an embedded PostgreSQL off CPU 0 (``--db-cpu``), creates the users over one
connection, and runs ``imstack serve relay msilo`` pinned to CPU 0; the load generator (this
process, with bench/sip_load.py's raw UDP UA that computes the digest itself) moves to
CPU 1. Each round uses a recipient of its own (``user0``, ``user1``...), never registered
before:

* **store**: ``--window`` MESSAGEs in flight (one per sender) until ``count`` were answered;
  each must get ``202 Accepted`` (sent after the row is committed). The rate is answered
  202 per second.
* **drain**: the stored bodies in storage order (id order, read from the database) are the
  expectation; then the recipient REGISTERs from a fresh UDP socket that answers every
  MESSAGE 200 at once. The drain time runs from the first REGISTER sent (its 401 included)
  to the last expected message received. Checked: order (the first delivery of each message
  in storage order), lost (never delivered), duplicates (a message delivered in more than
  one transaction; UDP retransmissions of one transaction are not duplicates), and that
  every message answered 202 was stored.
* **restart**: ``--restart-count`` messages are stored, the whole bundle is stopped
  (SIGTERM) and started again, and the recipient registers at once.

Prints one JSON object per round and a summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_cpu import CpuMeter  # noqa: E402
from bench.sip_load import Generator, Pending  # noqa: E402
from bench.sip_relay import PASSWORD, REALM, Database, Imstack, on_cpu  # noqa: E402

SENDER_BASE = 100  # senders are user100, user101...; recipients user0, user1...
_PREFIX_RE = re.compile(rb"^\[Offline message - [^\]]*\] ")
_CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)


def load_args(target: str, users: int, user_format: str = "user{i}") -> argparse.Namespace:
    return argparse.Namespace(
        target=target,
        realm=REALM,
        password=PASSWORD,
        users=users,
        user_format=user_format,
        timeout=8.0,
    )


class OfflineLoad(Generator):
    """bench/sip_load.py's generator, remembering which bodies were answered 202 and what
    arrived (Call-ID, body) when it plays the recipient."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.accepted: list[str] = []
        self.arrived: list[tuple[bytes, bytes]] = []
        self.last_arrival = 0.0

    def _finish(self, pending: Pending, status: int) -> None:
        if pending.kind == "MESSAGE" and pending.measured and status == 202:
            self.accepted.append(pending.body)
        super()._finish(pending, status)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        super()._answer(data, addr)
        if data.startswith(b"MESSAGE "):
            head, _, body = data.partition(b"\r\n\r\n")
            m = _CALL_ID_RE.search(head)
            self.arrived.append((m.group(1) if m else b"", _PREFIX_RE.sub(b"", body)))
            self.last_arrival = time.perf_counter()


@dataclass
class Round:
    name: str
    count: int
    window: int
    store: dict[str, object] = field(default_factory=dict)
    drain: dict[str, object] = field(default_factory=dict)


def store(
    target: str, recipient: int, count: int, window: int, tag: str, meter: CpuMeter
) -> dict[str, object]:
    """``count`` MESSAGEs to user{recipient} (offline), ``window`` in flight."""
    senders = list(range(SENDER_BASE, SENDER_BASE + window))
    gen = OfflineLoad(load_args(target, SENDER_BASE + window))
    # Warm-up (not measured): every sender gets its nonce, on a user nobody stores for.
    gen.names[0] = "nobody-here"
    for user in senders:
        warm = Pending("MESSAGE", user, time.perf_counter(), measured=False)
        gen.send("MESSAGE", user, to=0, pending=warm)
    deadline = time.perf_counter() + gen.timeout
    while gen.pending and time.perf_counter() < deadline:
        gen.poll(0.05)
    gen.expire(float("inf"))
    gen.names[0] = "user0"
    gen.completed.clear()

    free = deque(senders)
    sent = finished = 0
    meter.reset()
    start = time.perf_counter()
    next_expire = start + 0.5

    def launch(user: int) -> None:
        nonlocal sent
        body = f"{tag} {sent:06d}"
        sent += 1
        pending = Pending("MESSAGE", user, time.perf_counter(), measured=True, body=body)
        gen.send("MESSAGE", user, to=recipient, pending=pending)

    while free and sent < count:
        launch(free.popleft())
    while finished < count:
        gen.poll(0.05)
        now = time.perf_counter()
        if now >= next_expire:
            gen.expire(now)
            next_expire = now + 0.5
        while gen.completed:
            finished += 1
            free.append(gen.completed.popleft())
            if sent < count:
                launch(free.popleft())
    elapsed = time.perf_counter() - start
    summary = gen.stats.summary(elapsed)
    summary["rate"] = round(len(gen.accepted) / elapsed, 1)  # answered 202 per second
    summary.update(accepted_202=len(gen.accepted), seconds=round(elapsed, 3))
    summary.update(meter.per_item(len(gen.accepted)))
    summary["accepted_bodies"] = gen.accepted
    return summary


async def stored_bodies(url: str, aor: str) -> list[bytes]:
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT body FROM offline_messages WHERE recipient = $1 ORDER BY id", aor
        )
        return [bytes(row["body"]) for row in rows]
    finally:
        await conn.close()


def drain(
    target: str, url: str, recipient: int, idle_timeout: float, meter: CpuMeter
) -> dict[str, object]:
    """Register user{recipient} and take its stored messages; checks and times the drain."""
    aor = f"user{recipient}@{REALM}"
    expected = asyncio.run(stored_bodies(url, aor))
    ua = OfflineLoad(load_args(target, 1, user_format=f"user{recipient}"))
    want = set(expected)
    meter.reset()
    started = time.perf_counter()
    ua.send("REGISTER", 0)
    seen: set[bytes] = set()
    looked = 0
    done_at: float | None = None
    registered_at: float | None = None
    while True:
        ua.poll(0.05)
        if registered_at is None and ua.stats.ok:
            registered_at = time.perf_counter()
        for _, body in ua.arrived[looked:]:
            seen.add(body)
        looked = len(ua.arrived)
        if want <= seen and done_at is None:
            done_at = ua.last_arrival
            break
        last = max(ua.last_arrival, started)
        if time.perf_counter() - last > idle_timeout:
            break
    cpu = meter.per_item(len(expected))  # CPU of the drain, per stored message
    time.sleep(0.5)  # anything arriving late (duplicates) counts too
    ua.poll(0.0)

    first_call: dict[bytes, bytes] = {}
    duplicates = 0
    for call_id, body in ua.arrived:
        if body not in first_call:
            first_call[body] = call_id
        elif first_call[body] != call_id:
            duplicates += 1
    order = [body for body in first_call if body in want]
    left = asyncio.run(stored_bodies(url, aor))
    return {
        "expected": len(expected),
        "delivered": len(first_call),
        "lost": len(want - set(first_call)),
        "unexpected": len(set(first_call) - want),
        "duplicates": duplicates,
        "in_order": order == expected,
        "drain_s": None if done_at is None else round(done_at - started, 3),
        "register_ms": None if registered_at is None else round((registered_at - started) * 1e3, 1),
        "per_message_ms": None
        if done_at is None or not expected
        else round((done_at - started) * 1e3 / len(expected), 3),
        "left_stored": len(left),
        **cpu,
        "expected_bodies": expected,
    }


def check_stored(result: Round) -> None:
    accepted = {b.encode() for b in result.store.pop("accepted_bodies")}  # type: ignore[attr-defined]
    expected = set(result.drain.pop("expected_bodies"))  # type: ignore[arg-type]
    result.drain["accepted_not_stored"] = len(accepted - expected)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,5000", help="messages per store+drain round")
    parser.add_argument("--restart-count", type=int, default=5000, help="0: no restart round")
    parser.add_argument("--window", type=int, default=8, help="MESSAGEs in flight when storing")
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument(
        "--db-cpu", default="1", help="CPU for the embedded PostgreSQL, or 'none' (unpinned)"
    )
    args = parser.parse_args()
    counts = [int(c) for c in args.counts.split(",") if c.strip()]

    workdir = Path(tempfile.mkdtemp(prefix="imstack-msilo-bench-"))
    database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
    server: Imstack | None = None
    results: list[Round] = []
    try:
        database.start(SENDER_BASE + args.window)
        server = Imstack(workdir, database.url, ("relay", "msilo"))
        server.start()
        on_cpu(1)  # the load generator: off the server's CPU
        plan = [(f"{n} stored", n, False) for n in counts]
        if args.restart_count:
            plan.append((f"{args.restart_count} stored, restart", args.restart_count, True))
        for recipient, (name, count, restart) in enumerate(plan):
            result = Round(name, count, args.window)
            meter = CpuMeter(server.proc and server.proc.pid, database.embedded.pgdata)
            result.store = store(
                server.target, recipient, count, args.window, f"r{recipient}", meter
            )
            if restart:
                server.stop()
                server.start()
                meter = CpuMeter(server.proc and server.proc.pid, database.embedded.pgdata)
            result.drain = drain(server.target, database.url, recipient, args.idle_timeout, meter)
            check_stored(result)
            print(
                json.dumps({"round": name, "store": result.store, "drain": result.drain}),
                flush=True,
            )
            results.append(result)
    finally:
        if server is not None:
            server.stop()
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'round':<26} {'202/s':>8} {'p99 ms':>7} {'drain s':>8} {'ms/msg':>7} "
        f"{'lost':>5} {'dup':>4} {'order':>6} {'left':>5} {'cpu ms/msg imstack+pg':>22}"
    )
    for r in results:
        s, d = r.store, r.drain
        print(
            f"{r.name:<26} {s['rate']!s:>8} {s['p99_ms']!s:>7} {d['drain_s']!s:>8} "
            f"{d['per_message_ms']!s:>7} {d['lost']!s:>5} {d['duplicates']!s:>4} "
            f"{d['in_order']!s:>6} {d['left_stored']!s:>5} "
            f"{d.get('imstack_cpu_ms_per')!s:>10}+{d.get('postgres_cpu_ms_per')!s:<10}"
        )


if __name__ == "__main__":
    main()
