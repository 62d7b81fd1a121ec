"""Kamailio beside imstack in the benchmarks: the same work, the same database server.

Used by ``bench/sip_relay.py --kamailio`` and ``bench/msilo.py --kamailio``; run by hand,
never from the test suite. Needs Debian's ``kamailio`` and ``kamailio-postgres-modules``.

:class:`Kamailio` creates a database ``kamailio`` in the benchmark's embedded PostgreSQL
(Kamailio's own schema from ``/usr/share/kamailio/postgres``: version, subscriber,
location, silo), adds the same users with the same password (``subscriber``, plain
password and HA1), writes the configuration below and starts ``kamailio`` pinned to CPU
0, as imstack is: ``registrar`` + ``usrloc`` (by default write-through, ``db_mode`` 1,
like the imstack registrar, which commits every binding before its 200; ``db_mode`` 2
writes them back on a timer) + ``auth_db`` on PostgreSQL + ``tm``, and
``msilo`` as its README's example configuration has it (``m_store`` and 202 for a MESSAGE
to a user with no binding, or whose every branch failed; ``m_dump`` after a REGISTER, its
MESSAGEs sent back through Kamailio itself, which relays them to the binding).
Kamailio reaches PostgreSQL over the same Unix socket as imstack (``PGHOST``).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg

from bench.proc_cpu import LocalServer

KAMAILIO = "/usr/sbin/kamailio"
SCHEMA = Path("/usr/share/kamailio/postgres")
MODULES = Path("/usr/lib/x86_64-linux-gnu/kamailio/modules")
TABLES = ("standard", "auth_db", "usrloc", "msilo")

CONFIG = """#!KAMAILIO
debug=1
log_stderror=yes
children={children}
tcp_children={children}
auto_aliases=no
listen=udp:127.0.0.1:{port}
listen=tcp:127.0.0.1:{port}
alias="{realm}"
mpath="{modules}"

loadmodule "kex.so"
loadmodule "corex.so"
loadmodule "tm.so"
loadmodule "tmx.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "maxfwd.so"
loadmodule "textops.so"
loadmodule "siputils.so"
loadmodule "db_postgres.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
loadmodule "auth.so"
loadmodule "auth_db.so"
loadmodule "msilo.so"

modparam("usrloc", "db_url", "{db}")
modparam("usrloc", "db_mode", {db_mode})
modparam("registrar", "max_expires", 7200)
modparam("auth_db", "db_url", "{db}")
modparam("auth_db", "calculate_ha1", 0)
modparam("auth_db", "password_column", "ha1")
modparam("auth_db", "load_credentials", "")
modparam("auth", "nonce_expire", 300)
modparam("msilo", "db_url", "{db}")
modparam("msilo", "add_date", 1)
modparam("msilo", "expire_time", 259200)
# m_dump sends to the stored To URI; this host's domain resolves nowhere: back to itself.
modparam("msilo", "outbound_proxy", "sip:127.0.0.1:{port}")

request_route {{
    if (!mf_process_maxfwd_header("10")) {{
        sl_send_reply("483", "Too Many Hops");
        exit;
    }}
    if (has_totag()) {{
        if (loose_route() || is_method("ACK")) {{
            t_relay();
            exit;
        }}
        sl_send_reply("404", "Not here");
        exit;
    }}
    if (is_method("CANCEL")) {{
        if (t_check_trans()) t_relay();
        exit;
    }}
    t_check_trans();
    if (is_method("REGISTER")) {{
        if (!auth_check("$fd", "subscriber", "1")) {{
            auth_challenge("$fd", "0");
            exit;
        }}
        if (!save("location")) sl_reply_error();
        m_dump();
        exit;
    }}
    # Every request comes from 127.0.0.1 here: only what msilo sends (from Kamailio's own
    # port, through outbound_proxy) goes without credentials.
    if (from_uri == myself && !($si == "127.0.0.1" && $sp == {port})) {{
        if (!auth_check("$fd", "subscriber", "1")) {{
            auth_challenge("$fd", "0");
            exit;
        }}
        consume_credentials();
    }}
    if (uri != myself) {{
        sl_send_reply("403", "Not relaying");
        exit;
    }}
    if (is_method("OPTIONS") && $rU == $null) {{
        sl_send_reply("200", "OK");
        exit;
    }}
    if (!lookup("location")) {{
        if (is_method("MESSAGE")) {{
            t_newtran();
            if (m_store("$ru")) t_reply("202", "Accepted");
            else t_reply("503", "Service Unavailable");
            exit;
        }}
        sl_send_reply("404", "Not Found");
        exit;
    }}
    if (is_method("MESSAGE")) t_on_failure("MSILO");
    if (!t_relay()) sl_reply_error();
    exit;
}}

failure_route[MSILO] {{
    if (m_store("$ou")) t_reply("202", "Accepted");
    else t_reply("503", "Service Unavailable");
}}
"""


async def stored_bodies(url: str, aor: str) -> list[bytes]:
    """What Kamailio's msilo holds for ``aor``, in storage order (its ``silo`` table)."""
    user, _, domain = aor.partition("@")
    conn = await asyncpg.connect(url)
    try:
        rows = await conn.fetch(
            "SELECT body FROM silo WHERE username = $1 AND domain = $2 ORDER BY id", user, domain
        )
        return [bytes(row["body"]) for row in rows]
    finally:
        await conn.close()


def available() -> str | None:
    """Why Kamailio cannot run here, or None."""
    if not Path(KAMAILIO).exists():
        return f"{KAMAILIO} is missing: apt-get install kamailio kamailio-postgres-modules"
    if not (MODULES / "db_postgres.so").exists() or not SCHEMA.is_dir():
        return "Kamailio's PostgreSQL module is missing: apt-get install kamailio-postgres-modules"
    return None


def ha1(user: str, realm: str, password: str) -> str:
    return hashlib.md5(f"{user}:{realm}:{password}".encode()).hexdigest()


class Kamailio(LocalServer):
    """Kamailio on ``port`` with the users ``user_format`` % i for i < ``users``, its data in
    a database ``kamailio`` of the PostgreSQL server behind ``admin_url`` (asyncpg's)."""

    def __init__(
        self,
        workdir: Path,
        admin_url: str,
        port: int,
        realm: str,
        password: str,
        *,
        users: int = 100,
        user_format: str = "user{i}",
        children: int = 4,
        db_mode: int = 1,
        cpu: list[str] | None = None,
    ) -> None:
        super().__init__(port)
        self.workdir = workdir / "kamailio"
        self.admin_url = admin_url
        self.realm = realm
        self.password = password
        self.users = users
        self.user_format = user_format
        self.children = children
        self.db_mode = db_mode
        self.pinned = cpu or []

    @property
    def url(self) -> str:
        """Kamailio's database (asyncpg's URL)."""
        return self.admin_url.replace(urlsplit(self.admin_url).path, "/kamailio", 1)

    async def _prepare(self) -> None:
        admin = await asyncpg.connect(self.admin_url)
        try:
            await admin.execute("DROP DATABASE IF EXISTS kamailio")
            await admin.execute("CREATE DATABASE kamailio")
        finally:
            await admin.close()
        conn = await asyncpg.connect(self.url)
        try:
            for table in TABLES:
                await conn.execute((SCHEMA / f"{table}-create.sql").read_text())
            rows = []
            for i in range(self.users):
                user = self.user_format.format(i=i)
                rows.append(
                    (
                        user,
                        self.realm,
                        self.password,
                        ha1(user, self.realm, self.password),
                        ha1(f"{user}@{self.realm}", self.realm, self.password),
                    )
                )
            columns = ["username", "domain", "password", "ha1", "ha1b"]
            await conn.copy_records_to_table("subscriber", records=rows, columns=columns)
        finally:
            await conn.close()

    def start(self, *, fresh: bool = True) -> None:
        """Start Kamailio (``fresh``: on a new database; else on the one it had)."""
        problem = available()
        if problem:
            raise SystemExit(problem)
        if fresh:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir.mkdir(parents=True)
            asyncio.run(self._prepare())
        config = self.workdir / "kamailio.cfg"
        config.write_text(
            CONFIG.format(
                children=self.children,
                db_mode=self.db_mode,
                port=self.port,
                realm=self.realm,
                modules=MODULES,
                # No host: libpq takes PGHOST, the embedded server's socket directory.
                db=f"postgres://{urlsplit(self.admin_url).username or 'postgres'}@/kamailio",
            )
        )
        socket_dir = parse_qs(urlsplit(self.admin_url).query).get("host", [""])[0]
        env = {**os.environ, "PGHOST": socket_dir}
        command = [KAMAILIO, "-f", str(config), "-DD", "-E", "-m", "1024", "-M", "16"]
        command += ["-Y", str(self.workdir), "-P", str(self.workdir / "kamailio.pid")]
        log = open(self.workdir / "kamailio.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [*self.pinned, *command], env=env, stdout=log, stderr=log, cwd=self.workdir
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(
                    "kamailio stopped at start:\n"
                    + (self.workdir / "kamailio.log").read_text()[-3000:]
                )
            try:  # it opens its TCP listener with the UDP one
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise SystemExit(f"kamailio does not answer on 127.0.0.1:{self.port}")
