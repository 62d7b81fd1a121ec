"""Rows claimed together that carry the same MESSAGE for different AoRs (a room's fan-out)
are sent as one batch: each recipient gets a complete request of its own (its own Via,
From tag, To, Call-ID), every outcome is recorded, and the copies that cannot take the fast
way (no binding, several bindings) still end as they would alone."""

from __future__ import annotations

import asyncio

import asyncpg

from services.relay.sip.caches import BindingCache
from shared.db.locations import get_bindings
from shared.db.outbound import NewOutbound, OutboundStatus, get_message, queue_messages
from shared.sip.message import SipRequest
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

ROOM_URI = "sip:devs@conference.example.test"
BODY = "[alice]: hello ✓".encode()
HEADERS = [("Supported", "kamailio/imc"), ("In-Reply-To", "abc"), ("Via", "ignored")]


async def one_request(ua: SipUA) -> SipRequest:
    request = await asyncio.wait_for(ua.next_request(), 10)
    assert request.method == "MESSAGE"
    return request


async def test_one_message_for_many_aors_reaches_each_once_with_its_own_headers(
    sip: SipServer,
) -> None:
    bob = await sip.ua("bob")
    carol = await sip.ua("carol", "tcp")
    alice_phone = await sip.ua("alice")
    alice_laptop = await sip.ua("alice")
    for ua in (bob, carol, alice_phone, alice_laptop):
        assert (await ua.register()).status == 200
    recipients = ["bob", "carol", "alice", "erin"]  # erin has no binding
    async with sip.pool.acquire() as conn, conn.transaction():
        ids = await queue_messages(
            conn,
            [
                NewOutbound(
                    from_uri=ROOM_URI,
                    to_aor=f"{user}@example.test",
                    body=BODY,
                    content_type="text/plain;charset=UTF-8",
                    extra_headers=HEADERS,
                    source="imc-chat",
                )
                for user in recipients
            ],
        )
    by_user = dict(zip(recipients, ids, strict=True))

    to_bob, to_carol = await one_request(bob), await one_request(carol)
    to_phone, to_laptop = await one_request(alice_phone), await one_request(alice_laptop)
    for request, user in ((to_bob, "bob"), (to_carol, "carol"), (to_phone, "alice")):
        assert request.body == BODY
        assert request.get("To") == f"<sip:{user}@example.test>"
        assert (request.get("From") or "").startswith(f"<{ROOM_URI}>;tag=")
        assert request.get("Content-Type") == "text/plain;charset=UTF-8"
        assert request.get("Supported") == "kamailio/imc"
        assert request.get("In-Reply-To") == "abc"
        assert request.get("CSeq") == "1 MESSAGE"
        assert len(request.get_all("Via")) == 1 and "ignored" not in request.get_all("Via")
        assert request.uri.startswith(f"sip:{user}-ua@127.0.0.1:")  # the binding's contact
    copies = (to_bob, to_carol, to_phone)
    assert len({r.get("Call-ID") for r in copies}) == 3
    assert len({(r.get("From") or "").rpartition("tag=")[2] for r in copies}) == 3
    # alice's two bindings got the same forked copy.
    assert to_phone.get("Call-ID") == to_laptop.get("Call-ID")

    bob.answer(to_bob, 200)
    carol.answer(to_carol, 486)
    alice_laptop.answer(to_laptop, 200)

    async def finished() -> bool:
        rows = [await get_message(sip.pool, i) for i in ids]
        return all(r is not None and r.finished_at is not None for r in rows)

    await eventually(finished, "every outcome recorded")
    outcomes = {}
    for user, row_id in by_user.items():
        row = await get_message(sip.pool, row_id)
        assert row is not None
        outcomes[user] = (row.status, row.last_status)
    assert outcomes == {
        "bob": (OutboundStatus.DELIVERED, 200),
        "carol": (OutboundStatus.FAILED, 486),
        "alice": (OutboundStatus.DELIVERED, 200),
        "erin": (OutboundStatus.FAILED, 480),
    }
    for ua in (bob, carol, alice_phone):
        assert ua.requests.empty()  # one copy each, no second one


async def test_a_batch_that_would_inject_header_lines_fails_unsent(sip: SipServer) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    ids = await queue_messages(
        sip.pool,
        [
            NewOutbound(
                from_uri=ROOM_URI,
                to_aor=f"{user}@example.test",
                body=b"x",
                extra_headers=[("Subject", "hi\r\nVia: SIP/2.0/UDP evil.example")],
            )
            for user in ("bob", "carol")
        ],
    )

    async def finished() -> bool:
        rows = [await get_message(sip.pool, i) for i in ids]
        return all(r is not None and r.finished_at is not None for r in rows)

    await eventually(finished, "both outcomes recorded")
    for row_id in ids:
        row = await get_message(sip.pool, row_id)
        assert row is not None and row.status is OutboundStatus.FAILED
        assert row.last_status == 500
    assert bob.requests.empty()


async def test_bindings_of_many_aors_come_from_memory_or_one_query(
    sip: SipServer, database_url: str
) -> None:
    bob = await sip.ua("bob")
    alice_phone, alice_laptop = await sip.ua("alice"), await sip.ua("alice")
    for ua in (bob, alice_phone, alice_laptop):
        assert (await ua.register()).status == 200
    queries: list[str] = []

    async def log_queries(conn: asyncpg.Connection) -> None:
        conn.add_query_logger(lambda record: queries.append(record.query))

    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=1, init=log_queries)
    try:
        cache = BindingCache(pool, ttl=60.0)
        aors = ["alice@example.test", "bob@example.test", "erin@example.test", "bob@example.test"]
        found = await cache.get_many(aors)
        assert len([q for q in queries if "FROM locations" in q]) == 1
        assert cache.cache.misses == 3
        # What get() finds, one AoR at a time, straight from the database.
        assert found == {aor: await get_bindings(sip.pool, aor) for aor in aors}
        assert len(found["alice@example.test"]) == 2 and found["erin@example.test"] == []
        # Now in memory (erin's empty result is not kept: she may register any time).
        queries.clear()
        assert await cache.get_many(aors[:2]) == {aor: found[aor] for aor in aors[:2]}
        assert queries == [] and cache.cache.misses == 3
        # A registration change while a batch is loading: what was loaded is not kept.
        cache.invalidate("bob@example.test")
        loading = asyncio.ensure_future(cache.get_many(["bob@example.test"]))
        await asyncio.sleep(0)  # the batch has marked the cache and asked the pool
        cache.invalidate("bob@example.test")
        assert (await loading)["bob@example.test"] == found["bob@example.test"]
        assert cache.cache.peek("bob@example.test") is None
    finally:
        await pool.close()
