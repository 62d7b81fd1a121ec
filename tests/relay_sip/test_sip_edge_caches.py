"""The SIP edge's credential and binding caches never serve a change late where it matters:
user changes over real sockets, the LISTEN connection's loss, lookups racing invalidations."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.relay.sip.caches import CredentialCache, MailboxCache, TtlCache
from shared.db.offline import store_message
from shared.db.users import Address, create_user, set_disabled, set_password
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

ALICE = Address("alice", "example.test")


@pytest.fixture
def sip_settings() -> dict[str, object]:
    # Far longer than any test: what they see comes from invalidation, not expiry.
    return {"sip_credentials_cache_ttl": 3600.0, "sip_bindings_cache_ttl": 3600.0}


async def deliver(sender: SipUA, receiver: SipUA, body: bytes) -> int:
    """Send a MESSAGE to ``receiver``'s user, answer it 200 there; the final status."""
    sending = asyncio.create_task(sender.message(f"sip:{receiver.user}@example.test", body))
    received = await receiver.next_request()
    assert received.body == body
    receiver.answer(received, 200)
    return (await sending).status


async def test_a_changed_password_is_honoured_by_the_next_register(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200  # alice's credentials are now cached
    await set_password(sip.pool, ALICE, "new-secret")
    renewed = await sip.ua("alice", password="new-secret")
    assert (await renewed.register()).status == 200
    assert (await alice.register()).status == 401  # the old password no longer works


async def test_a_disabled_user_is_refused_once_disabled(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    await set_disabled(sip.pool, ALICE, True)

    async def refused() -> bool:
        return (await alice.register()).status == 403

    # The NOTIFY of the change reaches the relay within milliseconds; the cache TTL is an hour.
    await eventually(refused, "the disabled user is refused")
    await set_disabled(sip.pool, ALICE, False)

    async def admitted() -> bool:
        return (await alice.register()).status == 200

    await eventually(admitted, "the enabled user is admitted again")


async def test_a_user_created_after_a_404_is_found(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.message("sip:erin@example.test", b"hi")).status == 404
    await create_user(sip.pool, Address("erin", "example.test"), "erin-pw")
    erin = await sip.ua("erin", password="erin-pw")
    assert (await erin.register()).status == 200  # a digest we cannot match is re-read

    async def delivered() -> bool:
        return await deliver(alice, erin, b"welcome") == 200

    await eventually(delivered, "erin receives messages")


async def test_routing_follows_the_bindings_this_relay_changes(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    first = await sip.ua("bob")
    assert (await first.register()).status == 200
    assert await deliver(alice, first, b"one") == 200  # bob's bindings are now cached
    second = await sip.ua("bob")
    assert (await second.register()).status == 200
    assert (await first.register(expires=0)).status == 200
    assert await deliver(alice, second, b"two") == 200
    assert first.requests.empty()


async def test_a_closed_connection_takes_its_binding_out_of_routing(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    assert await deliver(alice, bob, b"one") == 200
    await bob.close()

    async def stored_offline() -> bool:
        return (await alice.message("sip:bob@example.test", b"later")).status == 202

    await eventually(stored_offline, "bob's message goes to the offline store")


async def test_the_credential_cache_is_emptied_when_its_listen_connection_returns(
    pool: asyncpg.Pool, database_url: str, users: dict[str, str]
) -> None:
    cache = CredentialCache(pool, database_url, ttl=3600.0)
    stop = asyncio.Event()
    listening = asyncio.create_task(cache.run(stop))
    try:
        await asyncio.wait_for(cache.listener.connected.wait(), 10)
        assert await cache.get(ALICE) is not None
        assert await cache.get(ALICE) is not None
        assert (cache.cache.hits, cache.cache.misses, len(cache.cache)) == (1, 1, 1)

        await set_password(pool, ALICE, "changed")

        async def invalidated() -> bool:
            return len(cache.cache) == 0

        await eventually(invalidated, "the NOTIFY drops alice's entry")
        assert await cache.get(ALICE) is not None
        assert len(cache.cache) == 1

        await pool.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND query ILIKE 'LISTEN%'"""
        )

        async def reconnected() -> bool:
            return cache.listener.connections_made == 2 and cache.listener.connected.is_set()

        await eventually(reconnected, "the listener reconnects")
        assert len(cache.cache) == 0  # whatever changed meanwhile was never announced
    finally:
        stop.set()
        await asyncio.wait_for(listening, 10)


async def test_without_its_listen_connection_the_credential_cache_reads_the_database(
    pool: asyncpg.Pool, database_url: str, users: dict[str, str]
) -> None:
    cache = CredentialCache(pool, database_url, ttl=3600.0)  # never started
    assert await cache.get(ALICE) is not None
    assert await cache.get(ALICE) is not None
    assert (cache.cache.hits, cache.cache.misses, len(cache.cache)) == (0, 2, 0)


async def test_a_load_that_races_an_invalidation_is_not_kept() -> None:
    release = asyncio.Event()
    values = iter(["old", "new"])

    async def load(_key: str) -> str:
        await release.wait()
        return next(values)

    cache: TtlCache[str, str] = TtlCache(load, ttl=60.0)
    racing = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)  # the load is under way
    cache.invalidate("k")  # a change commits meanwhile
    release.set()
    assert await racing == "old"
    assert len(cache) == 0
    assert await cache.get("k") == "new"
    assert len(cache) == 1


async def test_entries_expire_after_the_ttl_and_refused_values_are_not_kept() -> None:
    now = [0.0]
    loads: list[str] = []

    async def load(key: str) -> str:
        loads.append(key)
        return key

    cache: TtlCache[str, str] = TtlCache(
        load, ttl=2.0, keep=lambda value: value != "empty", clock=lambda: now[0]
    )
    await cache.get("a")
    await cache.get("a")
    now[0] = 1.9
    await cache.get("a")
    now[0] = 2.1
    await cache.get("a")
    await cache.get("empty")
    await cache.get("empty")
    assert loads == ["a", "a", "empty", "empty"]


async def test_an_entry_in_use_is_reloaded_before_it_expires_so_no_lookup_waits() -> None:
    # A relay at 2,500 MESSAGEs a second looked up its 50 receivers' bindings every 20 ms;
    # all loaded at once, their 2 s TTL ran out at once, and the next 50 requests each
    # waited for a query: a stall of the whole relay every 2 s.
    now = [0.0]
    loaded_at: list[float] = []

    async def load(_key: str) -> float:
        loaded_at.append(now[0])
        return now[0]

    cache: TtlCache[str, float] = TtlCache(load, ttl=2.0, clock=lambda: now[0])
    await cache.get("bob")
    while now[0] < 10.0:
        now[0] = round(now[0] + 0.02, 2)
        entry = cache.peek("bob")
        assert entry is not None, now[0]  # never a miss: the request needs no coroutine
        assert now[0] - entry.value < 2.0  # nothing older than the TTL
        await asyncio.sleep(0)  # the reload in the background, if one was started
    assert 6 <= len(loaded_at) <= 21, loaded_at  # every 1.0-1.8 s
    assert cache.misses == 1 and cache.refreshes == len(loaded_at) - 1


async def test_entries_loaded_together_are_not_reloaded_together() -> None:
    now = [0.0]
    reloads: list[float] = []

    async def load(key: str) -> str:
        if now[0] > 0:
            reloads.append(now[0])
        return key

    cache: TtlCache[str, str] = TtlCache(load, ttl=2.0, clock=lambda: now[0])
    keys = [f"user{i}" for i in range(100)]
    for key in keys:
        await cache.get(key)
    while now[0] < 1.9:
        now[0] = round(now[0] + 0.01, 2)
        for key in keys:
            assert cache.peek(key) is not None
        await asyncio.sleep(0)
    assert len(reloads) == 100
    assert max(reloads) - min(reloads) > 0.5, (min(reloads), max(reloads))
    busiest = max(sum(t <= r < t + 0.1 for r in reloads) for t in reloads)
    assert busiest <= 40, busiest  # about 12 per 0.1 s, not 100 at once


async def test_a_failed_reload_leaves_the_entry_to_expire_and_a_refused_one_drops_it() -> None:
    now = [0.0]
    results: list[str | Exception] = ["first", OSError("database gone"), "third", "empty"]

    async def load(_key: str) -> str:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    cache: TtlCache[str, str] = TtlCache(
        load, ttl=2.0, keep=lambda value: value != "empty", clock=lambda: now[0]
    )
    assert await cache.get("k") == "first"
    now[0] = 1.9  # past any refresh point: a reload starts, and fails
    entry = cache.peek("k")
    assert entry is not None and entry.value == "first"
    await asyncio.sleep(0)
    assert cache.refreshes == 1
    assert cache.peek("k") is not None  # still held, not reloaded again at each lookup
    await asyncio.sleep(0)
    assert cache.refreshes == 1
    now[0] = 2.0
    assert cache.peek("k") is None  # expired, as it would have without the reload
    assert await cache.get("k") == "third"
    now[0] = 3.9  # the next reload gets a value ``keep`` refuses: the held one is dropped
    assert cache.peek("k") is not None
    await asyncio.sleep(0)
    assert cache.peek("k") is None


async def test_concurrent_lookups_of_a_missing_key_share_one_load() -> None:
    release = asyncio.Event()
    loads: list[str] = []

    async def load(key: str) -> str:
        loads.append(key)
        await release.wait()
        return f"value of {key}"

    cache: TtlCache[str, str] = TtlCache(load, ttl=60.0)
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiting) == ["value of k"] * 5
    assert loads == ["k"]
    assert len(cache) == 1


async def test_a_lookup_after_an_invalidation_does_not_share_the_older_load() -> None:
    release = asyncio.Event()
    values = iter(["old", "new"])

    async def load(_key: str) -> str:
        await release.wait()
        return next(values)

    cache: TtlCache[str, str] = TtlCache(load, ttl=60.0)
    first = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    cache.invalidate("k")  # a change commits while the first load runs
    second = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    release.set()
    assert (await first, await second) == ("old", "new")
    assert await cache.get("k") == "new"  # the second load, begun after the change, is kept


async def test_a_failed_shared_load_fails_every_waiter_and_keeps_nothing() -> None:
    release = asyncio.Event()
    calls = 0

    async def load(_key: str) -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        if calls == 1:
            raise OSError("database gone")
        return "back"

    cache: TtlCache[str, str] = TtlCache(load, ttl=60.0)
    waiting = [asyncio.create_task(cache.get("k")) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, OSError) for r in results)
    assert len(cache) == 0
    assert await cache.get("k") == "back"


async def test_a_cancelled_shared_load_leaves_the_waiters_to_load_themselves() -> None:
    release = asyncio.Event()
    calls = 0

    async def load(_key: str) -> str:
        nonlocal calls
        calls += 1
        await release.wait()
        return f"load {calls}"

    cache: TtlCache[str, str] = TtlCache(load, ttl=60.0)
    loader = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    waiter = asyncio.create_task(cache.get("k"))
    await asyncio.sleep(0)
    loader.cancel()
    await asyncio.sleep(0)
    release.set()
    assert await waiter == "load 2"
    assert loader.cancelled()


async def _store_for(pool: asyncpg.Pool, recipient: str, body: bytes) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await store_message(
            conn,
            recipient=recipient,
            sender_uri="sip:carol@example.test",
            sender_display=None,
            call_id="stored-elsewhere",
            content_type="text/plain",
            body=body,
            extra_headers=[],
            lifetime=600,
        )


async def test_the_mailbox_cache_forgets_an_empty_mailbox_when_a_message_is_stored(
    pool: asyncpg.Pool, database_url: str, users: dict[str, str]
) -> None:
    cache = MailboxCache(pool, database_url, ttl=3600.0)
    assert await cache.may_have_messages("bob@example.test")  # not listening: ask the table
    stop = asyncio.Event()
    listening = asyncio.create_task(cache.run(stop))
    try:
        await asyncio.wait_for(cache.listener.connected.wait(), 10)
        assert not await cache.may_have_messages("bob@example.test")
        assert not await cache.may_have_messages("bob@example.test")
        assert (cache.cache.hits, len(cache.cache)) == (1, 1)

        await _store_for(pool, "bob@example.test", b"kept for bob")  # by anyone: a trigger

        async def told() -> bool:
            return await cache.may_have_messages("bob@example.test")

        await eventually(told, "the stored message's NOTIFY reaches the cache")
        assert len(cache.cache) == 0  # a mailbox with messages is asked about every time
    finally:
        stop.set()
        await asyncio.wait_for(listening, 10)


async def test_a_message_stored_by_another_process_is_not_overtaken(
    sip: SipServer, database_url: str
) -> None:
    alice = await sip.ua("alice")
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    assert await deliver(alice, bob, b"live") == 200  # bob's empty mailbox is remembered
    # msilo, imc or the API stores a message for bob (a drain of it is due at once).
    heard = asyncio.Event()
    conn = await asyncpg.connect(database_url)
    try:
        await conn.add_listener("offline_inserted", lambda *_args: heard.set())
        await _store_for(sip.pool, "bob@example.test", b"stored first")
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        await conn.close()
    await asyncio.sleep(0.2)  # the relay's own LISTEN connection hears it as we did
    reply = await alice.message("sip:bob@example.test", b"must not overtake")
    assert reply.status == 202  # stored behind the stored one, not delivered
    assert bob.requests.empty()
