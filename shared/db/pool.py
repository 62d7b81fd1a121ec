"""The asyncpg pool factory: retries the first connection, never logs a password.

Pooled connections carry no session state: LISTEN uses its own connection (``listen.py``),
advisory locks are transaction-scoped (``pg_advisory_xact_lock``) or unlocked explicitly,
nothing runs ``SET`` outside a transaction (use ``SET LOCAL``). So a released connection
is not sent asyncpg's default reset query (``pg_advisory_unlock_all(); CLOSE ALL;
UNLISTEN *; RESET ALL``), a round trip on every release; asyncpg still rolls back a
transaction left open and drops the connection's listener callbacks.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

import asyncpg

from shared.db.urls import mask_url

log = logging.getLogger(__name__)

T = TypeVar("T")

# Errors that waiting will not cure: wrong password, unknown database or role, bad URL.
_PERMANENT = (
    asyncpg.InvalidPasswordError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.exceptions.ClientConfigurationError,
    ValueError,
)
_TRANSIENT = (
    OSError,
    socket.gaierror,
    asyncio.TimeoutError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.ConnectionDoesNotExistError,
)


#: What a query can raise when the database is down, restarting or unreachable: callers that
#: must degrade (answer 503, retry later) catch exactly these. InternalClientError ("cannot
#: switch to state 15; another operation (2) is in progress") is what a pooled connection cut
#: off by a server restart can raise on its next use (asyncpg issue #784): seen once killing
#: imc in tests/stack/test_stack_postgres.py; it is an outage too, not a reason to exit.
DATABASE_ERRORS = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class DatabaseUnavailable(Exception):
    """The database could not be reached; ``str()`` is one line naming the masked URL and why."""

    def __init__(self, url: str, reason: str) -> None:
        super().__init__(f"cannot connect to the database at {mask_url(url)}: {reason}")
        self.url = url
        self.reason = reason


def describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def retry_connect(
    url: str,
    connect: Callable[[], Awaitable[T]],
    *,
    timeout: float,  # noqa: ASYNC109 - a retry budget, not a per-call timeout
    what: str = "database",
) -> T:
    """Call ``connect()`` until it succeeds, retrying transient errors with backoff for up to
    ``timeout`` seconds; raise ``DatabaseUnavailable`` on a permanent error or when time runs out.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = 0.2
    attempt = 0
    while True:
        attempt += 1
        try:
            async with asyncio.timeout(max(1.0, deadline - loop.time())):
                result = await connect()
            if attempt > 1:
                log.info("%s %s reachable after %d attempts", what, mask_url(url), attempt)
            return result
        except _PERMANENT as exc:
            raise DatabaseUnavailable(url, describe(exc)) from None
        except _TRANSIENT as exc:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DatabaseUnavailable(url, describe(exc)) from None
            log.warning(
                "%s %s not reachable yet (%s); retrying in %.1fs",
                what,
                mask_url(url),
                describe(exc),
                min(delay, remaining),
            )
            await asyncio.sleep(min(delay, remaining))
            delay = min(delay * 2, 2.0)


async def keep_session(_conn: asyncpg.Connection) -> None:
    """The pool's ``reset``: nothing beyond asyncpg's own rollback (see the module docstring)."""


async def create_pool(
    url: str, *, connect_timeout: float = 15.0, max_size: int = 10
) -> asyncpg.Pool:
    """An asyncpg pool for ``url``; the first connection is retried for ``connect_timeout`` s."""

    async def connect() -> asyncpg.Pool:
        return await asyncpg.create_pool(
            url, min_size=1, max_size=max_size, timeout=10, reset=keep_session
        )

    pool = await retry_connect(url, connect, timeout=connect_timeout)
    log.info("connected to the database at %s", mask_url(url))
    return pool
