"""Chat room fan-out benchmark: one MESSAGE into a room of M registered members, time until
all M-1 copies arrived; sustained member deliveries per second.

    python bench/imc_fanout.py                         # M = 10, 50, 100
    python bench/imc_fanout.py --members 100 --messages 200 --window 8 --history 0

Run by hand, never from the test suite. Like bench/sip_relay.py (whose set-up it reuses) it
starts an embedded PostgreSQL off CPU 0 (``--db-cpu``), creates the users over one
connection, and runs ``imstack serve relay imc msilo`` pinned to CPU 0; this process (the
members: bench/sip_load.py's raw UDP UA, digest computed here, every member's contact on its
one socket, every MESSAGE answered 200 at once) moves to CPU 1. ``user0`` sends; rooms
``fanout<M>`` are created in the database with ``user0`` as owner and ``user1`` ..
``user<M-1>`` as members (what ``#add`` leaves), history as configured (``--history``,
default imstack's 20: every chat message is also kept).

* **latency**: ``--messages`` messages one after the other (after one warm-up message); for
  each, the time from sending the (authenticated) MESSAGE to the arrival of the last of its
  M-1 copies. p50/p99 over the messages.
* **sustained**: ``--window`` messages in flight for ``--duration`` seconds (a message is in
  flight until all its copies arrived or ``--timeout`` passed); deliveries per second =
  copies arrived / time from the first send to the last arrival.

Checked in both: lost copies (a member that never got a message), duplicates (a member that
got one message in more than one transaction; UDP retransmissions of one transaction are
not duplicates) and echoes (a copy to the sender). Prints one JSON object per run and a
summary table.
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
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_cpu import CpuMeter  # noqa: E402
from bench.sip_load import Generator, Pending  # noqa: E402
from bench.sip_relay import PASSWORD, REALM, Database, Imstack, on_cpu  # noqa: E402
from shared.db import rooms  # noqa: E402

CONFERENCE = f"conference.{REALM}"
SENDER = 0
_CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_RURI_USER_RE = re.compile(rb"^MESSAGE sips?:([^@;>\s]+)@")
_SEQ_RE = re.compile(rb"\]: m(\d+)$")


@dataclass
class RoomPending(Pending):
    room_uri: str = ""


@dataclass
class Copies:
    """What arrived of one room message."""

    first_sent: float
    expected: int
    members: dict[bytes, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    last_arrival: float = 0.0
    done: bool = False


class RoomLoad(Generator):
    """bench/sip_load.py's generator that sends to a room URI and records, per message, which
    member got it in which transaction."""

    def __init__(self, args: argparse.Namespace) -> None:
        super().__init__(args)
        self.copies: dict[int, Copies] = {}
        self.echoes = 0
        self.strays = 0  # copies of no message of this run (or bodies not understood)
        self.sender_name = self.names[SENDER].encode()

    def send(self, kind: str, user: int, *, to: int = 0, pending: Pending | None = None) -> None:
        if not isinstance(pending, RoomPending):
            super().send(kind, user, to=to, pending=pending)
            return
        n = next(self.counter)
        branch = f"z9hG4bK{self.run_id}{n}"
        name = self.names[user]
        self.cseq[user] += 1
        uri = pending.room_uri
        head = (
            f"MESSAGE {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{name}@{self.realm}>;tag={n}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: room-{self.run_id}-{n}\r\n"
            f"CSeq: {self.cseq[user]} MESSAGE\r\n"
            "Content-Type: text/plain\r\n"
        )
        body = pending.body
        data = f"{head}{self._authorization(user, kind, uri)}Content-Length: {len(body)}\r\n\r\n"
        self.pending[branch.encode()] = pending
        self.sock.sendto((data + body).encode(), self.target)

    def send_to_room(self, room_uri: str, seq: int, expected: int) -> None:
        now = time.perf_counter()
        self.copies[seq] = Copies(now, expected)
        pending = RoomPending(
            "MESSAGE", SENDER, now, measured=True, body=f"m{seq}", room_uri=room_uri
        )
        self.send("MESSAGE", SENDER, pending=pending)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        super()._answer(data, addr)
        if not data.startswith(b"MESSAGE "):
            return
        now = time.perf_counter()
        head, _, body = data.partition(b"\r\n\r\n")
        user = _RURI_USER_RE.match(head)
        call_id = _CALL_ID_RE.search(head)
        seq = _SEQ_RE.search(body)
        copies = self.copies.get(int(seq.group(1))) if seq else None
        if user is None or call_id is None or copies is None:
            self.strays += 1
            return
        if user.group(1) == self.sender_name:
            self.echoes += 1
            return
        transactions = copies.members[user.group(1)]
        if call_id.group(1) in transactions:
            return  # a retransmission
        transactions.add(call_id.group(1))
        if len(transactions) == 1:
            copies.last_arrival = now
            if len(copies.members) == copies.expected:
                copies.done = True


def load_args(target: str, users: int, timeout: float) -> argparse.Namespace:
    return argparse.Namespace(
        target=target,
        realm=REALM,
        password=PASSWORD,
        users=users,
        user_format="user{i}",
        timeout=timeout,
    )


async def create_rooms(database_url: str, sizes: list[int]) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        for size in sizes:
            key = f"fanout{size}@{CONFERENCE}"
            room_id = await rooms.create_room(conn, key, owner=f"user0@{REALM}", private=False)
            for i in range(1, size):
                await rooms.add_member(conn, room_id, f"user{i}@{REALM}", rooms.Role.MEMBER)
    finally:
        await conn.close()


def register_all(gen: RoomLoad, users: int) -> None:
    for user in range(users):
        gen.send("REGISTER", user, pending=Pending("REGISTER", user, time.perf_counter(), False))
        if user % 50 == 49:
            settle(gen)
    settle(gen)
    if gen.pending:
        raise SystemExit(f"{len(gen.pending)} REGISTERs unanswered")


def settle(gen: RoomLoad) -> None:
    deadline = time.perf_counter() + gen.timeout
    while gen.pending and time.perf_counter() < deadline:
        gen.poll(0.05)
    gen.expire(float("inf"))
    gen.completed.clear()


def wait_copies(gen: RoomLoad, seqs: list[int], timeout: float) -> None:
    """Poll until every message in ``seqs`` has all its copies, or ``timeout`` passed."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline:
        if all(gen.copies[s].done for s in seqs) and not gen.pending:
            return
        gen.poll(0.01)


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000, 2)


def checks(gen: RoomLoad, seqs: list[int], expected: int) -> dict[str, int]:
    lost = sum(expected - len(gen.copies[s].members) for s in seqs)
    duplicates = sum(
        len(calls) - 1 for s in seqs for calls in gen.copies[s].members.values() if len(calls) > 1
    )
    return {"lost": lost, "duplicates": duplicates, "echoes": gen.echoes, "strays": gen.strays}


class Counter:
    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


def latency(gen: RoomLoad, size: int, messages: int, seq: Counter) -> dict[str, object]:
    room_uri = f"sip:fanout{size}@{CONFERENCE}"
    warm = seq.take()
    gen.send_to_room(room_uri, warm, size - 1)
    wait_copies(gen, [warm], gen.timeout)
    gen.echoes = gen.strays = 0
    gen.stats.latencies.clear()
    seqs = []
    samples = []
    for _ in range(messages):
        s = seq.take()
        seqs.append(s)
        gen.send_to_room(room_uri, s, size - 1)
        wait_copies(gen, [s], gen.timeout)
        copies = gen.copies[s]
        if copies.done:
            samples.append(copies.last_arrival - copies.first_sent)
    settle(gen)
    return {
        "test": "latency",
        "members": size,
        "messages": messages,
        "p50_ms": pct(samples, 50),
        "p99_ms": pct(samples, 99),
        "max_ms": pct(samples, 100),
        "accepted_202_p50_ms": pct(list(gen.stats.latencies), 50),
        **checks(gen, seqs, size - 1),
    }


def sustained(
    gen: RoomLoad, size: int, window: int, duration: float, seq: Counter, meter: CpuMeter
) -> dict[str, object]:
    room_uri = f"sip:fanout{size}@{CONFERENCE}"
    gen.echoes = gen.strays = 0
    meter.reset()
    seqs: list[int] = []
    start = time.perf_counter()
    end = start + duration
    in_flight: set[int] = set()

    def launch() -> None:
        s = seq.take()
        seqs.append(s)
        in_flight.add(s)
        gen.send_to_room(room_uri, s, size - 1)

    for _ in range(window):
        launch()
    while time.perf_counter() < end:
        gen.poll(0.01)
        now = time.perf_counter()
        for s in list(in_flight):
            copies = gen.copies[s]
            if copies.done or now - copies.first_sent > gen.timeout:
                in_flight.discard(s)
                if now < end:
                    launch()
    wait_copies(gen, seqs, gen.timeout)
    arrived = sum(len(gen.copies[s].members) for s in seqs)
    cpu = meter.per_item(arrived)  # per member delivery
    settle(gen)
    last = max((gen.copies[s].last_arrival for s in seqs), default=start)
    elapsed = max(last - start, 1e-9)
    return {
        "test": "sustained",
        "members": size,
        "window": window,
        "messages": len(seqs),
        "seconds": round(elapsed, 2),
        "deliveries": arrived,
        "deliveries_per_s": round(arrived / elapsed),
        "messages_per_s": round(len(seqs) / elapsed, 1),
        **cpu,
        **checks(gen, seqs, size - 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", default="10,50,100", help="room sizes M (the sender too)")
    parser.add_argument("--messages", type=int, default=50, help="latency: messages per room")
    parser.add_argument("--window", type=int, default=4, help="sustained: messages in flight")
    parser.add_argument("--duration", type=float, default=10.0, help="sustained: seconds")
    parser.add_argument("--timeout", type=float, default=5.0, help="a copy not here is lost")
    parser.add_argument(
        "--history", type=int, default=None, help="IMSTACK_IMC_HISTORY (default: imstack's)"
    )
    parser.add_argument(
        "--db-cpu", default="1", help="CPU for the embedded PostgreSQL, or 'none' (unpinned)"
    )
    parser.add_argument("--profile", help="run imstack under cProfile, statistics to this file")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",") if m.strip()]
    users = max(sizes)

    workdir = Path(tempfile.mkdtemp(prefix="imstack-imc-bench-"))
    database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
    # One sender floods the room on purpose: flood control (IMSTACK_IMC_MIN_INTERVAL) off.
    extra_env = {"IMSTACK_LOG_LEVEL": "WARNING", "IMSTACK_IMC_MIN_INTERVAL": "0"}
    if args.history is not None:
        extra_env["IMSTACK_IMC_HISTORY"] = str(args.history)
    server: Imstack | None = None
    results: list[dict[str, object]] = []
    try:
        started = time.monotonic()
        database.start(users)
        asyncio.run(create_rooms(database.url, sizes))
        print(
            f"database ready, {users} users, rooms {sizes}, in {time.monotonic() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
        profile = str(Path(args.profile).resolve()) if args.profile else None
        server = Imstack(workdir, database.url, ("relay", "imc", "msilo"), extra_env, profile)
        server.start()
        on_cpu(1)
        gen = RoomLoad(load_args(server.target, users, args.timeout))
        register_all(gen, users)
        meter = CpuMeter(server.proc and server.proc.pid, database.embedded.pgdata)
        seq = Counter()
        for size in sizes:
            for run in (
                latency(gen, size, args.messages, seq),
                sustained(gen, size, args.window, args.duration, seq, meter),
            ):
                print(json.dumps(run), flush=True)
                results.append(run)
    finally:
        if server is not None:
            server.stop()
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'run':<24} {'p50 ms':>8} {'p99 ms':>8} {'deliv/s':>8} {'lost':>5} {'dup':>4} "
        f"{'echo':>5} {'cpu ms/deliv imstack+pg':>24}"
    )
    for r in results:
        name = f"{r['test']} M={r['members']}"
        print(
            f"{name:<24} {r.get('p50_ms', '')!s:>8} {r.get('p99_ms', '')!s:>8} "
            f"{r.get('deliveries_per_s', '')!s:>8} {r['lost']!s:>5} {r['duplicates']!s:>4} "
            f"{r['echoes']!s:>5} {r.get('imstack_cpu_ms_per', '')!s:>11}"
            f"+{r.get('postgres_cpu_ms_per', '')!s:<11}"
        )


if __name__ == "__main__":
    main()
