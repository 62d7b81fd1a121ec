"""The SIP edge remembers that a user is offline (no binding), so that MESSAGEs for them are
stored without a bindings query each — and never keeps storing once the user has a binding
again, whoever added it: this relay's registrar, another relay (a row written by another
process), or a REGISTER bringing back an expired binding not purged yet."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.relay.sip.caches import LOCATION_ADDED_CHANNEL, BindingCache
from shared.db.locations import NewBinding, upsert_binding
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"


@pytest.fixture
def sip_settings() -> dict[str, object]:
    # Far longer than any test: what they see comes from invalidation, not expiry.
    return {"sip_credentials_cache_ttl": 3600.0, "sip_bindings_cache_ttl": 3600.0}


def binding_of(ua: SipUA) -> NewBinding:
    """What another relay would write for ``ua`` registering over UDP."""
    return binding_at(ua.contact, ua.local_port)


def binding_at(contact: str, port: int) -> NewBinding:
    return NewBinding(
        aor=BOB,
        contact=contact,
        transport="udp",
        source_host="127.0.0.1",
        source_port=port,
        relay_instance="another-relay:5060",
        connection_id=None,
        q=1.0,
        instance_id=None,
        user_agent="test",
        call_id="elsewhere",
        cseq=1,
        expires=3600,
    )


@pytest.fixture
async def announced(database_url: str) -> AsyncIterator[asyncio.Queue[str]]:
    """The ``location_added`` notifications, as every relay hears them."""
    queue: asyncio.Queue[str] = asyncio.Queue()
    conn = await asyncpg.connect(database_url)
    await conn.add_listener(LOCATION_ADDED_CHANNEL, lambda *args: queue.put_nowait(args[3]))
    try:
        yield queue
    finally:
        await conn.close()


async def heard(announced: asyncio.Queue[str]) -> None:
    """A binding's NOTIFY arrived here; the relay's own LISTEN connection hears it as we do."""
    await asyncio.wait_for(announced.get(), 10)
    await asyncio.sleep(0.2)


async def delivered(alice: SipUA, bob: SipUA, body: bytes) -> None:
    sending = asyncio.create_task(alice.message("sip:bob@example.test", body))
    received = await bob.next_request()
    assert received.body == body
    bob.answer(received, 200)
    assert (await sending).status == 200
    assert bob.requests.empty()


async def forget_stored(pool: asyncpg.Pool) -> None:
    """msilo's part (not running here): bob's stored messages were delivered."""
    await pool.execute("DELETE FROM offline_messages WHERE recipient = $1", BOB)


async def test_a_user_registering_after_being_seen_offline_gets_the_next_message(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    bob = await sip.ua("bob")
    for body in (b"one", b"two"):  # bob is known to be offline after the first
        assert (await alice.message("sip:bob@example.test", body)).status == 202
    assert (await bob.register()).status == 200
    await forget_stored(sip.pool)
    await delivered(alice, bob, b"three")


async def test_a_binding_added_by_another_relay_ends_the_offline_store(
    sip: SipServer, announced: asyncio.Queue[str]
) -> None:
    alice = await sip.ua("alice")
    bob = await sip.ua("bob")
    assert (await alice.message("sip:bob@example.test", b"one")).status == 202
    assert (await alice.message("sip:bob@example.test", b"two")).status == 202
    await forget_stored(sip.pool)
    await upsert_binding(sip.pool, binding_of(bob))  # another relay's REGISTER
    await heard(announced)
    await delivered(alice, bob, b"three")


async def test_an_expired_binding_brought_back_ends_the_offline_store(
    sip: SipServer, announced: asyncio.Queue[str]
) -> None:
    alice = await sip.ua("alice")
    bob = await sip.ua("bob")
    await upsert_binding(sip.pool, binding_of(bob))
    await heard(announced)
    # Its expiry passes; the purge has not removed it yet.
    await sip.pool.execute(
        "UPDATE locations SET expires_at = now() - interval '5 s' WHERE aor = $1", BOB
    )
    assert (await alice.message("sip:bob@example.test", b"one")).status == 202
    assert (await alice.message("sip:bob@example.test", b"two")).status == 202
    await forget_stored(sip.pool)
    # A REGISTER (through another relay) upserts the same contact: the row comes back.
    await upsert_binding(sip.pool, binding_of(bob))
    await heard(announced)
    await delivered(alice, bob, b"three")


async def test_refreshing_a_live_binding_announces_nothing(
    sip: SipServer, announced: asyncio.Queue[str]
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200  # a new binding
    await asyncio.wait_for(announced.get(), 10)
    assert (await bob.register()).status == 200  # a refresh, an hour from expiry
    await upsert_binding(sip.pool, binding_of(bob))  # the same, written the long way
    await asyncio.sleep(0.3)
    assert announced.empty()


async def test_offline_is_served_from_memory_only_while_listening(
    pool: asyncpg.Pool, database_url: str, users: dict[str, str]
) -> None:
    await pool.execute("DELETE FROM locations WHERE aor = $1", BOB)
    cache = BindingCache(pool, ttl=3600.0, database_url=database_url)
    assert await cache.get(BOB) == []
    assert await cache.get(BOB) == []
    assert (cache.cache.misses, len(cache.cache)) == (2, 0)  # not listening: not kept
    stop = asyncio.Event()
    listening = asyncio.create_task(cache.run(stop))
    try:
        await asyncio.wait_for(cache.listener.connected.wait(), 10)  # type: ignore[union-attr]
        assert await cache.get(BOB) == []
        assert await cache.get(BOB) == []
        assert (cache.cache.misses, cache.cache.hits, len(cache.cache)) == (3, 1, 1)

        await upsert_binding(pool, binding_at("sip:bob-ua@127.0.0.1:40000", 40000))

        async def found() -> bool:
            return len(await cache.get(BOB)) == 1

        await eventually(found, "the new binding's NOTIFY drops 'offline'")
        await pool.execute("DELETE FROM locations WHERE aor = $1", BOB)
        cache.invalidate(BOB)  # as this relay does when it removes a binding
        assert await cache.get(BOB) == []
        assert len(cache.cache) == 1

        await pool.execute(
            """SELECT pg_terminate_backend(pid) FROM pg_stat_activity
               WHERE datname = current_database() AND pid <> pg_backend_pid()
                 AND query ILIKE 'LISTEN%location_added%'"""
        )

        async def reconnected() -> bool:
            assert cache.listener is not None
            return cache.listener.connections_made == 2 and cache.listener.connected.is_set()

        await eventually(reconnected, "the listener reconnects")
        assert len(cache.cache) == 0  # whatever was added meanwhile was never announced
    finally:
        stop.set()
        await asyncio.wait_for(listening, 10)
        await pool.execute("DELETE FROM locations WHERE aor = $1", BOB)
