"""Offline store benchmark: store rate to an offline user, drain time on registration.

    python bench/msilo.py                        # 1,000 and 5,000, then 5,000 after a restart
    python bench/msilo.py --counts 1000,5000,10000 --transport tcp --split
    python bench/msilo.py --counts 5000 --restart-count 0 --split --profile /tmp/prof

Run by hand, never from the test suite. Like bench/sip_relay.py (whose set-up it reuses) it
starts an embedded PostgreSQL off CPU 0 (``--db-cpu``), creates the users over one
connection, and runs ``imstack serve relay msilo`` pinned to CPU 0 (with ``--split``: two
processes, ``serve relay`` and ``serve msilo``, both on CPU 0, so the CPU each uses is
reported apart, as they run in production); the load generator (this process, with
bench/sip_load.py's raw UDP UA that computes the digest itself) moves to CPU 1. No mailbox
quota (IMSTACK_MSILO_MAX_MESSAGES=0). Each round uses a recipient of its own (``user0``,
``user1``...), never registered before:

* **store**: ``--window`` MESSAGEs in flight (one per sender, over UDP) until ``count`` were
  answered; each must get ``202 Accepted`` (sent after the row is committed). The rate is
  answered 202 per second.
* **drain**: the stored bodies in storage order (id order, read from the database) are the
  expectation; then the recipient REGISTERs from a fresh socket — UDP, or with
  ``--transport tcp`` a TCP connection the relay delivers over (its Contact says
  ``transport=tcp``) — and answers every MESSAGE 200 at once. The drain time runs from the
  first REGISTER sent (its 401 included) to the last expected message received. Checked:
  order (the first delivery of each message in storage order), lost (never delivered),
  duplicates (a message delivered in more than one transaction; UDP retransmissions of
  one transaction are not duplicates), what is left stored, and that every message
  answered 202 was stored. CPU per delivered message: of each imstack process and of
  PostgreSQL (all its processes), from /proc, over the drain.
* **restart**: ``--restart-count`` messages are stored, then the whole bundle is restarted —
  the imstack process(es) stopped (SIGTERM), PostgreSQL stopped, PostgreSQL started
  again on the same data, imstack started again — and the recipient registers at once
  (``--restart-imstack-only`` keeps PostgreSQL running).

``--kamailio`` then runs the same rounds against Kamailio's msilo (bench/kamailio.py: the
same PostgreSQL server, a database of its own, pinned to CPU 0, ``--kamailio-children``
workers; ``--no-imstack``: Kamailio alone), one table each: on a shared machine compare
these, not figures from different runs. Kamailio's "left" counts delivered rows its
``check_time`` timer (60 s) has not deleted yet; its MESSAGEs from ``m_dump`` come back
through itself (``outbound_proxy``) to the binding, as its own README's set-up routes them.

``--profile DIR`` runs each imstack process under cProfile (slower), statistics in
``DIR/<services>.prof`` when it stops. Prints one JSON object per round and a summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import select
import shutil
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kamailio import Kamailio  # noqa: E402
from bench.kamailio import stored_bodies as kamailio_stored  # noqa: E402
from bench.proc_cpu import (  # noqa: E402
    all_stats,
    by_role,
    postmaster_pid,
    tree_cpu_by_pid,
    tree_cpu_seconds,
)
from bench.sip_load import Generator, Pending, md5  # noqa: E402
from bench.sip_relay import (  # noqa: E402
    PASSWORD,
    REALM,
    Database,
    Imstack,
    build_compiled,
    free_port,
    on_cpu,
    pinned,
)

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
        self.times: list[float] = []  # of each arrival
        self.answered: list[float] = []  # when its 200 was sent
        self.last_arrival = 0.0

    def _finish(self, pending: Pending, status: int) -> None:
        if pending.kind == "MESSAGE" and pending.measured and status == 202:
            self.accepted.append(pending.body)
        super()._finish(pending, status)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        received = time.perf_counter()
        super()._answer(data, addr)
        if data.startswith(b"MESSAGE "):
            head, _, body = data.partition(b"\r\n\r\n")
            m = _CALL_ID_RE.search(head)
            self.arrived.append((m.group(1) if m else b"", _PREFIX_RE.sub(b"", body)))
            self.last_arrival = received
            self.times.append(received)
            self.answered.append(time.perf_counter())


class Meter:
    """CPU used by each imstack process and by PostgreSQL (all its processes) between
    :meth:`reset` and :meth:`per_item`."""

    def __init__(
        self, processes: dict[str, int | None], pgdata: Path, url: str | None = None
    ) -> None:
        self.processes = processes
        self.url = url
        self.pg_pid = postmaster_pid(pgdata)
        self.start, self.pg_start = self._read()

    def reset(self) -> None:
        self.start, self.pg_start = self._read()

    def _read(self) -> tuple[dict[str, float], dict[int, tuple[str, float]]]:
        """CPU seconds of each process (with its children: Kamailio's workers) and of
        PostgreSQL, and PostgreSQL's by process: from one reading of /proc."""
        stats = all_stats()
        cpu = {
            name: 0.0 if pid is None else tree_cpu_seconds(pid, stats)
            for name, pid in self.processes.items()
        }
        cpu["postgres"] = 0.0 if self.pg_pid is None else tree_cpu_seconds(self.pg_pid, stats)
        pg = {} if self.pg_pid is None else tree_cpu_by_pid(self.pg_pid, stats)
        return cpu, pg

    def per_item(self, items: int) -> dict[str, float | None]:
        """CPU seconds and milliseconds per item of each, since :meth:`reset`."""
        end, pg_end = self._read()
        result: dict[str, float | None] = {}
        for name, value in end.items():
            used = value - self.start[name]
            result[f"{name}_cpu_s"] = round(used, 2)
            result[f"{name}_cpu_ms_per"] = round(used * 1e3 / items, 3) if items > 0 else None
        roles = by_role(self.pg_start, pg_end)
        if self.url is not None:  # name each backend by the last statement it ran
            last = asyncio.run(last_statements(self.url))
            roles = {
                f"{role}: {last.get(int(role.split()[1]), '?')}"
                if role.startswith("backend ")
                else role: cpu
                for role, cpu in roles.items()
            }
        result["postgres_cpu_s_by_role"] = roles  # type: ignore[assignment]
        return result


class TcpRecipient:
    """The recipient over TCP: one connection to the relay, REGISTERed with a
    ``transport=tcp`` Contact (so the relay delivers over this connection); every MESSAGE
    is answered 200 at once. Remembers (Call-ID, body) of what arrived, like OfflineLoad."""

    def __init__(self, target: str, user: str) -> None:
        host, port = target.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.local = "{}:{}".format(*self.sock.getsockname())
        self.user = user
        self.buffer = bytearray()
        self.arrived: list[tuple[bytes, bytes]] = []
        self.times: list[float] = []  # of each arrival
        self.answered: list[float] = []  # when its 200 was sent
        self.last_arrival = 0.0
        self.registered = False
        self.cseq = 0
        self.run_id = os.urandom(4).hex()

    def register(self, challenge: bytes | None = None) -> None:
        self.cseq += 1
        uri = f"sip:{REALM}"
        auth = ""
        if challenge is not None:
            nonce = re.search(rb'nonce="([^"]+)"', challenge)
            opaque = re.search(rb'opaque="([^"]*)"', challenge)
            assert nonce is not None, challenge
            ha1 = md5(f"{self.user}:{REALM}:{PASSWORD}")
            ha2 = md5(f"REGISTER:{uri}")
            cnonce = self.run_id
            response = md5(f"{ha1}:{nonce.group(1).decode()}:00000001:{cnonce}:auth:{ha2}")
            extra = f', opaque="{opaque.group(1).decode()}"' if opaque else ""
            auth = (
                f'Authorization: Digest username="{self.user}", realm="{REALM}", '
                f'nonce="{nonce.group(1).decode()}", uri="{uri}", response="{response}", '
                f'algorithm=MD5, qop=auth, nc=00000001, cnonce="{cnonce}"{extra}\r\n'
            )
        data = (
            f"REGISTER {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/TCP {self.local};branch=z9hG4bK{self.run_id}{self.cseq};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:{self.user}@{REALM}>;tag={self.run_id}\r\n"
            f"To: <sip:{self.user}@{REALM}>\r\n"
            f"Call-ID: reg-{self.run_id}\r\n"
            f"CSeq: {self.cseq} REGISTER\r\n"
            f"Contact: <sip:{self.user}@{self.local};transport=tcp>\r\n"
            "Expires: 3600\r\n"
            f"{auth}Content-Length: 0\r\n\r\n"
        )
        self.sock.sendall(data.encode())

    def poll(self, timeout: float) -> None:
        if not select.select([self.sock], [], [], timeout)[0]:
            return
        data = self.sock.recv(1 << 20)
        if not data:
            raise SystemExit("the relay closed the TCP connection")
        self.buffer += data
        out: list[bytes] = []
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                break
            head = bytes(self.buffer[:end])
            length = re.search(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*(\d+)", head)
            size = int(length.group(1)) if length else 0
            if len(self.buffer) < end + 4 + size:
                break
            body = bytes(self.buffer[end + 4 : end + 4 + size])
            del self.buffer[: end + 4 + size]
            if head.startswith(b"SIP/2.0 "):
                status = int(head[8:11])
                if status == 401:
                    self.register(head)
                elif status == 200:
                    self.registered = True
                elif status >= 300:
                    raise SystemExit(f"REGISTER failed: {head[:40]!r}")
            elif head.startswith(b"MESSAGE "):
                m = _CALL_ID_RE.search(head)
                self.arrived.append((m.group(1) if m else b"", _PREFIX_RE.sub(b"", body)))
                self.last_arrival = time.perf_counter()
                self.times.append(self.last_arrival)
                out.append(_ok(head))
        if out:
            self.sock.sendall(b"".join(out))
            self.answered += [time.perf_counter()] * len(out)

    def close(self) -> None:
        self.sock.close()


def _ok(head: bytes) -> bytes:
    """The 200 for a request's head."""
    lines = [b"SIP/2.0 200 OK"]
    for line in head.split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"):
            lines.append(line)
        elif name in (b"to", b"t"):
            lines.append(line + b";tag=bench")
    lines.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(lines)


@dataclass
class Round:
    name: str
    count: int
    window: int
    store: dict[str, object] = field(default_factory=dict)
    drain: dict[str, object] = field(default_factory=dict)


def store(
    target: str, recipient: int, count: int, window: int, tag: str, meter: Meter
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
    own_cpu = time.process_time()
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
    own_cpu = time.process_time() - own_cpu
    summary = gen.stats.summary(elapsed)
    summary["rate"] = round(len(gen.accepted) / elapsed, 1)  # answered 202 per second
    summary.update(accepted_202=len(gen.accepted), seconds=round(elapsed, 3))
    summary.update(meter.per_item(len(gen.accepted)))
    # The load generator's own CPU (it shares CPU 1 with PostgreSQL): when it nears the
    # time per store, the rate measures the generator, not the server.
    summary["load_cpu_ms_per"] = round(own_cpu * 1e3 / max(1, len(gen.accepted)), 3)
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
    target: str,
    url: str,
    stored: Callable[[str], list[bytes]],
    recipient: int,
    transport: str,
    idle_timeout: float,
    meter: Meter,
    pg_stats: bool = False,
) -> dict[str, object]:
    """Register user{recipient} and take its stored messages; checks and times the drain."""
    aor = f"user{recipient}@{REALM}"
    expected = stored(aor)
    udp: OfflineLoad | None = None
    tcp: TcpRecipient | None = None
    if transport == "tcp":
        tcp = TcpRecipient(target, f"user{recipient}")
        ua: OfflineLoad | TcpRecipient = tcp
    else:
        udp = ua = OfflineLoad(load_args(target, 1, user_format=f"user{recipient}"))
    want = set(expected)
    if pg_stats:
        asyncio.run(pg_statements(url, reset=True))
    meter.reset()
    started = time.perf_counter()
    if tcp is not None:
        tcp.register()
    else:
        assert udp is not None
        udp.send("REGISTER", 0)
    seen: set[bytes] = set()
    looked = 0
    done_at: float | None = None
    registered_at: float | None = None
    while True:
        ua.poll(0.05)
        if registered_at is None and (tcp.registered if tcp else udp and udp.stats.ok):
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
    statements = asyncio.run(pg_statements(url)) if pg_stats else None
    late = time.perf_counter() + 0.5  # anything arriving late (duplicates) counts too
    while (now := time.perf_counter()) < late:
        ua.poll(late - now)
    if tcp is not None:
        tcp.close()

    first_call: dict[bytes, bytes] = {}
    duplicates = 0
    for call_id, body in ua.arrived:
        if body not in first_call:
            first_call[body] = call_id
        elif first_call[body] != call_id:
            duplicates += 1
    order = [body for body in first_call if body in want]
    # Where the wall time went: the first delivery after the REGISTER, and pauses (gaps of
    # 5 ms or more between two deliveries: the relay waiting for work rather than the UA).
    times = ua.times[: len(expected)]
    gaps = [b - a for a, b in itertools.pairwise(times) if b - a >= 0.005]
    if os.environ.get("MSILO_BENCH_TIMES"):  # where the pauses are, for a closer look
        Path(os.environ["MSILO_BENCH_TIMES"]).write_text(
            "\n".join(f"{t - started:.6f}" for t in times)
        )
    # The relay's turnaround: from a 200 sent to the next MESSAGE received (one at a time
    # over UDP, this is the relay's part of each step; pipelined, it can be negative).
    turns = sorted(b - a for a, b in zip(ua.answered, times[1:], strict=False))
    left = stored(aor)
    return {
        "transport": transport,
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
        "first_ms": round((times[0] - started) * 1e3, 1) if times else None,
        "pauses": len(gaps),
        "paused_s": round(sum(gaps), 3),
        "turnaround_p50_ms": round(turns[len(turns) // 2] * 1e3, 3) if turns else None,
        **cpu,
        **({} if statements is None else {"statements": statements}),
        "expected_bodies": expected,
    }


async def pg_statements(url: str, *, reset: bool = False) -> list[str]:
    """``--pg-stats``: the statements of a store or drain phase (pg_stat_statements), most
    time first:
    calls (= round trips), total and mean milliseconds, rows, how often it was planned and
    the milliseconds planning took, the start of the query."""
    conn = await asyncpg.connect(url)
    try:
        if reset:
            await conn.execute("SELECT pg_stat_statements_reset()")
            return []
        rows = await conn.fetch(
            """SELECT calls, total_exec_time, mean_exec_time, rows, query, plans,
                      total_plan_time
               FROM pg_stat_statements WHERE query NOT LIKE '%pg_stat_statements%'
               ORDER BY total_exec_time + total_plan_time DESC LIMIT 15"""
        )
    finally:
        await conn.close()
    return [
        f"{r['calls']:>6} calls {r['total_exec_time']:>8.1f} ms "
        f"({r['mean_exec_time']:.3f} each) {r['rows']:>6} rows, "
        f"{r['plans']:>6} plans {r['total_plan_time']:>7.1f} ms  "
        + " ".join(r["query"].split())[:110]
        for r in rows
    ]


async def last_statements(url: str) -> dict[int, str]:
    """The start of the statement each PostgreSQL backend ran last, by pid."""
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch("SELECT pid, query FROM pg_stat_activity WHERE query <> ''")
    finally:
        await conn.close()
    return {r["pid"]: " ".join(r["query"].split())[:70] for r in rows}


async def enable_pg_stats(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
        await conn.execute("ALTER SYSTEM SET pg_stat_statements.track_planning = on")
    finally:
        await conn.close()


async def create_pg_stats(url: str) -> None:
    conn = await asyncpg.connect(url)
    try:
        await conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
    finally:
        await conn.close()


def check_stored(result: Round) -> None:
    accepted = {b.encode() for b in result.store.pop("accepted_bodies")}  # type: ignore[attr-defined]
    expected = set(result.drain.pop("expected_bodies"))  # type: ignore[arg-type]
    result.drain["accepted_not_stored"] = len(accepted - expected)


class Bundle:
    """The imstack process(es) of the bench: one ``serve relay msilo``, or (``split``) one
    ``serve relay`` and one ``serve msilo``."""

    ENV = {"IMSTACK_MSILO_MAX_MESSAGES": "0"}  # thousands of messages on one user

    def __init__(
        self,
        workdir: Path,
        url: str,
        split: bool,
        profile: Path | None,
        python: str | None = None,
        compiled: str | None = None,
    ) -> None:
        groups = [("relay",), ("msilo",)] if split else [("relay", "msilo")]
        self.processes = [
            Imstack(
                workdir,
                url,
                services,
                self.ENV,
                None if profile is None else str(profile / f"{'-'.join(services)}.prof"),
                python,
                compiled,
            )
            for services in groups
        ]
        self.relay = self.processes[0]
        if split:  # the msilo process listens on nothing: share the relay's ports
            self.processes[1].env.update(
                {k: v for k, v in self.relay.env.items() if k.endswith("_PORT")}
            )
            self.processes[1].port = self.relay.port

    name = "imstack"

    @property
    def target(self) -> str:
        return self.relay.target

    def pids(self) -> dict[str, int | None]:
        return {"-".join(p.services): p.pid for p in self.processes}

    def stored(self, aor: str) -> list[bytes]:
        """What msilo holds for ``aor``, in storage order."""
        return asyncio.run(stored_bodies(self.relay.env["IMSTACK_DATABASE_URL"], aor))

    def start(self, url: str | None = None) -> None:
        for process in self.processes:
            if url is not None:
                process.env["IMSTACK_DATABASE_URL"] = url
            process.start()  # waits for the relay's SIP port (the msilo one: already open)
        asyncio.run(msilo_listening(self.relay.env["IMSTACK_DATABASE_URL"]))

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()


class KamailioBundle:
    """Kamailio with msilo (bench/kamailio.py) in the bundle's place, on the same server."""

    name = "kamailio"

    def __init__(self, workdir: Path, url: str, users: int, children: int) -> None:
        self.kamailio = Kamailio(
            workdir,
            url,
            free_port(),
            REALM,
            PASSWORD,
            users=users,
            children=children,
            cpu=pinned(0),
        )
        self.fresh = True

    @property
    def target(self) -> str:
        return self.kamailio.target

    def pids(self) -> dict[str, int | None]:
        return {"kamailio": self.kamailio.pid}

    def stored(self, aor: str) -> list[bytes]:
        return asyncio.run(kamailio_stored(self.kamailio.url, aor))

    def start(self, url: str | None = None) -> None:
        if url is not None:
            self.kamailio.admin_url = url
        self.kamailio.start(fresh=self.fresh)  # a restart keeps its database
        self.fresh = False

    def stop(self) -> None:
        self.kamailio.stop()


async def msilo_listening(url: str, patience: float = 60.0) -> None:
    """Wait until msilo LISTENs (its last channel is ``offline_stored``): it is ready."""
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if await conn.fetchval(
                """SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                                  WHERE query LIKE 'LISTEN %offline_stored%')"""
            ):
                return
            await asyncio.sleep(0.05)
        raise SystemExit(f"msilo not listening after {patience:g} s")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", default="1000,5000", help="messages per store+drain round")
    parser.add_argument("--restart-count", type=int, default=5000, help="0: no restart round")
    parser.add_argument(
        "--restart-imstack-only",
        action="store_true",
        help="the restart round restarts imstack but not PostgreSQL",
    )
    parser.add_argument("--transport", choices=["udp", "tcp"], default="udp", help="of the drain")
    parser.add_argument("--split", action="store_true", help="relay and msilo in two processes")
    parser.add_argument("--profile", type=Path, help="cProfile imstack, statistics to this dir")
    parser.add_argument(
        "--python",
        help="run imstack with this interpreter (same Python version as this virtualenv, "
        "whose packages it uses), e.g. a distribution's PGO/LTO build instead of pyenv's",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the compiled build of imstack (scripts/compile builds it first)",
    )
    parser.add_argument(
        "--pg-stats",
        action="store_true",
        help="print the store's and the drain's statements (pg_stat_statements) per round",
    )
    parser.add_argument("--window", type=int, default=8, help="MESSAGEs in flight when storing")
    parser.add_argument("--idle-timeout", type=float, default=30.0)
    parser.add_argument(
        "--db-cpu", default="1", help="CPU for the embedded PostgreSQL, or 'none' (unpinned)"
    )
    parser.add_argument(
        "--kamailio", action="store_true", help="then the same rounds against Kamailio's msilo"
    )
    parser.add_argument("--kamailio-children", type=int, default=4)
    parser.add_argument("--no-imstack", action="store_true", help="with --kamailio: only it")
    args = parser.parse_args()
    if args.no_imstack and not args.kamailio:
        parser.error("--no-imstack leaves nothing to run without --kamailio")
    counts = [int(c) for c in args.counts.split(",") if c.strip()]
    if args.profile is not None:
        args.profile = args.profile.resolve()
        args.profile.mkdir(parents=True, exist_ok=True)

    workdir = Path(tempfile.mkdtemp(prefix="imstack-msilo-bench-"))
    database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
    bundle: Bundle | KamailioBundle | None = None
    tables: list[tuple[list[str], list[Round]]] = []
    try:
        database.start(SENDER_BASE + args.window)
        if args.pg_stats:  # a library loaded at start: restart PostgreSQL once
            asyncio.run(enable_pg_stats(database.url))
            database.embedded.stop()
            asyncio.run(create_pg_stats(restart_database(database)))
        servers: list[Bundle | KamailioBundle] = []
        if not args.no_imstack:
            compiled = build_compiled() if args.compiled else None
            servers.append(
                Bundle(workdir, database.url, args.split, args.profile, args.python, compiled)
            )
        if args.kamailio:
            servers.append(
                KamailioBundle(
                    workdir, database.url, SENDER_BASE + args.window, args.kamailio_children
                )
            )
        for bundle in servers:
            bundle.start()
            results = run_rounds(args, database, bundle, counts)
            tables.append(([*bundle.pids(), "postgres"], results))
            bundle.stop()
        bundle = None
    finally:
        if bundle is not None:
            bundle.stop()
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    for names, results in tables:
        print(
            f"\n{'round':<32} {'202/s':>7} {'drain s':>8} {'ms/msg':>7} {'lost':>5} {'dup':>4} "
            f"{'order':>6} {'left':>5}  drain cpu ms/msg " + " ".join(names)
        )
        for r in results:
            s, d = r.store, r.drain
            cpu = " ".join(str(d.get(f"{n}_cpu_ms_per")) for n in names)
            print(
                f"{r.name:<32} {s['rate']!s:>7} {d['drain_s']!s:>8} "
                f"{d['per_message_ms']!s:>7} {d['lost']!s:>5} {d['duplicates']!s:>4} "
                f"{d['in_order']!s:>6} {d['left_stored']!s:>5}  {cpu}"
            )


def run_rounds(
    args: argparse.Namespace,
    database: Database,
    bundle: Bundle | KamailioBundle,
    counts: list[int],
) -> list[Round]:
    """The store and drain rounds against ``bundle`` (started), each printed as it ends."""
    previous = on_cpu(1)  # the load generator: off the server's CPU
    results: list[Round] = []
    plan = [(f"{n} stored", n, False) for n in counts]
    if args.restart_count:
        plan.append((f"{args.restart_count} stored, restart", args.restart_count, True))
    try:
        for recipient, (name, count, restart) in enumerate(plan):
            result = Round(f"{bundle.name}: {name} ({args.transport})", count, args.window)
            meter = Meter(bundle.pids(), database.embedded.pgdata, database.url)
            if args.pg_stats:
                asyncio.run(pg_statements(database.url, reset=True))
            result.store = store(
                bundle.target, recipient, count, args.window, f"r{recipient}", meter
            )
            stored_by = asyncio.run(pg_statements(database.url)) if args.pg_stats else []
            if restart:
                bundle.stop()
                url = None
                if not args.restart_imstack_only:
                    database.embedded.stop()
                    url = restart_database(database)
                bundle.start(url)
                meter = Meter(bundle.pids(), database.embedded.pgdata, database.url)
            result.drain = drain(
                bundle.target,
                database.url,
                bundle.stored,
                recipient,
                args.transport,
                args.idle_timeout,
                meter,
                args.pg_stats,
            )
            check_stored(result)
            statements = result.drain.pop("statements", None)
            print(
                json.dumps({"round": result.name, "store": result.store, "drain": result.drain}),
                flush=True,
            )
            for heading, lines in (("store", stored_by), ("drain", statements or [])):
                if lines:
                    print(f"  the {heading}'s statements:", flush=True)
                for line in lines:  # type: ignore[attr-defined]
                    print("   ", line, flush=True)
            results.append(result)
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
    return results


def restart_database(database: Database) -> str:
    """Start the stopped embedded PostgreSQL again on its data (off CPU 0); its URL."""
    previous = on_cpu(database.cpu)
    try:
        database.url = database.embedded.start()
    finally:
        if previous is not None:
            os.sched_setaffinity(0, previous)
    return database.url


if __name__ == "__main__":
    main()
