"""In-process caches that keep database round trips off the SIP hot path.

* :class:`CredentialCache` — digest credentials (HA1s, disabled) per user of our domain, and
  "no such user". Every change made through ``shared.db.users`` NOTIFYs ``users`` with the
  address, so entries are dropped as soon as the change commits; the cache is bypassed while
  the LISTEN connection is down and emptied whenever it (re)connects, so a NOTIFY missed
  meanwhile costs nothing. The TTL is the safety net for anything else (a half-open LISTEN
  connection, a change made with plain SQL). The authenticator re-reads an entry whose HA1
  does not match the client's digest, so a new password works even before the NOTIFY.
* :class:`MailboxCache` — the recipients known to have no stored (offline) message at all,
  so that a MESSAGE for them needs no query to learn whether it would overtake stored ones.
  Every INSERT into ``offline_messages`` NOTIFYs ``offline_inserted`` (a trigger, whoever
  stores), which drops the recipient; the same LISTEN rules as for credentials apply.
* :class:`BindingCache` — an AoR's bindings for routing, and "no binding" (a MESSAGE for an
  offline user needs no query to learn it must be stored). This relay drops an AoR's entry
  whenever it changes that AoR's bindings itself (REGISTER, closed connection, purge).
  Every binding that appears — inserted, or an expired row brought back — NOTIFYs
  ``location_added`` (a trigger, whoever writes: another relay, the API), which drops the
  AoR's entry; "no binding" is only trusted while that LISTEN connection is up. Bindings
  removed by another relay instance are seen once the entry's TTL has run out.

A lookup that races with an invalidation does not store its (possibly stale) result.
Concurrent lookups of one missing key share one load (one query, not one per request).
An entry in use is reloaded in the background before it expires, once it is past a point
drawn at random between half and nine tenths of the TTL: a request never waits for the
database on an entry it keeps using, and entries loaded together (a relay's first minute)
are not all reloaded together. Nothing older than the TTL is ever served.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import asyncpg

from shared.db.listen import Listener, Notification
from shared.db.locations import Binding, get_bindings, get_bindings_many
from shared.db.users import USERS_CHANNEL, Address, Credentials, get_credentials

log = logging.getLogger(__name__)

K = TypeVar("K")
V = TypeVar("V")

Clock = Callable[[], float]


#: An entry in use is reloaded in the background once this share of the TTL (drawn
#: anew for each load) has passed since it was loaded.
REFRESH_AHEAD = (0.5, 0.9)


class _Entry(Generic[V]):
    # Not a frozen dataclass: mypyc (shared/compiled.py) does not compile a generic one.
    __slots__ = ("expires", "refresh", "value")

    def __init__(self, value: V, expires: float, refresh: float = math.inf) -> None:
        self.value = value
        self.expires = expires  # clock time
        self.refresh = refresh  # clock time after which a lookup reloads it in the background


class TtlCache(Generic[K, V]):
    """A bounded map of values that expire ``ttl`` seconds after they were loaded.

    :meth:`get` loads missing values with ``load``; a load that was running while its key
    (or everything) was invalidated returns its result but does not keep it, nor is a value
    kept that ``keep`` refuses. ``ttl`` <= 0 keeps nothing.
    """

    def __init__(
        self,
        load: Callable[[K], Awaitable[V]],
        *,
        ttl: float,
        keep: Callable[[V], bool] = lambda _value: True,
        max_entries: int = 100_000,  # a few hundred bytes each
        clock: Clock = time.monotonic,
    ) -> None:
        self.load = load
        self.ttl = ttl
        self.keep = keep
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict[K, _Entry[V]] = {}
        self._seq = 0  # counts invalidations
        self._invalidated: dict[K, int] = {}  # key → _seq of its last invalidation
        self._cleared = 0  # _seq of the last invalidation of everything
        self._loading: dict[K, tuple[int, asyncio.Future[V]]] = {}  # key → (_seq, load)
        self._refreshing: set[asyncio.Task[None]] = set()
        self.hits = 0
        self.misses = 0
        self.refreshes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def peek(self, key: K) -> _Entry[V] | None:
        """The fresh entry for ``key`` (counted as a hit), or None: no coroutine needed.
        An entry past its refresh point is reloaded in the background meanwhile."""
        entry = self._entries.get(key)
        if entry is None or self.ttl <= 0:
            return None
        now = self.clock()
        if entry.expires <= now:
            return None
        if entry.refresh <= now:
            self._refresh_ahead(key, entry)
        self.hits += 1
        return entry

    async def get(self, key: K, *, use_cache: bool = True) -> V:
        """The value for ``key``, from memory when fresh and ``use_cache`` holds."""
        if not (use_cache and self.ttl > 0):
            self.misses += 1
            return await self.load(key)
        entry = self.peek(key)
        if entry is not None:
            return entry.value
        self.misses += 1
        return await self._load_shared(key, self.clock())

    def _refresh_ahead(self, key: K, entry: _Entry[V]) -> None:
        entry.refresh = math.inf  # once per load
        if key in self._loading:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a test's synchronous use): it expires as it would have
        self.refreshes += 1
        task = loop.create_task(self._refresh(key, self.clock()))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshing.discard)

    async def _refresh(self, key: K, now: float) -> None:
        try:
            await self._load_shared(key, now)
        except Exception as exc:  # the entry expires as it would have: a lookup then loads
            log.debug("reloading %r ahead of its expiry failed: %s", key, exc)

    async def _load_shared(self, key: K, now: float) -> V:
        """Load ``key`` (loaded at clock time ``now``, or later), or share a load in flight."""
        loading = self._loading.get(key)
        # A load in flight that began before an invalidation of the key cannot be shared.
        if loading is not None and self._unchanged_since(key, loading[0]):
            try:
                return await asyncio.shield(loading[1])
            except asyncio.CancelledError:
                if not loading[1].cancelled():
                    raise  # we were cancelled ourselves
                # the task that loaded was: load it ourselves
        started = self._seq
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = (started, future)
        try:
            value = await self.load(key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # marked retrieved: the waiters, if any, get it
            raise
        finally:
            if self._loading.get(key, (0, None))[1] is future:
                del self._loading[key]
        future.set_result(value)
        self.store(key, value, started=started, now=now)
        return value

    def mark(self) -> int:
        """A mark to pass to :meth:`store` for a value about to be loaded elsewhere."""
        return self._seq

    def store(self, key: K, value: V, *, started: int, now: float) -> None:
        """Keep ``value``, loaded for ``key`` since :meth:`mark` gave ``started`` (at clock
        time ``now``), unless ``key`` was invalidated meanwhile or ``keep`` refuses it."""
        if self.ttl <= 0 or not self._unchanged_since(key, started):
            return
        if not self.keep(value):
            self._entries.pop(key, None)  # what was held (a reload's old value) is out of date
            return
        ahead = random.uniform(*REFRESH_AHEAD)
        self.put(key, value, expires=now + self.ttl, refresh=now + ahead * self.ttl)

    def put(self, key: K, value: V, *, expires: float, refresh: float = math.inf) -> None:
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            del self._entries[next(iter(self._entries))]  # the oldest load
        self._entries[key] = _Entry(value, expires, refresh)

    def _unchanged_since(self, key: K, started: int) -> bool:
        return self._cleared <= started and self._invalidated.get(key, 0) <= started

    def invalidate(self, key: K) -> None:
        self._seq += 1
        self._entries.pop(key, None)
        if len(self._invalidated) >= self.max_entries:
            self.clear()  # forgets the per-key marks: loads in flight keep nothing
        else:
            self._invalidated[key] = self._seq

    def clear(self) -> None:
        self._seq += 1
        self._cleared = self._seq
        self._entries.clear()
        self._invalidated.clear()


class CredentialCache:
    """Credentials of our users by address (None: no such user), invalidated by NOTIFY."""

    def __init__(
        self, pool: asyncpg.Pool, database_url: str, *, ttl: float, clock: Clock = time.monotonic
    ) -> None:
        self.pool = pool
        self.cache: TtlCache[Address, Credentials | None] = TtlCache(
            self._load, ttl=ttl, clock=clock
        )
        self.listener = Listener(
            database_url, [USERS_CHANNEL], self._on_notify, catch_up=self._catch_up
        )

    async def get(self, address: Address, *, fresh: bool = False) -> Credentials | None:
        """The user's credentials, or None for an unknown user. ``fresh`` reads the database
        (and refreshes the entry): when a client's digest does not match what we hold."""
        # Without the LISTEN connection no invalidation would arrive: read the database.
        use_cache = self.listener.connected.is_set()
        if fresh and use_cache:
            self.cache.invalidate(address)
        return await self.cache.get(address, use_cache=use_cache)

    def peek(self, address: Address) -> _Entry[Credentials | None] | None:
        """The credentials held in memory (an entry whose value may be None: no such user),
        or None when :meth:`get` has to be awaited."""
        if not self.listener.connected.is_set():
            return None
        return self.cache.peek(address)

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN for user changes until ``stop`` (reconnecting as needed)."""
        if self.cache.ttl > 0:
            await self.listener.run(stop)

    async def _load(self, address: Address) -> Credentials | None:
        try:
            return await get_credentials(self.pool, address)
        except asyncpg.DataError:  # not a valid text for the column (NUL bytes...)
            return None

    def _on_notify(self, notification: Notification) -> None:
        try:
            username, domain = (notification.id or "").rsplit("@", 1)
        except ValueError:
            log.warning("unexpected %s notification %r", USERS_CHANNEL, notification.raw)
            self.cache.clear()
            return
        self.cache.invalidate(Address(username, domain))

    async def _catch_up(self) -> None:
        # NOTIFYs sent while we were not listening are lost: forget everything.
        self.cache.clear()


#: NOTIFYed by a trigger with the recipient of every new offline_messages row (0013).
OFFLINE_INSERTED_CHANNEL = "offline_inserted"


class MailboxCache:
    """The recipients known to have no stored message at all (a MESSAGE for them cannot
    overtake one), invalidated by the ``offline_inserted`` NOTIFY of every stored row."""

    def __init__(
        self, pool: asyncpg.Pool, database_url: str, *, ttl: float, clock: Clock = time.monotonic
    ) -> None:
        self.pool = pool
        # Only "empty" is kept: a mailbox with rows is asked about every time.
        self.cache: TtlCache[str, bool] = TtlCache(
            self._load, ttl=ttl, keep=lambda has_rows: not has_rows, clock=clock
        )
        self.listener = Listener(
            database_url, [OFFLINE_INSERTED_CHANNEL], self._on_notify, catch_up=self._catch_up
        )

    async def may_have_messages(self, recipient: str) -> bool:
        """False when ``recipient`` (``user@domain``) is known to have nothing stored."""
        if not self.listener.connected.is_set():
            return True  # no invalidation would reach us: let the caller ask the database
        entry = self.cache.peek(recipient)
        if entry is not None:
            return entry.value
        return await self.cache.get(recipient)

    def invalidate(self, recipient: str) -> None:
        """``recipient`` may have stored messages now (this process stored one)."""
        self.cache.invalidate(recipient)

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN for stored messages until ``stop`` (reconnecting as needed)."""
        if self.cache.ttl > 0:
            await self.listener.run(stop)

    async def _load(self, recipient: str) -> bool:
        return bool(
            await self.pool.fetchval(
                "SELECT EXISTS (SELECT 1 FROM offline_messages WHERE recipient = $1)", recipient
            )
        )

    def _on_notify(self, notification: Notification) -> None:
        if notification.id is None:
            log.warning("unexpected %s notification %r", OFFLINE_INSERTED_CHANNEL, notification.raw)
            self.cache.clear()
            return
        self.cache.invalidate(notification.id)

    async def _catch_up(self) -> None:
        self.cache.clear()


#: NOTIFYed by a trigger with the AoR of every binding that appears (0014).
LOCATION_ADDED_CHANNEL = "location_added"


class BindingCache:
    """An AoR's current bindings for routing; bindings past their expiry are never served.
    An empty result ("offline") is kept only with ``database_url`` given and its LISTEN
    connection (:meth:`run`) up, and served only while it is: without it, a binding added
    by another relay would not be heard of."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float,
        database_url: str | None = None,
        clock: Clock = time.monotonic,
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.cache: TtlCache[str, tuple[float, list[Binding]]] = TtlCache(
            self._load,
            ttl=ttl,
            keep=lambda loaded: bool(loaded[1]) or self._listening(),
            clock=clock,
        )
        self.listener = (
            None
            if database_url is None
            else Listener(
                database_url, [LOCATION_ADDED_CHANNEL], self._on_notify, catch_up=self._catch_up
            )
        )

    def _listening(self) -> bool:
        return self.listener is not None and self.listener.connected.is_set()

    def _held(self, aor: str) -> tuple[float, list[Binding]] | None:
        """The entry to serve for ``aor``, or None: load it."""
        entry = self.cache.peek(aor)
        if entry is None:
            return None
        if not entry.value[1] and not self._listening():
            # "Offline" kept while listening: a binding added since may not have been heard.
            self.cache.invalidate(aor)
            return None
        return entry.value

    async def get(self, aor: str) -> list[Binding]:
        held = self._held(aor)
        loaded_at, bindings = held if held is not None else await self.cache.get(aor)
        return self._current(aor, loaded_at, bindings)

    async def run(self, stop: asyncio.Event) -> None:
        """LISTEN for new bindings until ``stop`` (reconnecting as needed)."""
        if self.listener is not None and self.cache.ttl > 0:
            await self.listener.run(stop)

    def _on_notify(self, notification: Notification) -> None:
        if notification.id is None:
            log.warning("unexpected %s notification %r", LOCATION_ADDED_CHANNEL, notification.raw)
            self.cache.clear()
            return
        self.cache.invalidate(notification.id)

    async def _catch_up(self) -> None:
        # Bindings added while we were not listening were never announced: forget "offline".
        self.cache.clear()

    async def get_many(self, aors: Iterable[str]) -> dict[str, list[Binding]]:
        """:meth:`get` for each of ``aors`` (a fan-out's recipients): those not in memory
        are loaded with ONE query."""
        found: dict[str, list[Binding]] = {}
        missing: list[str] = []
        for aor in dict.fromkeys(aors):
            held = self._held(aor)
            if held is None:
                missing.append(aor)
            else:
                found[aor] = self._current(aor, *held)
        if missing:
            started, loaded_at = self.cache.mark(), self.clock()
            self.cache.misses += len(missing)
            async with self.pool.acquire() as conn:
                loaded = await get_bindings_many(conn, missing)
            for aor in missing:
                bindings = loaded.get(aor, [])
                self.cache.store(aor, (loaded_at, bindings), started=started, now=loaded_at)
                found[aor] = bindings
        return found

    def _current(self, aor: str, loaded_at: float, bindings: list[Binding]) -> list[Binding]:
        # expires_in counts from the query; comparing it with our own clock needs no
        # agreement between the relay's and the database's clocks.
        age = self.clock() - loaded_at
        current = [b for b in bindings if b.expires_in > age]
        if len(current) < len(bindings):
            self.cache.invalidate(aor)
        return current

    def invalidate(self, aor: str) -> None:
        self.cache.invalidate(aor)

    def clear(self) -> None:
        self.cache.clear()

    async def _load(self, aor: str) -> tuple[float, list[Binding]]:
        loaded_at = self.clock()
        return loaded_at, await get_bindings(self.pool, aor)
