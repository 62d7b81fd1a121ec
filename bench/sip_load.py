"""SIP load generator for bench/sip_relay.py: raw UDP, digest computed here, one process.

    python bench/sip_load.py --target 127.0.0.1:5060 --realm bench.local --password pw \
        register --duration 10 --window 100
    python bench/sip_load.py ... message --duration 10 --window 100   # the most it takes
    python bench/sip_load.py ... message --duration 10 --rate 2500    # latency at a rate

Users are ``--user-format`` (``user{i}``) for i < ``--users``, all with one password. For
MESSAGE, the second half registers (contact = this generator's socket) and the first half
sends to it; this process answers the relayed MESSAGEs 200, so a transaction is: MESSAGE →
relay → here → 200 → relay → here. Each user keeps the nonce of its last challenge and
reuses it with a rising nonce count (what real clients do); a new 401/407 is answered and
the request sent again (its latency counts from the first send). No UDP retransmissions:
a request without an answer after ``--timeout`` counts as lost.

``--window N`` runs closed-loop (N transactions outstanding, at most one per user) and
measures the rate; ``--rate R`` runs open-loop at R per second and measures latency.
With ``--server-pid`` (a server on this machine) the CPU time that process and its children
(Kamailio's workers) used during the measured phase (utime + stime from /proc/<pid>/stat) is
reported per successful request:
``server_cpu_us`` — on a busy machine steadier than the rates. ``sent_late_max_ms`` and
``sent_late_over_1ms`` say how late this process itself sent requests in the open loop: a
stall of its own core, or of the whole machine (docs/performance.md, stop 18). Prints one
JSON object.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import os
import re
import select
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.proc_cpu import tree_cpu_seconds

_BRANCH_RE = re.compile(rb"branch=([^;,\s]+)")
_NONCE_RE = re.compile(r'nonce="([^"]+)"')
_QOP_RE = re.compile(r'qop="?([^",]+)')
_OPAQUE_RE = re.compile(r'opaque="([^"]*)"')


def process_cpu(pid: int | None) -> float | None:
    """User + system CPU seconds so far of process ``pid`` and its children (Kamailio's
    workers are processes of their own; None: unknown)."""
    return None if pid is None else tree_cpu_seconds(pid)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # SIP digest is MD5


@dataclass
class Pending:
    kind: str  # "REGISTER" or "MESSAGE"
    user: int
    first_sent: float  # when it was due (open loop) or first sent (closed loop)
    measured: bool
    to: int = 0  # MESSAGE: the receiving user
    challenges: int = 0
    body: str = "hello"  # MESSAGE: the text sent (bench/msilo.py numbers its messages)
    sent_at: float = 0.0  # when this process really sent it first


@dataclass
class Stats:
    ok: int = 0
    failed: dict[int, int] = field(default_factory=dict)
    lost: int = 0
    challenges: int = 0
    latencies: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)  # when each of ``latencies`` was due
    late: list[float] = field(default_factory=list)  # how late this process sent each

    def summary(self, seconds: float) -> dict[str, object]:
        lat = sorted(self.latencies)

        def pct(p: float) -> float | None:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 3) if lat else None

        return {
            "ok": self.ok,
            "rate": round(self.ok / seconds, 1) if seconds > 0 else None,
            "failed": self.failed,
            "lost": self.lost,
            "rechallenged": self.challenges,
            "p50_ms": pct(0.50),
            "p99_ms": pct(0.99),
            "max_ms": round(lat[-1] * 1000, 3) if lat else None,
            # This process's own delay in sending (open loop): a stall of its core or of the
            # whole machine, which the server on the other core most likely had too.
            "sent_late_max_ms": round(max(self.late) * 1000, 3) if self.late else None,
            "sent_late_over_1ms": sum(late > 0.001 for late in self.late),
        }


class Generator:
    def __init__(self, args: argparse.Namespace) -> None:
        host, port = args.target.rsplit(":", 1)
        self.target = (host, int(port))
        self.realm: str = args.realm
        self.timeout: float = args.timeout
        self.names = [args.user_format.format(i=i) for i in range(args.users)]
        self.ha1 = [md5(f"{name}:{self.realm}:{args.password}") for name in self.names]
        self.nonce: list[str | None] = [None] * args.users
        self.opaque: list[str | None] = [None] * args.users
        self.qop: list[bool] = [True] * args.users
        self.nc = [0] * args.users
        self.cseq = [0] * args.users
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for option in (socket.SO_RCVBUF, socket.SO_SNDBUF):
            self.sock.setsockopt(socket.SOL_SOCKET, option, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.local = "{}:{}".format(*self.sock.getsockname())
        self.run_id = os.urandom(4).hex()
        self.counter = itertools.count()
        self.pending: dict[bytes, Pending] = {}
        self.stats = Stats()
        self.completed: deque[int] = deque()  # users whose transaction just ended
        self.receivers_answered = 0
        self.expires = 3600  # REGISTER: 0 removes this generator's contact again

    # -- building requests --------------------------------------------------------------

    def _authorization(self, user: int, method: str, uri: str) -> str:
        nonce = self.nonce[user]
        if nonce is None:
            return ""
        name = self.names[user]
        ha2 = md5(f"{method}:{uri}")
        opaque = self.opaque[user]
        extra = f', opaque="{opaque}"' if opaque is not None else ""
        if self.qop[user]:
            self.nc[user] += 1
            nc = f"{self.nc[user]:08x}"
            cnonce = next(self.counter)
            response = md5(f"{self.ha1[user]}:{nonce}:{nc}:{cnonce}:auth:{ha2}")
            extra += f', qop=auth, nc={nc}, cnonce="{cnonce}"'
        else:
            response = md5(f"{self.ha1[user]}:{nonce}:{ha2}")
        header = "Proxy-Authorization" if method != "REGISTER" else "Authorization"
        return (
            f'{header}: Digest username="{name}", realm="{self.realm}", nonce="{nonce}", '
            f'uri="{uri}", response="{response}", algorithm=MD5{extra}\r\n'
        )

    def send(self, kind: str, user: int, *, to: int = 0, pending: Pending | None = None) -> None:
        n = next(self.counter)
        branch = f"z9hG4bK{self.run_id}{n}"
        name = self.names[user]
        self.cseq[user] += 1
        if kind == "REGISTER":
            uri = f"sip:{self.realm}"
            head = (
                f"REGISTER {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{name}@{self.realm}>;tag={n}\r\n"
                f"To: <sip:{name}@{self.realm}>\r\n"
                f"Call-ID: reg-{self.run_id}-{user}\r\n"
                f"CSeq: {self.cseq[user]} REGISTER\r\n"
                f"Contact: <sip:{name}@{self.local}>\r\n"
                f"Expires: {self.expires}\r\n"
            )
            body = ""
        else:
            uri = f"sip:{self.names[to]}@{self.realm}"
            head = (
                f"MESSAGE {uri} SIP/2.0\r\n"
                f"Via: SIP/2.0/UDP {self.local};branch={branch};rport\r\n"
                "Max-Forwards: 70\r\n"
                f"From: <sip:{name}@{self.realm}>;tag={n}\r\n"
                f"To: <{uri}>\r\n"
                f"Call-ID: msg-{self.run_id}-{n}\r\n"
                f"CSeq: {self.cseq[user]} MESSAGE\r\n"
                "Content-Type: text/plain\r\n"
            )
            body = pending.body if pending is not None else "hello"
        data = f"{head}{self._authorization(user, kind, uri)}Content-Length: {len(body)}\r\n\r\n"
        if pending is None:
            pending = Pending(kind, user, time.perf_counter(), measured=True)
        pending.to = to
        self.pending[branch.encode()] = pending
        if not pending.sent_at:
            pending.sent_at = time.perf_counter()
        self.sock.sendto((data + body).encode(), self.target)

    # -- receiving ----------------------------------------------------------------------

    def poll(self, timeout: float) -> None:
        if timeout > 0:
            select.select([self.sock], [], [], timeout)
        while True:
            try:
                data, addr = self.sock.recvfrom(65536)
            except BlockingIOError:
                return
            if data.startswith(b"SIP/2.0 "):
                self._response(data)
            elif data.startswith(b"MESSAGE ") or data.startswith(b"OPTIONS "):
                self._answer(data, addr)

    def _response(self, data: bytes) -> None:
        status = int(data[8:11])
        if status < 200:
            return
        m = _BRANCH_RE.search(data)
        pending = self.pending.pop(m.group(1), None) if m else None
        if pending is None:
            return
        if status in (401, 407):
            head = data.split(b"\r\n\r\n", 1)[0].decode(errors="replace")
            nonce = _NONCE_RE.search(head)
            if nonce is None or pending.challenges >= 2:
                self._finish(pending, status)
                return
            user = pending.user
            if self.nonce[user] is not None:
                self.stats.challenges += 1  # a nonce we used went stale or was refused
            self.nonce[user] = nonce.group(1)
            self.nc[user] = 0
            qop = _QOP_RE.search(head)
            self.qop[user] = qop is not None and "auth" in qop.group(1)
            opaque = _OPAQUE_RE.search(head)
            self.opaque[user] = opaque.group(1) if opaque else None
            pending.challenges += 1
            self.send(pending.kind, user, to=pending.to, pending=pending)
            return
        self._finish(pending, status)

    def _finish(self, pending: Pending, status: int) -> None:
        if pending.measured:
            if 200 <= status < 300:
                self.stats.ok += 1
                self.stats.latencies.append(time.perf_counter() - pending.first_sent)
                self.stats.sent.append(pending.first_sent)
                self.stats.late.append(pending.sent_at - pending.first_sent)
            else:
                self.stats.failed[status] = self.stats.failed.get(status, 0) + 1
        self.completed.append(pending.user)

    def _answer(self, data: bytes, addr: tuple[str, int]) -> None:
        head = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
        out = [b"SIP/2.0 200 OK"]
        for line in head[1:]:
            name = line.split(b":", 1)[0].strip().lower()
            if name in (b"via", b"v", b"from", b"f", b"call-id", b"i", b"cseq"):
                out.append(line)
            elif name in (b"to", b"t"):
                out.append(line + b";tag=gen")
        out.append(b"Content-Length: 0\r\n\r\n")
        self.sock.sendto(b"\r\n".join(out), addr)
        self.receivers_answered += 1

    def expire(self, now: float) -> None:
        for branch, pending in list(self.pending.items()):
            if now - pending.first_sent > self.timeout:
                del self.pending[branch]
                if pending.measured:
                    self.stats.lost += 1
                self.completed.append(pending.user)


def closed_loop(
    gen: Generator,
    kind: str,
    users: list[int],
    peer: int,
    window: int,
    seconds: float,
    measured: bool = True,
) -> float:
    """Keep ``window`` transactions outstanding for ``seconds``; returns the time taken."""
    free = deque(users)
    start = time.perf_counter()
    end = start + seconds
    next_expire = start + 0.5

    def launch(user: int) -> None:
        gen.send(
            kind,
            user,
            to=user + peer,
            pending=Pending(kind, user, time.perf_counter(), measured=measured),
        )

    for _ in range(min(window, len(free))):
        launch(free.popleft())
    while True:
        now = time.perf_counter()
        if now >= end:
            break
        gen.poll(min(0.05, end - now))
        if now >= next_expire:
            gen.expire(now)
            next_expire = now + 0.5
        while gen.completed:
            free.append(gen.completed.popleft())
            if time.perf_counter() < end:
                launch(free.popleft())
    elapsed = time.perf_counter() - start
    drain(gen)
    return elapsed


def open_loop(gen: Generator, users: list[int], peer: int, rate: float, seconds: float) -> float:
    interval = 1.0 / rate
    start = time.perf_counter()
    next_send = start
    cycle = itertools.cycle(users)
    sent = 0
    total = int(rate * seconds)
    next_expire = start + 0.5
    while sent < total:
        now = time.perf_counter()
        while next_send <= now and sent < total:
            user = next(cycle)
            gen.send(
                "MESSAGE",
                user,
                to=user + peer,
                pending=Pending("MESSAGE", user, next_send, measured=True),
            )
            next_send += interval
            sent += 1
        gen.completed.clear()
        if now >= next_expire:
            gen.expire(now)
            next_expire = now + 0.5
        gen.poll(max(0.0, next_send - time.perf_counter()))
    elapsed = time.perf_counter() - start
    drain(gen)
    return elapsed


def drain(gen: Generator) -> None:
    deadline = time.perf_counter() + gen.timeout
    while gen.pending and time.perf_counter() < deadline:
        gen.poll(0.05)
    gen.expire(float("inf"))
    gen.completed.clear()


def unregister(gen: Generator, users: list[int]) -> None:
    """Remove the contacts this run registered (what a UA does when it quits), so that the
    next run's MESSAGEs are not also forked to this process's closed socket."""
    gen.expires = 0
    for user in users:
        gen.send("REGISTER", user, pending=Pending("REGISTER", user, 0.0, measured=False))
    drain(gen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", required=True, help="host:port of the SIP server (UDP)")
    parser.add_argument("--realm", required=True, help="SIP domain = digest realm")
    parser.add_argument("--password", required=True)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--user-format", default="user{i}")
    parser.add_argument("--timeout", type=float, default=4.0)
    parser.add_argument("test", choices=["register", "message"])
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=100)
    parser.add_argument("--rate", type=float, default=0.0, help="open loop at this rate")
    parser.add_argument("--server-pid", type=int, help="report this process's CPU per request")
    parser.add_argument(
        "--latency-log",
        help="write each measured request's due time (s into the run) and latency (ms) here",
    )
    args = parser.parse_args()
    gen = Generator(args)
    everyone = list(range(args.users))
    result: dict[str, object] = {"test": args.test, "target": args.target}
    if args.test == "register":
        # Warm-up: a nonce for every user (not measured), then REGISTER refreshes.
        closed_loop(gen, "REGISTER", everyone, 0, args.window, 1.0, measured=False)
        gen.stats = Stats()
        cpu_before = process_cpu(args.server_pid)
        elapsed = closed_loop(gen, "REGISTER", everyone, 0, args.window, args.duration)
        cpu_after = process_cpu(args.server_pid)
        result.update(mode=f"closed loop, window {args.window}")
        registered = everyone
    else:
        half = args.users // 2
        senders, receivers = everyone[:half], everyone[half:]
        closed_loop(gen, "REGISTER", receivers, 0, args.window, 1.0, measured=False)
        closed_loop(gen, "MESSAGE", senders, half, args.window, 1.0, measured=False)
        registered_ok = gen.receivers_answered > 0
        gen.stats = Stats()
        cpu_before = process_cpu(args.server_pid)
        if args.rate > 0:
            elapsed = open_loop(gen, senders, half, args.rate, args.duration)
            result.update(mode=f"open loop, {args.rate:g}/s offered")
        else:
            elapsed = closed_loop(gen, "MESSAGE", senders, half, args.window, args.duration)
            result.update(mode=f"closed loop, window {args.window}")
        cpu_after = process_cpu(args.server_pid)
        result["warmup_delivered"] = registered_ok
        registered = receivers
    result.update(gen.stats.summary(elapsed), seconds=round(elapsed, 2))
    if cpu_before is not None and cpu_after is not None and gen.stats.ok:
        # Includes the drain after the last send; the closed loop's last window is small.
        result["server_cpu_us"] = round((cpu_after - cpu_before) / gen.stats.ok * 1e6, 1)
    unregister(gen, registered)
    if args.latency_log:
        write_latency_log(Path(args.latency_log), gen.stats)
    print(json.dumps(result), flush=True)


def write_latency_log(path: Path, stats: Stats) -> None:
    """One line per measured request, in the order answered: when it was due to be sent
    (seconds from the first), its latency (ms, from when it was due) and how late this
    process sent it (ms). Slow requests that come in bursts at a steady period point at
    something outside the server (docs/performance.md, stop 17); slow requests that this
    process sent late, at a stall of the machine (stop 18). The first line gives the first
    one's time on this machine's monotonic clock."""
    start = min(stats.sent, default=0.0)
    path.write_text(
        f"# start {start:.6f} (time.perf_counter / CLOCK_MONOTONIC)\n"
        + "".join(
            f"{sent - start:.6f} {latency * 1000:.3f} {late * 1000:.3f}\n"
            for sent, latency, late in zip(stats.sent, stats.latencies, stats.late, strict=True)
        )
    )


if __name__ == "__main__":
    main()
