"""Control API benchmark: room creation and message sends at a fixed request rate.

    python bench/api.py                          # starts `imstack serve api` itself
    python bench/api.py --rate 100,150,200 --duration 8 --scenarios rooms,send-stored
    python bench/api.py --target http://127.0.0.1:8000 --token T --pid 1234
                                # a running API: users user0..user2, user2 registered

Run by hand, never from the test suite. Without ``--target`` it starts an embedded
PostgreSQL in a temporary folder (on ``--db-cpu``, default 1), applies the migrations,
creates the users ``user0``, ``user1`` and ``user2`` (with a live binding, as a REGISTER
leaves one) and starts ``imstack serve api`` pinned to CPU 0 with a configured admin
token; this process (the load) moves to CPU 1. Only the API runs: queued rows (relay, imc,
msilo) pile up in their tables unconsumed, which is what the API alone costs.

The load speaks HTTP/1.1 itself over keep-alive connections (a few lines of asyncio
streams, no HTTP library): httpx cost the load some 2-3 ms of CPU a request, more than
the API it measures, on a core it shares with PostgreSQL.

The load is open-loop: request *i* of a run is started at ``start + i / rate`` whether or
not earlier ones were answered (at most ``--max-in-flight`` at once; a request that would
exceed it counts as dropped), and its latency runs from that scheduled time to the end of
its response, so a stall shows up in the percentiles instead of slowing the load. Each
request is checked (201 for a room, 202 for a send); anything else counts as an error.
Scenarios:

* ``health``: ``GET /healthz`` (not run by default): the baseline of the server and the
  framework without the database.
* ``rooms``: ``POST /api/v1/rooms`` with a new name each time (owner user0).
* ``send-stored``: ``POST /api/v1/messages`` to user1, not registered: stored offline.
* ``send-queued``: ``POST /api/v1/messages`` to user2, registered: queued for the relay.
* ``send-room``: ``POST /api/v1/messages`` from user0 to a room: queued for the room worker.

``--rate`` takes a list (``100,150,200``): each scenario runs at each rate in turn.

The API's CPU time (``/proc/<pid>/stat`` utime+stime of the server process, the
``--pid`` given or the one started) is read around each run: CPU ms per request is what
the API costs whatever else the machine is doing. The CPU share each side (API, load)
got over the run is printed too: a share far below 1 with requests piling up means the
machine, not the API, set the pace. Prints one JSON object per run and a
summary table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.sip_relay import (  # noqa: E402
    IMSTACK,
    REALM,
    Database,
    free_port,
    on_cpu,
    pinned,
    wait_port,
)

CONF = f"conference.{REALM}"
SCENARIOS = ("rooms", "send-stored", "send-queued", "send-room")
BASELINE = "health"  # GET /healthz: what the framework and the server cost alone


def cpu_times(pid: int) -> tuple[float, float]:
    """(utime, stime) of the process (its threads included), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class Api:
    """``imstack serve api`` on 127.0.0.1 pinned to CPU 0, with one configured token."""

    def __init__(self, workdir: Path, database_url: str) -> None:
        self.port = free_port()
        self.token = secrets.token_urlsafe(24)
        self.workdir = workdir
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")},
            "IMSTACK_DATABASE_URL": database_url,
            "IMSTACK_DATA_DIR": str(workdir / "data"),
            "IMSTACK_DOMAIN": REALM,
            "IMSTACK_API_HOST": "127.0.0.1",
            "IMSTACK_API_PORT": str(self.port),
            "IMSTACK_API_TOKENS": self.token,
            # send-stored piles thousands of messages on one user: no mailbox quota here.
            "IMSTACK_MSILO_MAX_MESSAGES": "0",
            "IMSTACK_LOG_LEVEL": "WARNING",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> int:
        self.proc = subprocess.Popen(
            [*pinned(0), IMSTACK, "serve", "api"],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / "api.log", "ab"),  # noqa: SIM115
        )
        wait_port(self.port)
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
            self.proc = None


class HttpClient:
    """Minimal HTTP/1.1 keep-alive client for the load: one request at a time per
    connection, idle connections reused, a fresh one opened when none is idle."""

    def __init__(self, url: str, token: str) -> None:
        host_port = url.split("://", 1)[1].rstrip("/")
        self.host, _, port = host_port.rpartition(":")
        self.port = int(port)
        self.head = (
            f"Host: {host_port}\r\nAuthorization: Bearer {token}\r\n"
            "Content-Type: application/json\r\n"
        )
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.opened = 0  # connections opened so far

    async def request(self, method: str, path: str, body: object | None = None) -> int:
        """The response's status (its body is read and dropped)."""
        data = b"" if body is None else json.dumps(body).encode()
        message = (
            f"{method} {path} HTTP/1.1\r\n{self.head}Content-Length: {len(data)}\r\n\r\n"
        ).encode() + data
        reused = bool(self.idle)
        reader, writer = self.idle.pop() if reused else await self._connect()
        try:
            status, keep = await self._exchange(reader, writer, message)
        except (ConnectionError, asyncio.IncompleteReadError):
            writer.close()
            if not reused:
                raise
            # The server closed an idle connection (keep-alive timeout): once more, anew.
            reader, writer = await self._connect()
            status, keep = await self._exchange(reader, writer, message)
        if keep:
            self.idle.append((reader, writer))
        else:
            writer.close()
        return status

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        self.opened += 1
        return await asyncio.open_connection(self.host, self.port)

    @staticmethod
    async def _exchange(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: bytes
    ) -> tuple[int, bool]:
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length, keep = 0, True
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        if length:
            await reader.readexactly(length)
        return status, keep

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


def request_for(scenario: str, i: int, tag: str) -> tuple[str, dict[str, object] | None, int]:
    """(path, JSON body (None: a GET), expected status) of request ``i`` of ``scenario``."""
    if scenario == BASELINE:
        return "/healthz", None, 200
    if scenario == "rooms":
        return "/api/v1/rooms", {"name": f"r{tag}-{i}", "owner": "user0"}, 201
    if scenario == "send-stored":
        return "/api/v1/messages", {"to": "user1", "sender": "user0", "body": f"m{i}"}, 202
    if scenario == "send-queued":
        return "/api/v1/messages", {"to": "user2", "sender": "user0", "body": f"m{i}"}, 202
    if scenario == "send-room":
        body = {"to": f"bench@{CONF}", "sender": "user0", "body": f"m{i}"}
        return "/api/v1/messages", body, 202
    raise SystemExit(f"unknown scenario {scenario!r}")


def register(database_url: str, aor: str) -> None:
    """A binding for ``aor`` valid for a day, as a REGISTER through the relay leaves one."""

    async def insert() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(
                """INSERT INTO locations (aor, contact, transport, source_host, source_port,
                       relay_instance, call_id, cseq, expires_at)
                   VALUES ($1, $2, 'udp', '127.0.0.1', 5999, 'bench', 'bench-reg', 1,
                           now() + interval '1 day')""",
                aor,
                f"sip:{aor}",
            )
        finally:
            await conn.close()

    asyncio.run(insert())


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(
    client: HttpClient,
    scenario: str,
    rate: float,
    duration: float,
    max_in_flight: int,
    pid: int | None,
) -> dict[str, object]:
    total = int(rate * duration)
    tag = secrets.token_hex(3)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    dropped = 0
    in_flight: set[asyncio.Task[None]] = set()

    async def one(i: int, scheduled: float) -> None:
        path, body, expected = request_for(scenario, i, tag)
        try:
            status = str(await client.request("GET" if body is None else "POST", path, body))
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            status = type(exc).__name__
        if status == str(expected):
            latencies.append(time.perf_counter() - scheduled)
        else:
            errors[status] = errors.get(status, 0) + 1

    opened_before = client.opened
    cpu_before = cpu_times(pid) if pid else None
    load_cpu_before = time.process_time()
    start = time.perf_counter() + 0.05
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        if len(in_flight) >= max_in_flight:
            dropped += 1
            continue
        task = asyncio.create_task(one(i, scheduled))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    if in_flight:
        await asyncio.wait(in_flight)
    elapsed = time.perf_counter() - start
    load_cpu = time.process_time() - load_cpu_before
    user = system = None
    if pid and cpu_before is not None:
        after = cpu_times(pid)
        user, system = after[0] - cpu_before[0], after[1] - cpu_before[1]
    cpu = user + system if user is not None and system is not None else None
    done = len(latencies)
    result: dict[str, object] = {
        "scenario": scenario,
        "rate": rate,
        "duration": duration,
        "sent": total - dropped,
        "ok": done,
        "errors": errors,
        "dropped": dropped,
        "achieved_rps": round(done / elapsed, 1),
        "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "p90_ms": round(percentile(latencies, 0.90) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "max_ms": round(max(latencies, default=float("nan")) * 1000, 2),
        "api_cpu_ms_per_request": round(cpu * 1000 / max(done, 1), 3) if cpu is not None else None,
        # of which in the kernel (sockets, epoll): what a request costs below Python
        "api_sys_ms_per_request": (
            round(system * 1000 / max(done, 1), 3) if system is not None else None
        ),
        # CPU share each side got over the run: far below 1 means the machine starved it.
        "api_cpu_share": round(cpu / elapsed, 3) if cpu is not None else None,
        "load_cpu_share": round(load_cpu / elapsed, 3),
        "load_cpu_ms_per_request": round(load_cpu * 1000 / max(done, 1), 3),
        "connections_opened": client.opened - opened_before,
    }
    print(json.dumps(result), flush=True)
    return result


async def bench(args: argparse.Namespace, url: str, token: str, pid: int | None) -> list[dict]:
    client = HttpClient(url, token)
    try:
        status = await client.request("POST", "/api/v1/rooms", {"name": "bench", "owner": "user0"})
        if status not in (201, 409):
            raise SystemExit(f"cannot create the room for send-room: {status}")
        for _ in range(args.warmup):
            await client.request("GET", "/api/v1/rooms/bench")
        results = []
        for rate in (float(r) for r in str(args.rate).split(",")):
            for scenario in args.scenarios.split(","):
                results.append(
                    await run(client, scenario, rate, args.duration, args.max_in_flight, pid)
                )
        return results
    finally:
        client.close()


def table(results: list[dict]) -> None:
    print()
    print(
        f"{'scenario':<12} {'rate':>6} {'ok':>6} {'err':>4} {'req/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'max ms':>7} {'cpu ms/req':>10}"
    )
    for r in results:
        errors = sum(r["errors"].values()) + r["dropped"]
        print(
            f"{r['scenario']:<12} {r['rate']:>6g} {r['ok']:>6} {errors:>4} "
            f"{r['achieved_rps']:>7} {r['p50_ms']:>7} {r['p99_ms']:>7} {r['max_ms']:>7} "
            f"{r['api_cpu_ms_per_request'] if r['api_cpu_ms_per_request'] is not None else '-':>10}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="base URL of a running API (default: start imstack)")
    parser.add_argument("--token", help="admin token for --target")
    parser.add_argument("--pid", type=int, help="the --target server's process id (CPU time)")
    parser.add_argument(
        "--rate", default="200", help="requests per second; a list (100,150,200) runs each"
    )
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--max-in-flight", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=50, help="requests before measuring")
    parser.add_argument(
        "--db-cpu", default="1", help="CPU for the embedded PostgreSQL, or 'none' (unpinned)"
    )
    args = parser.parse_args()
    if args.target:
        if not args.token:
            raise SystemExit("--target needs --token")
        results = asyncio.run(bench(args, args.target, args.token, args.pid))
        table(results)
        return

    workdir = Path(tempfile.mkdtemp(prefix="imstack-bench-api-"))
    database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
    api: Api | None = None
    try:
        database.start(3)  # user0, user1 and user2
        register(database.url, f"user2@{REALM}")
        api = Api(workdir, database.url)
        pid = api.start()
        on_cpu(1)  # the load off the API's core
        results = asyncio.run(bench(args, api.url, api.token, pid))
        table(results)
    finally:
        if api is not None:
            api.stop()
        database.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
