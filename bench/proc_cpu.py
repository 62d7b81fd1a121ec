"""CPU seconds (user + system) used by a process, or by a process and its descendants.

The benchmarks report CPU per delivered message for the imstack process (all its services
in one process) and for PostgreSQL (the postmaster and its backends): on a shared machine
that is steadier than wall-clock throughput. Linux only (``/proc``); elsewhere 0.0.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


def cpu_seconds(pid: int) -> float:
    stat = _stat(pid)
    return 0.0 if stat is None else stat[1]


def all_stats() -> dict[int, tuple[int, float]]:
    """(parent pid, CPU seconds) of every live process, by pid."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    return stats


def tree_cpu_seconds(root: int, stats: dict[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds of ``root`` and of every live descendant (finished ones are not counted);
    ``stats``: an :func:`all_stats` reading to use instead of a new one."""
    parents = all_stats() if stats is None else stats
    total = 0.0
    for pid, (_, cpu) in parents.items():
        seen = pid
        while seen and seen != root:
            seen = parents.get(seen, (0, 0.0))[0]
        if seen == root:
            total += cpu
    return total


_BACKGROUND = (
    "checkpointer",
    "background writer",
    "walwriter",
    "autovacuum",
    "logical replication",
    "stats collector",
    "archiver",
    "walsender",
    "io worker",
)


def _role(pid: int) -> str:
    """What a PostgreSQL process is, from its title: ``checkpointer``, ``walwriter``,
    ``autovacuum``..., or ``backend <pid>`` for a client's connection."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return "gone"
    title = title.removeprefix("postgres: ").strip()
    if not title or title.startswith("/"):
        return "postmaster"
    for role in _BACKGROUND:
        if title.startswith(role):
            return role
    return f"backend {pid}"  # "user database host(port) state": a client's connection


def tree_cpu_by_pid(
    root: int, stats: dict[int, tuple[int, float]] | None = None
) -> dict[int, tuple[str, float]]:
    """(role, CPU seconds) of ``root`` and of each of its children, by pid (``stats``: as
    for :func:`tree_cpu_seconds`)."""
    stats = all_stats() if stats is None else stats
    result: dict[int, tuple[str, float]] = {}
    for pid, (parent, cpu) in stats.items():
        if pid == root or parent == root:
            result[pid] = (_role(pid), cpu)
    return result


def by_role(start: dict[int, tuple[str, float]], end: dict[int, tuple[str, float]]) -> dict:
    """CPU seconds used between two :func:`tree_cpu_by_pid` readings, by role (a process
    started in between counts from zero; one that ended in between is not seen)."""
    used: dict[str, float] = {}
    for pid, (role, cpu) in end.items():
        before = start.get(pid)
        spent = cpu - (before[1] if before is not None and before[0] == role else 0.0)
        used[role] = used.get(role, 0.0) + spent
    return {role: round(cpu, 3) for role, cpu in sorted(used.items()) if cpu > 0}


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; returns once it has ended."""
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def postmaster_pid(pgdata: Path) -> int | None:
    """The PostgreSQL server's pid from ``postmaster.pid`` in ``pgdata``."""
    try:
        return int((pgdata / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class CpuMeter:
    """CPU used by the imstack process and the PostgreSQL server between two readings."""

    def __init__(self, imstack_pid: int | None, pgdata: Path) -> None:
        self.imstack_pid = imstack_pid
        self.pg_pid = postmaster_pid(pgdata)
        self.start = self._read()

    def reset(self) -> None:
        self.start = self._read()

    def _read(self) -> tuple[float, float]:
        imstack = 0.0 if self.imstack_pid is None else cpu_seconds(self.imstack_pid)
        pg = 0.0 if self.pg_pid is None else tree_cpu_seconds(self.pg_pid)
        return imstack, pg

    def per_item(self, items: int) -> dict[str, float | None]:
        """CPU milliseconds per item (message delivered) since the meter was made."""
        end = self._read()
        imstack, pg = end[0] - self.start[0], end[1] - self.start[1]
        if items <= 0:
            return {"imstack_cpu_ms_per": None, "postgres_cpu_ms_per": None}
        return {
            "imstack_cpu_s": round(imstack, 2),
            "postgres_cpu_s": round(pg, 2),
            "imstack_cpu_ms_per": round(imstack * 1e3 / items, 3),
            "postgres_cpu_ms_per": round(pg * 1e3 / items, 3),
        }


class LocalServer:
    """A server process a benchmark starts on 127.0.0.1:``port`` (``proc`` once started)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None
