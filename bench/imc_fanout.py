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

With ``--split`` imc runs in a process of its own (``imstack serve imc``, also on CPU 0):
the CPU per delivery is then reported for the relay (with msilo) and for imc separately.
The load generator's own CPU per delivery (``load_cpu_ms_per``) is reported too: it shares
CPU 1 with PostgreSQL, so a tail it causes shows there. With ``--trace FILE`` imstack runs
under bench/imc_trace_server.py and, for every latency message, the time of each step is
printed, from the send: relay receives, hand-over committed, imc woken, imc committed the
fan-out, relay claimed it, first and last copy sent, last 200 back, last copy arrived
(medians and p99 over the messages; the outcomes are written after the next message is
sent, so they are not shown).

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
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.proc_cpu import CpuMeter, cpu_seconds  # noqa: E402
from bench.sip_load import Generator, Pending  # noqa: E402
from bench.sip_relay import (  # noqa: E402
    IMSTACK,
    PASSWORD,
    REALM,
    Database,
    Imstack,
    on_cpu,
    pinned,
    wait_port,
)
from shared.db import rooms  # noqa: E402

CONFERENCE = f"conference.{REALM}"
SENDER = 0
_CALL_ID_RE = re.compile(rb"^(?:call-id|i)[ \t]*:[ \t]*(\S+)", re.IGNORECASE | re.MULTILINE)
_RURI_USER_RE = re.compile(rb"^MESSAGE sips?:([^@;>\s]+)@")
_SEQ_RE = re.compile(rb"\]: m(\d+)$")


@dataclass
class RoomPending(Pending):
    room_uri: str = ""
    datagram: bytes = b""  # as last sent, for retransmissions
    resend_at: float = 0.0
    interval: float = 0.0


#: RFC 3261 Timer E: a request over UDP without an answer is sent again after T1, 2*T1, ...
#: (at most T2 apart). The members' UA (bench/sip_load.py) never retransmits; the sender's
#: room MESSAGE does, like every real UA: a datagram the relay's socket dropped under load
#: costs a retransmission, not a lost message.
T1, T2 = 0.5, 4.0


@dataclass
class Copies:
    """What arrived of one room message."""

    first_sent: float
    expected: int
    members: dict[bytes, set[bytes]] = field(default_factory=lambda: defaultdict(set))
    first_arrival: float = 0.0
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
        self.retransmissions = 0  # of the sender's room MESSAGEs (Timer E)
        self.sender_name = self.names[SENDER].encode()
        #: time.time() - time.perf_counter(): the trace's stamps are wall-clock ones.
        self.wall_offset = time.time() - time.perf_counter()
        self.latency_runs: list[tuple[int, list[int]]] = []  # (room size, message numbers)

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
        pending.datagram = (data + body).encode()
        pending.interval = T1
        pending.sent_at = pending.sent_at or time.perf_counter()
        pending.resend_at = time.perf_counter() + T1
        self.sock.sendto(pending.datagram, self.target)

    def poll(self, timeout: float) -> None:
        super().poll(timeout)
        now = time.perf_counter()
        for pending in self.pending.values():
            if isinstance(pending, RoomPending) and now >= pending.resend_at:
                self.retransmissions += 1
                self.sock.sendto(pending.datagram, self.target)
                pending.interval = min(2 * pending.interval, T2)
                pending.resend_at = now + pending.interval

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
            if not copies.first_arrival:
                copies.first_arrival = now
            if len(copies.members) == copies.expected:
                copies.done = True


class Server(Imstack):
    """``imstack serve <services>`` pinned to CPU 0, optionally under the trace wrapper
    (bench/imc_trace_server.py, events written to ``trace``)."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        services: tuple[str, ...],
        extra_env: dict[str, str],
        profile: str | None,
        trace: Path | None,
        listens: bool = True,
    ) -> None:
        super().__init__(workdir, database_url, services, extra_env, profile)
        self.trace = trace
        self.listens = listens
        if trace is not None:
            self.env["IMSTACK_BENCH_TRACE"] = str(trace)

    def start(self) -> None:
        python = [sys.executable]
        if self.profile:
            python += ["-m", "cProfile", "-o", self.profile]
        program = str(ROOT / "bench" / "imc_trace_server.py") if self.trace else IMSTACK
        self.proc = subprocess.Popen(
            [*pinned(0), *python, program, "serve", *self.services],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{'-'.join(self.services)}.log", "ab"),  # noqa: SIM115
        )
        if self.listens:
            wait_port(self.port)


class Meter:
    """CPU of the relay process, of imc's when it runs apart, of PostgreSQL and of this
    load generator, per member delivery."""

    def __init__(self, relay: int | None, imc: int | None, pgdata: Path) -> None:
        self.cpu = CpuMeter(relay, pgdata)
        self.imc = imc
        self.reset()

    def reset(self) -> None:
        self.cpu.reset()
        self.imc_start = cpu_seconds(self.imc) if self.imc else 0.0
        self.load_start = time.process_time()

    def per_item(self, items: int) -> dict[str, object]:
        result: dict[str, object] = dict(self.cpu.per_item(items))
        load = time.process_time() - self.load_start
        result["load_cpu_ms_per"] = round(load * 1e3 / items, 3) if items else None
        if self.imc:
            imc = cpu_seconds(self.imc) - self.imc_start
            result["imc_cpu_ms_per"] = round(imc * 1e3 / items, 3) if items else None
        return result


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
    return {
        "lost": lost,
        "duplicates": duplicates,
        "echoes": gen.echoes,
        "strays": gen.strays,
        "retransmitted": gen.retransmissions,
    }


class Counter:
    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        self.next += 1
        return self.next


def latency(
    gen: RoomLoad, size: int, messages: int, seq: Counter, meter: Meter
) -> dict[str, object]:
    room_uri = f"sip:fanout{size}@{CONFERENCE}"
    warm = seq.take()
    gen.send_to_room(room_uri, warm, size - 1)
    wait_copies(gen, [warm], gen.timeout)
    gen.echoes = gen.strays = gen.retransmissions = 0
    gen.stats.latencies.clear()
    meter.reset()
    seqs: list[int] = []
    gen.latency_runs.append((size, seqs))
    samples = []
    for _ in range(messages):
        s = seq.take()
        seqs.append(s)
        gen.send_to_room(room_uri, s, size - 1)
        wait_copies(gen, [s], gen.timeout)
        copies = gen.copies[s]
        if copies.done:
            samples.append(copies.last_arrival - copies.first_sent)
    cpu = meter.per_item(sum(len(gen.copies[s].members) for s in seqs))
    settle(gen)
    return {
        "test": "latency",
        "members": size,
        "messages": messages,
        "p50_ms": pct(samples, 50),
        "p99_ms": pct(samples, 99),
        "max_ms": pct(samples, 100),
        "first_copy_p50_ms": pct(
            [gen.copies[s].first_arrival - gen.copies[s].first_sent for s in seqs], 50
        ),
        "accepted_202_p50_ms": pct(list(gen.stats.latencies), 50),
        **cpu,
        **checks(gen, seqs, size - 1),
    }


def sustained(
    gen: RoomLoad, size: int, window: int, duration: float, seq: Counter, meter: Meter
) -> dict[str, object]:
    room_uri = f"sip:fanout{size}@{CONFERENCE}"
    gen.echoes = gen.strays = gen.retransmissions = 0
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


#: The steps of one room message in a trace, in path order: (label, event, which one).
STEPS = (
    ("relay received MESSAGE", "rx_message", "first"),
    ("hand-over committed", "handover_end", "first"),
    ("imc woken (NOTIFY)", "imc_notify", "first"),
    ("imc transaction began", "imc_start", "imc"),
    ("imc fan-out committed", "imc_end", "first"),
    ("relay claim began", "claim_start", "claim"),
    ("relay claimed rows", "claim_end", "first"),
    ("first copy sent", "tx_message", "first"),
    ("last copy sent", "tx_message", "last"),
    ("last 200 received", "rx_response", "last"),
)


def trace_report(gen: RoomLoad, paths: list[Path]) -> None:
    """Per room size: when each step of a latency message happened, counted from its send
    (median / p99 over the messages, ms)."""
    events: list[tuple[str, float, int]] = []
    for path in paths:
        try:
            events += json.loads(path.read_text())
        except (OSError, ValueError):
            print(f"no trace in {path}", file=sys.stderr)
    events.sort(key=lambda e: e[1])
    offset = gen.wall_offset
    for size, seqs in gen.latency_runs:
        steps: dict[str, list[float]] = defaultdict(list)
        for i, s in enumerate(seqs):
            copies = gen.copies[s]
            start = copies.first_sent + offset
            # Up to the next message's send (the last one: its last copy's arrival).
            end = (
                gen.copies[seqs[i + 1]].first_sent + offset
                if i + 1 < len(seqs)
                else copies.last_arrival + offset + 1e-3
            )
            window = [e for e in events if start <= e[1] < end]
            imc_end = next((t for name, t, _ in window if name == "imc_end"), None)
            claimed = next(
                (
                    t
                    for name, t, n in window
                    if name == "claim_end" and n and imc_end and t > imc_end
                ),
                None,
            )
            for label, event, which in STEPS:
                times = [t for name, t, n in window if name == event]
                if event == "claim_end":
                    times = [claimed] if claimed is not None else []
                elif event == "tx_message" and claimed is not None:
                    times = [t for t in times if t >= claimed]
                if which == "imc":
                    times = [t for t in times if imc_end and t <= imc_end][-1:]
                elif which == "claim":
                    times = [t for t in times if claimed and t <= claimed][-1:]
                if not times:
                    continue
                at = times[-1] if which == "last" else times[0]
                steps[label].append(at - start)
            if copies.first_arrival:
                steps["first copy arrived (UA)"].append(copies.first_arrival - copies.first_sent)
            if copies.done:
                steps["last copy arrived (UA)"].append(copies.last_arrival - copies.first_sent)
        print(f"\ntrace M={size}: ms after the send (median / p99 over {len(seqs)} messages)")
        labels = [label for label, _, _ in STEPS]
        labels[8:8] = ["first copy arrived (UA)"]
        labels.append("last copy arrived (UA)")
        for label in labels:
            values = steps.get(label, [])
            print(f"  {label:<28} {pct(values, 50)!s:>8} {pct(values, 99)!s:>8}")


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
    parser.add_argument(
        "--split", action="store_true", help="run imc in a process of its own (CPU apart)"
    )
    parser.add_argument("--profile-imc", help="with --split: imc under cProfile, to this file")
    parser.add_argument("--trace", help="trace the fan-out path, events to this file")
    parser.add_argument("--keep", action="store_true", help="keep the logs and the database")
    parser.add_argument("--log-level", default="WARNING", help="imstack's IMSTACK_LOG_LEVEL")
    args = parser.parse_args()
    sizes = [int(m) for m in args.members.split(",") if m.strip()]
    users = max(sizes)

    workdir = Path(tempfile.mkdtemp(prefix="imstack-imc-bench-"))
    database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
    # One sender floods the room on purpose: flood control (IMSTACK_IMC_MIN_INTERVAL) off.
    extra_env = {"IMSTACK_LOG_LEVEL": args.log_level, "IMSTACK_IMC_MIN_INTERVAL": "0"}
    if args.history is not None:
        extra_env["IMSTACK_IMC_HISTORY"] = str(args.history)
    server: Imstack | None = None
    imc: Imstack | None = None
    trace = Path(args.trace).resolve() if args.trace else None
    gen_ref: list[RoomLoad] = []
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
        services: tuple[str, ...] = ("relay", "msilo") if args.split else ("relay", "imc", "msilo")
        if args.split:
            imc_trace = trace.with_suffix(".imc.json") if trace else None
            imc_profile = str(Path(args.profile_imc).resolve()) if args.profile_imc else None
            imc = Server(
                workdir, database.url, ("imc",), extra_env, imc_profile, imc_trace, listens=False
            )
            imc.start()
        server = Server(workdir, database.url, services, extra_env, profile, trace)
        server.start()
        on_cpu(1)
        gen = RoomLoad(load_args(server.target, users, args.timeout))
        gen_ref.append(gen)
        register_all(gen, users)
        meter = Meter(server.pid, imc.pid if imc else None, database.embedded.pgdata)
        seq = Counter()
        for size in sizes:
            for run in (
                latency(gen, size, args.messages, seq, meter),
                sustained(gen, size, args.window, args.duration, seq, meter),
            ):
                print(json.dumps(run), flush=True)
                results.append(run)
    finally:
        if server is not None:
            server.stop()
        if imc is not None:
            imc.stop()
        database.stop()
        if args.keep:
            print(f"logs kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'run':<24} {'p50 ms':>8} {'p99 ms':>8} {'deliv/s':>8} {'lost':>5} {'dup':>4} "
        f"{'echo':>5}   cpu ms/delivery: {'relay':>6} {'imc':>6} {'pg':>6} {'load':>6}"
    )
    for r in results:
        name = f"{r['test']} M={r['members']}"
        print(
            f"{name:<24} {r.get('p50_ms', '')!s:>8} {r.get('p99_ms', '')!s:>8} "
            f"{r.get('deliveries_per_s', '')!s:>8} {r['lost']!s:>5} {r['duplicates']!s:>4} "
            f"{r['echoes']!s:>5}   {'':>16} {r.get('imstack_cpu_ms_per', '')!s:>6} "
            f"{r.get('imc_cpu_ms_per', '-')!s:>6} {r.get('postgres_cpu_ms_per', '')!s:>6} "
            f"{r.get('load_cpu_ms_per', '')!s:>6}"
        )
    if trace is not None and gen_ref:
        trace_report(gen_ref[0], [trace, *([trace.with_suffix(".imc.json")] if imc else [])])


if __name__ == "__main__":
    main()
