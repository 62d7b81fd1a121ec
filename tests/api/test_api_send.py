"""``POST /api/v1/messages``: a message from the API through the normal routing, against
the real database, the SIP edge on 127.0.0.1 with scripted UAs, msilo and imc."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from services.imc.worker import ImcWorker
from services.msilo.worker import MsiloWorker
from shared.config import Settings
from shared.db.offline import count_messages, list_messages
from shared.db.tokens import Scope
from tests.api.api_client import client_for, new_token
from tests.msilo.conftest import msilo, sip, sip_settings, start_msilo, users
from tests.relay_sip.conftest import SipServer, eventually

__all__ = ["msilo", "sip", "sip_settings", "start_msilo", "users"]

SEND = "/api/v1/messages"
BOB = "bob@example.test"
CONF = "conference.example.test"
PREFIX = re.compile(rb"^\[Offline message - [^\]]+\] ")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Timers far away: registrations and NOTIFYs drive msilo, not a lucky sweep.
    return settings.model_copy(
        update={
            "msilo_sweep_interval": 3600.0,
            "msilo_purge_interval": 3600.0,
            "msilo_retry_interval": 3600.0,
            "msilo_notice_from": "sip:postmaster@example.test",
        }
    )


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        yield client


async def send(client: httpx.AsyncClient, **body: Any) -> httpx.Response:
    body.setdefault("body", "hello")
    return await client.post(SEND, json=body)


async def test_to_an_offline_user_it_is_stored_and_delivered_on_registration(
    sip: SipServer, msilo: MsiloWorker, client: httpx.AsyncClient
) -> None:
    first = await send(client, to="bob", sender="sip:alice@example.test", body="one")
    assert first.status_code == 202, first.text
    assert first.json() == {
        "outcome": "stored",
        "recipient": BOB,
        "sender": "sip:alice@example.test",
        "outbound_id": None,
        "offline_id": first.json()["offline_id"],
        "room_inbox_id": None,
    }
    system = await send(
        client,
        to="sip:bob@example.test",
        body=base64.b64encode(b"two").decode(),
        body_encoding="base64",
        sender_display="Operator",
    )
    assert system.json()["sender"] == "sip:postmaster@example.test"  # the system address
    stored = await list_messages(sip.pool, BOB)
    assert [m.id for m in stored] == [first.json()["offline_id"], system.json()["offline_id"]]
    assert [(m.sender_uri, m.sender_display, m.body) for m in stored] == [
        ("sip:alice@example.test", None, b"one"),
        ("sip:postmaster@example.test", "Operator", b"two"),
    ]
    listed = await client.get(f"/api/v1/users/{BOB}/messages")
    assert [m["body"] for m in listed.json()["data"]] == ["one", "two"]

    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    for sender, text in (
        ("<sip:alice@example.test>", b"one"),
        ('"Operator" <sip:postmaster', b"two"),
    ):
        received = await bob.next_request()
        assert received.method == "MESSAGE"
        assert (received.get("From") or "").startswith(sender), received.get("From")
        assert PREFIX.sub(b"", received.body) == text
        bob.answer(received, 200)

    async def drained() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(drained, "the store drained")


async def test_to_a_registered_user_it_is_sent_now(
    sip: SipServer, client: httpx.AsyncClient
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    response = await send(
        client, to=BOB, sender="alice@example.test", content_type="text/markdown", body="*hi*"
    )
    assert response.status_code == 202, response.text
    assert (response.json()["outcome"], response.json()["sender"]) == (
        "queued",
        "sip:alice@example.test",
    )
    received = await bob.next_request()
    assert received.body == b"*hi*"  # no offline prefix: sent live
    assert received.get("Content-Type") == "text/markdown"
    assert (received.get("From") or "").startswith("<sip:alice@example.test>")
    bob.answer(received, 200)
    outbound_id = response.json()["outbound_id"]

    async def delivered() -> bool:
        status = await sip.pool.fetchval(
            "SELECT status FROM outbound_messages WHERE id = $1", outbound_id
        )
        return bool(status == "delivered")

    await eventually(delivered, "the delivery recorded")
    assert await count_messages(sip.pool, BOB) == 0


async def test_a_failed_delivery_to_a_registered_user_lands_in_the_store(
    sip: SipServer, msilo: MsiloWorker, client: httpx.AsyncClient
) -> None:
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    response = await send(client, to=BOB, sender="sip:carol@example.test", body="later")
    assert response.json()["outcome"] == "queued"
    received = await bob.next_request()
    bob.answer(received, 486)  # busy: not delivered

    async def stored() -> bool:
        return await count_messages(sip.pool, BOB) == 1

    await eventually(stored, "the failed message stored offline")
    [message] = await list_messages(sip.pool, BOB)
    assert (message.sender_uri, message.body) == ("sip:carol@example.test", b"later")
    status = await sip.pool.fetchval(
        "SELECT last_status FROM outbound_messages WHERE id = $1", response.json()["outbound_id"]
    )
    assert status == 486

    # msilo delivers it at the next registration, like any stored message.
    assert (await bob.register()).status == 200
    again = await bob.next_request()
    assert PREFIX.sub(b"", again.body) == b"later"
    bob.answer(again, 200)

    async def drained() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(drained, "the store drained")


async def test_a_scheduled_message_is_delivered_when_due_and_not_before(
    sip: SipServer, msilo: MsiloWorker, client: httpx.AsyncClient
) -> None:
    bob = await sip.ua("bob", "tcp")
    assert (await bob.register()).status == 200
    due = datetime.now(UTC) + timedelta(seconds=2)
    response = await send(client, to=BOB, sender="alice", body="later", deliver_at=due.isoformat())
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "scheduled"
    [stored] = await list_messages(sip.pool, BOB)
    assert stored.id == response.json()["offline_id"]
    # Registered and waiting, but not before its time: sent live now, "now" arrives first.
    now = await send(client, to=BOB, sender="alice", body="now")
    assert now.json()["outcome"] == "queued"
    first = await bob.next_request()
    assert first.body == b"now"
    bob.answer(first, 200)
    second = await bob.next_request()
    assert datetime.now(UTC) >= due
    assert PREFIX.sub(b"", second.body) == b"later"
    bob.answer(second, 200)

    async def drained() -> bool:
        return await count_messages(sip.pool, BOB) == 0

    await eventually(drained, "the scheduled message delivered and deleted")


async def test_a_message_for_a_user_still_draining_is_stored_behind(
    sip: SipServer, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    # bob registered, but with a stored message msilo has not delivered yet (msilo is not
    # running here): a new message must not overtake it.
    early = await send(client, to=BOB, sender="alice", body="first")
    assert early.json()["outcome"] == "stored"
    bob = await sip.ua("bob")
    assert (await bob.register()).status == 200
    later = await send(client, to=BOB, sender="alice", body="second")
    assert later.status_code == 202, later.text
    assert later.json()["outcome"] == "stored"
    assert [m.body for m in await list_messages(pool, BOB)] == [b"first", b"second"]
    assert await pool.fetchval("SELECT count(*) FROM outbound_messages") == 0


async def test_to_a_room_it_is_fanned_out_by_imc(
    client: httpx.AsyncClient, pool: asyncpg.Pool, settings: Settings, users: dict[str, str]
) -> None:
    await client.post("/api/v1/rooms", json={"name": "lobby", "owner": "alice"})
    await client.post("/api/v1/rooms/lobby/members", json={"user": "bob"})
    await pool.execute("DELETE FROM outbound_messages")
    response = await send(client, to=f"lobby@{CONF}", sender="alice", body="hi all")
    assert response.status_code == 202, response.text
    assert response.json()["outcome"] == "room"
    assert response.json()["recipient"] == f"lobby@{CONF}"
    row = await pool.fetchrow("SELECT * FROM room_inbox")
    assert row["id"] == response.json()["room_inbox_id"]
    assert (row["room"], row["sender"], bytes(row["body"])) == (
        f"lobby@{CONF}",
        "alice@example.test",
        b"hi all",
    )

    worker = ImcWorker(settings, pool, settings.database_url or "")
    assert await worker.handle_next()
    # bob is not registered: imc keeps his copy in the offline store, as for any member.
    assert [m.body for m in await list_messages(pool, BOB)] == [b"[alice]: hi all"]
    assert await pool.fetchval("SELECT count(*) FROM room_inbox") == 0
    history = await client.get("/api/v1/rooms/lobby/history")
    assert [m["body"] for m in history.json()["data"]] == ["hi all"]

    # Someone not in the room is answered by the room, as for a MESSAGE from a client.
    await send(client, to=f"sip:lobby@{CONF}", sender="carol", body="let me in")
    assert await worker.handle_next()
    notice = await pool.fetchrow(
        "SELECT to_aor, source FROM outbound_messages WHERE to_aor = 'carol@example.test'"
    )
    assert notice is not None and notice["source"] == "imc"
    assert await pool.fetchval("SELECT count(*) FROM room_messages") == 1


async def test_refusals_and_error_shapes(
    client: httpx.AsyncClient, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    cases: list[tuple[dict[str, Any], int, str]] = [
        ({"to": "nobody"}, 404, "user_not_found"),
        ({"to": "bob@elsewhere.test"}, 422, "invalid_message"),
        ({"to": "dave"}, 409, "user_disabled"),
        ({"to": f"nope@{CONF}", "sender": "alice"}, 404, "room_not_found"),
        ({"to": f"nope@{CONF}"}, 422, "invalid_message"),  # a room needs a sender
        ({"to": f"nope@{CONF}", "sender": "zoe@example.test"}, 404, "user_not_found"),
        ({"to": "bob", "body": "%%%", "body_encoding": "base64"}, 422, "invalid_message"),
        ({"to": "bob", "body": ""}, 422, "invalid_input"),
        ({"to": "bob", "sender": "not a uri"}, 422, "invalid_input"),
        ({"to": "bob", "content_type": "text"}, 422, "invalid_input"),
        ({"to": "bob", "content_type": "application/im-iscomposing+xml"}, 422, "invalid_message"),
        ({"to": "bob", "body": "x" * 70_000}, 422, "invalid_message"),
        # Scheduled delivery: a time zone is needed, and rooms and typing indicators are
        # only sent at once (refused, never silently sent now).
        ({"to": "bob", "deliver_at": "2030-01-01T00:00:00"}, 422, "invalid_input"),
        ({"to": "bob", "deliver_at": "soon"}, 422, "invalid_input"),
        (
            {"to": f"lobby@{CONF}", "sender": "alice", "deliver_at": "2030-01-01T00:00:00Z"},
            422,
            "invalid_message",
        ),
        (
            {
                "to": "bob",
                "content_type": "application/im-iscomposing+xml",
                "deliver_at": "2030-01-01T00:00:00Z",
            },
            422,
            "invalid_message",
        ),
    ]
    for body, status, code in cases:
        response = await send(client, **body)
        assert (response.status_code, response.json()["code"]) == (status, code), body
        assert isinstance(response.json()["detail"], str)
    assert await pool.fetchval("SELECT count(*) FROM offline_messages") == 0
    assert await pool.fetchval("SELECT count(*) FROM outbound_messages") == 0
    assert await pool.fetchval("SELECT count(*) FROM room_inbox") == 0


async def test_a_full_mailbox_is_409(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    limited = settings.model_copy(update={"msilo_max_messages": 1})
    async with client_for(limited, pool, token=await new_token(pool)) as client:
        assert (await send(client, to="bob")).status_code == 202
        full = await send(client, to="bob")
        assert (full.status_code, full.json()["code"]) == (409, "mailbox_full")
    assert await count_messages(pool, BOB) == 1


async def test_sending_needs_an_admin_token(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with client_for(settings, pool) as anonymous:
        response = await send(anonymous, to="bob")
        assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    token = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=token) as reader:
        response = await send(reader, to="bob")
        assert (response.status_code, response.json()["code"]) == (403, "insufficient_scope")
    assert await pool.fetchval("SELECT count(*) FROM offline_messages") == 0
