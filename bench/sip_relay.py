"""SIP edge benchmark: REGISTER rate, relayed MESSAGE rate, MESSAGE latency at fixed rates.

    python bench/sip_relay.py                        # starts `imstack serve relay` itself
    python bench/sip_relay.py --rates 100,2500       # open-loop rates for the latency runs
    python bench/sip_relay.py --kamailio             # and the same runs against Kamailio
    python bench/sip_relay.py --target 127.0.0.1:5060 --realm example.com --password pw
                                                     # any running server

Run by hand, never from the test suite. Without ``--target`` it starts an embedded
PostgreSQL in a temporary folder (on ``--db-cpu``, default 1, or unpinned with
``--db-cpu none``: never on the relay's core), applies the migrations, creates ``--users``
users over one connection, then starts ``imstack serve relay`` pinned to CPU 0 with
IMSTACK_DATABASE_URL pointing at that database and the per-source rate limit off (the load
comes from one address). The load generator (bench/sip_load.py: raw UDP, computes the
digest itself) runs pinned to CPU 1. With ``--target`` the users
``--user-format`` (``user{i}``) for i < ``--users`` must exist with ``--password`` in realm
``--realm``. Prints one JSON object per run and a summary table; for a relay it started, the
table has the relay process's CPU time per successful request (``cpu µs/req``: utime+stime
from /proc over the measured phase), which unlike the rates hardly depends on what else
the machine is doing. ``--profile FILE`` runs the relay under cProfile (slower) and writes
its statistics to FILE when it stops. ``--python /usr/bin/python3.11`` runs the relay with
another build of the same Python version (this virtualenv's packages on its path): the
same code took a quarter less CPU per request here with Debian's build than with pyenv's
(built without --enable-optimizations). ``--kamailio`` then runs the same tests against
Kamailio (bench/kamailio.py: registrar, usrloc, auth_db on the same PostgreSQL server, tm;
pinned to CPU 0 like the relay; ``--kamailio-children`` worker processes, usrloc's
``--kamailio-db-mode``; ``--no-imstack``: Kamailio alone), and the table has both, one after
the other in the same run: on a shared machine compare these, not figures from different
runs. ``BENCH_KEEP=1`` keeps the temporary folder (logs, Kamailio's configuration).
``--latency-log DIR`` writes every latency of each rate run, with when its request was
due and how late the generator sent it, to DIR/<server>-<rate>.txt: whether the slow ones
come alone or in bursts, and when. The table's ``late ms`` is the most the generator itself
sent a request late in a rate run: a stall of CPU 1 or of the whole machine, which a
server on CPU 0 most likely had at the same moment (docs/performance.md, stop 18).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.kamailio import Kamailio  # noqa: E402
from bench.proc_cpu import LocalServer  # noqa: E402
from shared.db.embedded import EmbeddedPostgres  # noqa: E402
from shared.db.migrate import migrate  # noqa: E402
from shared.db.users import Address, create_user  # noqa: E402

LOAD = [sys.executable, str(ROOT / "bench" / "sip_load.py")]
IMSTACK = str(Path(sys.executable).parent / "imstack")
REALM = "bench.local"
#: Runs ``imstack`` (``--python``: the interpreter given, not this virtualenv's).
RUN_IMSTACK = "import sys; from shared.cli import main; sys.argv[0] = 'imstack'; sys.exit(main())"
#: Runs ``imstack`` under cProfile timed by the process's CPU clock; statistics to argv[1].
PROFILE_CPU = """
import cProfile, sys, time
from shared.cli import main
out, sys.argv = sys.argv[1], ["imstack", *sys.argv[2:]]
profile = cProfile.Profile(time.process_time)
try:
    profile.runcall(main)
except SystemExit:
    pass
finally:
    profile.dump_stats(out)
"""
PASSWORD = "bench-secret"


def pinned(cpu: int) -> list[str]:
    return (
        ["taskset", "-c", str(cpu)]
        if shutil.which("taskset") and (os.cpu_count() or 1) > cpu
        else []
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout:g} s")


def on_cpu(cpu: int | None) -> set[int] | None:
    """Pin this process (and what it starts from now on) to ``cpu``; the previous set."""
    if cpu is None or not hasattr(os, "sched_setaffinity") or (os.cpu_count() or 1) <= cpu:
        return None
    previous = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {cpu})
    return previous


class Database:
    """An embedded PostgreSQL of its own, started outside the relay's CPU pin."""

    def __init__(self, workdir: Path, cpu: int | None) -> None:
        self.embedded = EmbeddedPostgres(workdir / "db")
        self.cpu = cpu
        self.url = ""

    def start(self, users: int) -> None:
        previous = on_cpu(self.cpu)
        try:
            self.url = self.embedded.start()  # the server inherits our affinity
        finally:
            if previous is not None:
                os.sched_setaffinity(0, previous)
        asyncio.run(self._prepare(users))

    async def _prepare(self, users: int) -> None:
        conn = await asyncpg.connect(self.url)
        try:
            await migrate(conn)
            for i in range(users):
                await create_user(conn, Address(f"user{i}", REALM), PASSWORD)
        finally:
            await conn.close()

    def stop(self) -> None:
        self.embedded.stop()


def build_compiled() -> str:
    """Build the compiled variant (scripts/compile) and return the folder to run it from."""
    print("building the compiled variant (scripts/compile)...", file=sys.stderr, flush=True)
    done = subprocess.run(
        [str(ROOT / "scripts" / "compile")], check=True, capture_output=True, text=True
    )
    return done.stdout.strip().splitlines()[-1]


class Imstack(LocalServer):
    """``imstack serve <services>`` pinned to CPU 0 (``extra_env``: more IMSTACK_* settings)."""

    def __init__(
        self,
        workdir: Path,
        database_url: str,
        services: tuple[str, ...] = ("relay",),
        extra_env: dict[str, str] | None = None,
        profile: str | None = None,
        python: str | None = None,
        compiled: str | None = None,
    ) -> None:
        self.workdir = workdir
        self.profile = profile
        self.python = python
        self.compiled = compiled
        self.services = services
        super().__init__(free_port())
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")},
            "IMSTACK_DATABASE_URL": database_url,
            "IMSTACK_DATA_DIR": str(workdir / "data"),
            "IMSTACK_DOMAIN": REALM,
            "IMSTACK_SIP_HOST": "127.0.0.1",
            "IMSTACK_SIP_PORT": str(self.port),
            "IMSTACK_SIP_TLS_PORT": str(free_port()),
            "IMSTACK_MSRP_HOST": "127.0.0.1",
            "IMSTACK_MSRP_PORT": str(free_port()),
            "IMSTACK_SIP_RATE_LIMIT": "0",  # every request comes from 127.0.0.1
            "IMSTACK_LOG_LEVEL": "WARNING",
            **(extra_env or {}),
        }

    def start(self) -> None:
        command = [IMSTACK, "serve", *self.services]
        if self.profile:  # CPU time, not the default wall clock (idle and preempted time)
            command = [sys.executable, "-c", PROFILE_CPU, self.profile, "serve", *self.services]
        elif self.python:  # another build of this Python version, with this venv's packages
            site = [p for p in sys.path if p.endswith("site-packages")]
            self.env["PYTHONPATH"] = os.pathsep.join([*site, str(ROOT)])
            command = [self.python, "-c", RUN_IMSTACK, "serve", *self.services]
        if self.compiled:  # its modules first (the .py and, for some, C extensions)
            paths = [self.compiled, *filter(None, self.env.get("PYTHONPATH", "").split(os.pathsep))]
            self.env["PYTHONPATH"] = os.pathsep.join(paths)
            check = "from shared.compiled import *; assert len(compiled_modules()) == len(MODULES)"
            subprocess.run(
                [self.python or sys.executable, "-c", check],
                env=self.env,
                cwd=self.workdir,
                check=True,
            )
        self.proc = subprocess.Popen(
            [*pinned(0), *command],
            env=self.env,
            cwd=self.workdir,  # not this checkout: with ``-c``, the first place imports look
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"{'-'.join(self.services)}.log", "ab"),  # noqa: SIM115
        )
        wait_port(self.port)


def run_load(
    args: argparse.Namespace,
    target: str,
    realm: str,
    password: str,
    *extra: str,
    server_pid: int | None = None,
) -> dict[str, object]:
    if server_pid is not None:
        extra = (*extra, "--server-pid", str(server_pid))
    command = [
        *pinned(1),
        *LOAD,
        "--target",
        target,
        "--realm",
        realm,
        "--password",
        password,
        "--users",
        str(args.users),
        "--user-format",
        args.user_format,
        *extra,
        "--duration",
        str(args.duration),
    ]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, object] = json.loads(out.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def run_tests(
    args: argparse.Namespace,
    target: str,
    realm: str,
    password: str,
    pid: int | None,
    name: str,
) -> list[dict[str, object]]:
    """The runs ``--tests`` asks for against the server at ``target`` (``name`` in the table)."""
    window = ["--window", str(args.window)]
    tests = {t.strip() for t in args.tests.split(",")}
    runs: list[tuple[str, ...]] = [
        (test, *window) for test in ("register", "message") if test in tests
    ]
    rates = args.rates.split(",") if "rates" in tests else []
    runs += [("message", "--rate", f"{float(r):g}") for r in rates if r.strip()]
    if args.latency_log:  # a file per server and rate
        folder = Path(args.latency_log)
        folder.mkdir(parents=True, exist_ok=True)
        runs = [
            (*run, "--latency-log", str(folder / f"{name}-{run[2]}.txt"))
            if run[1] == "--rate"
            else run
            for run in runs
        ]
    results = []
    for extra in runs:
        result = run_load(args, target, realm, password, *extra, server_pid=pid)
        result["server"] = name
        results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--target", help="host:port of a running server (default: start imstack)")
    parser.add_argument("--realm", default=REALM)
    parser.add_argument("--password", default=PASSWORD)
    parser.add_argument("--users", type=int, default=100)
    parser.add_argument("--user-format", default="user{i}")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--rates", default="100,2500", help="open-loop MESSAGE rates, per second")
    parser.add_argument(
        "--db-cpu", default="1", help="CPU for the embedded PostgreSQL, or 'none' (unpinned)"
    )
    parser.add_argument("--profile", help="run the relay under cProfile, statistics to this file")
    parser.add_argument(
        "--python",
        help="run the relay with this interpreter (same Python version as this virtualenv, "
        "whose packages it uses), e.g. a distribution's PGO/LTO build instead of pyenv's",
    )
    parser.add_argument(
        "--compiled",
        action="store_true",
        help="run the compiled build of the relay (scripts/compile builds it first)",
    )
    parser.add_argument(
        "--tests", default="register,message,rates", help="which runs (register,message,rates)"
    )
    parser.add_argument(
        "--kamailio", action="store_true", help="then the same runs against Kamailio"
    )
    parser.add_argument("--kamailio-children", type=int, default=4)
    parser.add_argument(
        "--kamailio-db-mode",
        type=int,
        default=1,
        choices=[0, 1, 2],
        help="usrloc's db_mode: 1 write-through (as imstack), 2 write-back, 0 memory only",
    )
    parser.add_argument("--no-imstack", action="store_true", help="with --kamailio: only it")
    parser.add_argument(
        "--latency-log",
        metavar="DIR",
        help="write each rate run's latencies to DIR/<server>-<rate>.txt (sip_load.py)",
    )
    args = parser.parse_args()
    if args.kamailio and args.target:
        parser.error("--kamailio starts its own database: not with --target")
    if args.no_imstack and not args.kamailio:
        parser.error("--no-imstack leaves nothing to run without --kamailio")

    server: Imstack | None = None
    kamailio: Kamailio | None = None
    database: Database | None = None
    workdir: Path | None = None
    target = args.target
    results: list[dict[str, object]] = []
    try:
        if target is None:
            workdir = Path(tempfile.mkdtemp(prefix="imstack-sip-bench-"))
            database = Database(workdir, None if args.db_cpu == "none" else int(args.db_cpu))
            started = time.monotonic()
            database.start(args.users)
            print(
                f"database ready, {args.users} users, in {time.monotonic() - started:.1f} s",
                file=sys.stderr,
                flush=True,
            )
            if not args.no_imstack:
                profile = str(Path(args.profile).resolve()) if args.profile else None
                compiled = build_compiled() if args.compiled else None
                server = Imstack(
                    workdir, database.url, profile=profile, python=args.python, compiled=compiled
                )
                server.start()
                results += run_tests(args, server.target, REALM, PASSWORD, server.pid, "imstack")
                server.stop()
            if args.kamailio:
                kamailio = Kamailio(
                    workdir,
                    database.url,
                    free_port(),
                    REALM,
                    PASSWORD,
                    users=args.users,
                    user_format=args.user_format,
                    children=args.kamailio_children,
                    db_mode=args.kamailio_db_mode,
                    cpu=pinned(0),
                )
                kamailio.start()
                results += run_tests(
                    args, kamailio.target, REALM, PASSWORD, kamailio.pid, "kamailio"
                )
        else:
            results += run_tests(args, target, args.realm, args.password, None, target)
    finally:
        if server is not None:
            server.stop()
        if kamailio is not None:
            kamailio.stop()
        if database is not None:
            database.stop()
        if workdir is not None:
            if os.environ.get("BENCH_KEEP"):
                print(f"kept {workdir}", file=sys.stderr)
            else:
                shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\n{'server':<10} {'run':<40} {'ok/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'cpu µs/req':>10} "
        f"{'late ms':>8} {'lost':>6} failed"
    )
    for r in results:
        name = f"{r['test']} ({r['mode']})"
        late = r.get("sent_late_max_ms") if "open loop" in str(r["mode"]) else "-"
        print(
            f"{r['server']!s:<10} {name:<40} {r['rate']!s:>8} {r['p50_ms']!s:>8} "
            f"{r['p99_ms']!s:>8} {r.get('server_cpu_us', '-')!s:>10} {late!s:>8} "
            f"{r['lost']!s:>6} {r['failed']}"
        )


if __name__ == "__main__":
    main()
