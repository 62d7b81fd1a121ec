"""Fan-out rows (``migrations/0015_outbound_fanout.sql``): ONE ``outbound_messages`` row
carries a room message for many members. The relay sends each recipient a complete request
of its own, records every copy's outcome on the row (those that found their AoR unreachable
go into the offline store), finishes the row with the last one, and a row a dead relay left
half sent is finished by sending only to the recipients not recorded yet."""

from __future__ import annotations

import asyncio
import json

import asyncpg

from shared.db import rooms
from shared.db.listen import Listener, Notification
from shared.db.outbound import DONE_CHANNEL, OutboundStatus, get_message, notified_ids
from shared.sip.message import SipRequest
from tests.relay_sip.conftest import SipServer, eventually
from tests.relay_sip.sip_ua import SipUA

ROOM = "devs@conference.example.test"
BODY = "[alice]: hello ✓".encode()
HEADERS = [("Supported", "kamailio/imc"), ("In-Reply-To", "abc"), ("Via", "ignored")]


async def one_request(ua: SipUA) -> SipRequest:
    request = await asyncio.wait_for(ua.next_request(), 10)
    assert request.method == "MESSAGE"
    return request


async def queue_fanout_row(
    pool: asyncpg.Pool | asyncpg.Connection, recipients: list[str], *, done: list[str] | None = None
) -> int:
    """A fan-out row as imc queues it (``shared.db.rooms.queue_fanout``), with
    ``done`` already recorded by an earlier run; the relay is woken."""
    row_id = await pool.fetchval(
        """WITH queued AS (
               INSERT INTO outbound_messages (from_uri, to_aor, content_type, body,
                   extra_headers, source, recipients, recipients_done)
               VALUES ($1, $2, 'text/plain;charset=UTF-8', $3, $4::jsonb, 'imc-chat', $5, $6)
               RETURNING id)
           SELECT id FROM queued, LATERAL (SELECT pg_notify('outbound',
               json_build_object('type', 'queued', 'id', id)::text)) AS woken""",
        f"sip:{ROOM}",
        ROOM,
        BODY,
        json.dumps([list(pair) for pair in HEADERS]),
        [f"{user}@example.test" for user in recipients],
        [f"{user}@example.test" for user in done or []],
    )
    return int(row_id)


async def finished(pool: asyncpg.Pool, row_id: int) -> bool:
    row = await get_message(pool, row_id)
    return row is not None and row.finished_at is not None


async def test_a_fan_out_row_reaches_each_member_once_and_is_finished_with_the_last_copy(
    sip: SipServer, database_url: str
) -> None:
    bob = await sip.ua("bob")
    carol = await sip.ua("carol", "tcp")
    alice_phone, alice_laptop = await sip.ua("alice"), await sip.ua("alice")
    for ua in (bob, carol, alice_phone, alice_laptop):
        assert (await ua.register()).status == 200
    done: list[Notification] = []
    stop = asyncio.Event()
    listener = Listener(database_url, [DONE_CHANNEL], done.append)
    listening = asyncio.create_task(listener.run(stop))
    try:
        await asyncio.wait_for(listener.connected.wait(), 10)
        # erin has no binding (480: stored offline); carol refuses (486: dropped).
        row_id = await queue_fanout_row(sip.pool, ["bob", "carol", "alice", "erin"])

        to_bob, to_carol = await one_request(bob), await one_request(carol)
        to_phone, to_laptop = await one_request(alice_phone), await one_request(alice_laptop)
        for request, user in ((to_bob, "bob"), (to_carol, "carol"), (to_phone, "alice")):
            assert request.body == BODY
            assert request.get("To") == f"<sip:{user}@example.test>"
            assert (request.get("From") or "").startswith(f"<sip:{ROOM}>;tag=")
            assert request.get("Content-Type") == "text/plain;charset=UTF-8"
            assert request.get("Supported") == "kamailio/imc"
            assert request.get("In-Reply-To") == "abc"
            assert len(request.get_all("Via")) == 1
            assert "ignored" not in request.get_all("Via")
            assert request.uri.startswith(f"sip:{user}-ua@127.0.0.1:")
        copies = (to_bob, to_carol, to_phone)
        assert len({r.get("Call-ID") for r in copies}) == 3
        assert len({(r.get("From") or "").rpartition("tag=")[2] for r in copies}) == 3
        assert to_phone.get("Call-ID") == to_laptop.get("Call-ID")  # one copy, forked

        bob.answer(to_bob, 200)
        alice_laptop.answer(to_laptop, 200)

        async def partly_recorded() -> bool:
            row = await get_message(sip.pool, row_id)
            return row is not None and len(row.recipients_done) == 3

        await eventually(partly_recorded, "the first outcomes recorded")
        row = await get_message(sip.pool, row_id)
        assert row is not None and row.status is OutboundStatus.SENDING
        assert set(row.recipients_done) == {
            f"{user}@example.test" for user in ("bob", "alice", "erin")
        }
        assert row.recipients_delivered == 2 and row.finished_at is None

        carol.answer(to_carol, 486)
        await eventually(lambda: finished(sip.pool, row_id), "the row finished")
        row = await get_message(sip.pool, row_id)
        assert row is not None
        assert (row.status, row.last_status, row.last_reason) == (
            OutboundStatus.DELIVERED,
            200,
            "2 of 4 delivered",
        )
        assert sorted(row.recipients_done) == sorted(row.recipients or ())
        stored = await sip.pool.fetch(
            "SELECT recipient, sender_uri, sender_display, body FROM offline_messages"
        )
        assert [tuple(r.values()) for r in stored] == [
            ("erin@example.test", f"sip:{ROOM}", None, BODY)
        ]
        for _ in range(50):
            if done:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # a second NOTIFY would be here by now
        assert [notified_ids(n.raw) for n in done] == [[row_id]]
        for ua in (bob, carol, alice_phone):
            assert ua.requests.empty()  # one copy each
    finally:
        stop.set()
        await listening


async def test_a_half_sent_row_of_a_dead_relay_is_sent_to_the_others_only(
    sip: SipServer,
) -> None:
    bob, carol = await sip.ua("bob"), await sip.ua("carol")
    for ua in (bob, carol):
        assert (await ua.register()).status == 200
    # A relay claimed it, recorded bob's copy and died; its lease has run out.
    async with sip.pool.acquire() as conn, conn.transaction():  # (claimed before it wakes)
        row_id = await queue_fanout_row(conn, ["bob", "carol"], done=["bob"])
        await conn.execute(
            """UPDATE outbound_messages SET status = 'sending', attempts = 1,
                   recipients_delivered = 1, claimed_by = 'dead:5060/x',
                   updated_at = now() - interval '1 hour'
               WHERE id = $1""",
            row_id,
        )
    to_carol = await one_request(carol)
    carol.answer(to_carol, 200)
    await eventually(lambda: finished(sip.pool, row_id), "the row finished")
    row = await get_message(sip.pool, row_id)
    assert row is not None
    assert (row.status, row.attempts, row.last_reason) == (
        OutboundStatus.DELIVERED,
        2,
        "2 of 2 delivered",
    )
    assert row.recipients_done == ("bob@example.test", "carol@example.test")
    await asyncio.sleep(0.2)
    assert bob.requests.empty() and carol.requests.empty()


async def test_a_row_no_member_could_take_is_failed_and_stored_for_all(sip: SipServer) -> None:
    row_id = await queue_fanout_row(sip.pool, ["erin", "frank"])
    await eventually(lambda: finished(sip.pool, row_id), "the row finished")
    row = await get_message(sip.pool, row_id)
    assert row is not None
    assert (row.status, row.last_status, row.last_reason) == (
        OutboundStatus.FAILED,
        480,
        "0 of 2 delivered",
    )
    stored = await sip.pool.fetch("SELECT recipient FROM offline_messages ORDER BY id")
    assert [r["recipient"] for r in stored] == ["erin@example.test", "frank@example.test"]


async def test_a_row_imc_queues_is_claimed_by_its_id_and_sent_at_once(sip: SipServer) -> None:
    """imc's fan-out NOTIFY names the row (type ``fanout``): the relay claims it by id,
    at once, with no poll (its poll interval here is 30 s)."""
    bob, carol = await sip.ua("bob"), await sip.ua("carol", "tcp")
    for ua in (bob, carol):
        assert (await ua.register()).status == 200
    async with sip.pool.acquire() as conn, conn.transaction():
        offline = await rooms.queue_fanout(
            conn,
            from_uri=f"sip:{ROOM}",
            recipients=["bob@example.test", "erin@example.test", "carol@example.test"],
            body=BODY,
            content_type="text/plain;charset=UTF-8",
            extra_headers=HEADERS,
            source="imc-chat",
        )
    assert offline == ["erin@example.test"]  # (no binding: imc stores it itself)
    row_id = await sip.pool.fetchval("SELECT id FROM outbound_messages")
    for ua in (bob, carol):
        request = await one_request(ua)
        assert request.body == BODY
        ua.answer(request, 200)
    await eventually(lambda: finished(sip.pool, row_id), "the row finished")
    row = await get_message(sip.pool, row_id)
    assert row is not None
    assert (row.status, row.attempts, row.last_reason) == (
        OutboundStatus.DELIVERED,
        1,
        "2 of 2 delivered",
    )
    await asyncio.sleep(0.2)
    assert bob.requests.empty() and carol.requests.empty()
