"""baresip and linphonec driven headlessly (see ../shared/reference/sip-clients.md)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import shutil
import socket
from pathlib import Path

TIMEOUT = 20.0  # seconds to wait for a client to show something it should show at once

MODULE_PATH = "/usr/lib/baresip/modules"
APT_LINE = "apt-get install -y baresip-core linphone-cli"


def free_port_block(size: int = 10) -> int:
    """The first of ``size`` consecutive ports free for UDP and TCP (clients bind several)."""
    rng = random.Random()
    while True:
        base = rng.randrange(20000, 30000, size)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + size):
                    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                        sock = stack.enter_context(socket.socket(socket.AF_INET, kind))
                        sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base


def missing_clients() -> str | None:
    missing = [name for name in ("baresip", "linphonec") if shutil.which(name) is None]
    if missing:
        return f"{' and '.join(missing)} not installed (CI runs: {APT_LINE})"
    return None


class OutputWatcher:
    """Collects a process's output lines; ``wait_for`` returns the first line containing text."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self._changed = asyncio.Event()
        self._task = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            self.lines.append(line.decode("utf-8", "replace").rstrip("\r\n"))
            self._changed.set()

    async def wait_for(self, text: str, start: int = 0) -> str:
        async with asyncio.timeout(TIMEOUT):
            while True:
                for line in self.lines[start:]:
                    if text in line:
                        return line
                self._changed.clear()
                await self._changed.wait()

    def text(self) -> str:
        return "\n".join(self.lines)


class Baresip:
    def __init__(
        self,
        home: Path,
        user: str,
        password: str,
        domain: str,
        server: int,
        port: int,
        transport: str,
    ) -> None:
        self.home = home
        self.port = port
        self.user = user
        home.mkdir(parents=True, exist_ok=True)
        (home / "config").write_text(
            f"module_path\t{MODULE_PATH}\n"
            f"sip_listen\t127.0.0.1:{port}\n"
            "module\tstdio.so\nmodule\taccount.so\nmodule\tmenu.so\nmodule\tcontact.so\n"
            "module\tctrl_tcp.so\n"
            f"ctrl_tcp_listen\t127.0.0.1:{port + 5}\n"
        )
        outbound = f"sip:127.0.0.1:{server}" + (";transport=tcp" if transport == "tcp" else "")
        (home / "accounts").write_text(
            f"<sip:{user}@{domain}>;auth_user={user};auth_pass={password};"
            f'outbound="{outbound}";regint=300\n'
        )
        self.contacts = home / "contacts"
        self.process: asyncio.subprocess.Process | None = None
        self.output: OutputWatcher | None = None

    def add_contact(self, uri: str) -> None:
        with self.contacts.open("a") as f:
            f.write(f"<{uri}>\n")

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            "baresip",
            "-s",
            "-f",
            str(self.home),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        assert self.process.stdout is not None
        self.output = OutputWatcher(self.process.stdout)

    async def command(self, command: str, params: str = "") -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port + 5)
        data = json.dumps({"command": command, "params": params, "token": "t"}).encode()
        writer.write(f"{len(data)}:".encode() + data + b",")
        await writer.drain()
        await asyncio.wait_for(reader.read(4096), TIMEOUT)
        writer.close()

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        try:
            await self.command("quit")
            await asyncio.wait_for(self.process.wait(), 5)
        except (OSError, TimeoutError):
            self.process.kill()
            await self.process.wait()


class Linphonec:
    def __init__(
        self,
        home: Path,
        user: str,
        password: str,
        domain: str,
        server: int,
        port: int,
        transport: str,
    ) -> None:
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        (home / "home").mkdir(exist_ok=True)
        udp, tcp = (port, -1) if transport == "udp" else (-1, port)
        (home / "linphonerc").write_text(
            f"""[sip]
sip_port={udp}
sip_tcp_port={tcp}
sip_tls_port=-1
default_proxy=0
im_notif_policy=none
register_only_when_network_is_up=0

[rtp]
audio_rtp_port={port + 2}
video_rtp_port={port + 4}

[sound]
playback_dev_id=
capture_dev_id=

[storage]
uri={home / "linphone.db"}

[proxy_0]
reg_proxy=<sip:127.0.0.1:{server};transport={transport}>
reg_route=<sip:127.0.0.1:{server};transport={transport};lr>
reg_identity=<sip:{user}@{domain}>
reg_expires=300
reg_sendregister=1
publish=0

[auth_info_0]
username={user}
passwd={password}
realm={domain}
domain={domain}
"""
        )
        self.process: asyncio.subprocess.Process | None = None
        self.output: OutputWatcher | None = None

    async def start(self) -> None:
        env = {**os.environ, "HOME": str(self.home / "home")}
        self.process = await asyncio.create_subprocess_exec(
            "linphonec",
            "-c",
            str(self.home / "linphonerc"),
            "-d",
            "6",
            "-l",
            str(self.home / "debug.log"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
        )
        assert self.process.stdout is not None
        self.output = OutputWatcher(self.process.stdout)

    def type(self, line: str) -> None:
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        try:
            self.type("quit")
            await asyncio.wait_for(self.process.wait(), 10)
        except (OSError, TimeoutError):
            self.process.kill()
            await self.process.wait()
