"""Storing MESSAGEs for offline users: 202 only after the commit, quota, expiry, notices."""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

from services.relay.sip import handover
from shared.config import Settings
from shared.db.offline import GENERATED_HEADER, NOTICE_SOURCE, count_messages, list_messages
from shared.db.urls import with_database
from shared.sip.message import SipRequest, SipResponse
from tests.relay_sip.conftest import SipServer, free_port
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"


async def send(
    ua: SipUA,
    body: bytes,
    *,
    to: str = "sip:bob@example.test",
    content_type: str | None = "text/plain;charset=UTF-8",
    headers: list[tuple[str, str]] | None = None,
    display: str | None = None,
) -> tuple[SipRequest, SipResponse]:
    extra = [("Content-Type", content_type)] if content_type else []
    request = ua.build("MESSAGE", to, to=to, headers=extra + (headers or []), body=body)
    if display is not None:
        request.headers.set("From", f'"{display}" <{ua.aor}>;tag=a1b2')
    _, final = await ua.send_authenticated(request)
    return request, final


async def test_each_message_for_an_offline_user_is_committed_before_its_202(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    for n in range(1, 4):
        _, response = await send(alice, f"message {n}".encode())
        assert response.status == 202 and response.reason == "Accepted"
        # The 202 came after the commit: the row is visible at once, to anyone.
        assert await count_messages(sip.pool, BOB) == n
    stored = await list_messages(sip.pool, BOB)
    assert [m.body for m in stored] == [b"message 1", b"message 2", b"message 3"]
    assert [m.id for m in stored] == sorted(m.id for m in stored)


async def test_the_stored_row_keeps_sender_call_id_type_body_and_extra_headers(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice", "tcp")
    body = bytes(range(256)) * 4
    request, response = await send(
        alice,
        body,
        content_type="application/octet-stream",
        display="Alice Liddell",
        headers=[
            ("P-Asserted-Identity", "<sip:alice@example.test>"),
            ("Privacy", "none"),
            ("X-Ticket", "T-42"),
            ("Subject", "binary"),
        ],
    )
    assert response.status == 202
    (row,) = await list_messages(sip.pool, BOB)
    assert row.recipient == BOB
    assert row.sender_uri == "sip:alice@example.test"
    assert row.sender_display == "Alice Liddell"
    assert row.call_id == request.get("Call-ID")
    assert row.content_type == "application/octet-stream"
    assert row.body == body
    assert row.extra_headers == (
        ("P-Asserted-Identity", "<sip:alice@example.test>"),
        ("Privacy", "none"),
        ("X-Ticket", "T-42"),
        ("Subject", "binary"),
    )
    assert (row.expires_at - row.received_at).total_seconds() == 3 * 24 * 3600
    assert row.state == "stored" and row.attempts == 0 and row.outbound_id is None


@pytest.mark.parametrize(("expires", "lifetime"), [("60", 60), ("0", 259200), ("9999999", 259200)])
async def test_the_messages_own_expires_can_only_shorten_its_life(
    sip: SipServer, expires: str, lifetime: int
) -> None:
    alice = await sip.ua("alice")
    _, response = await send(alice, b"soon gone", headers=[("Expires", expires)])
    assert response.status == 202
    (row,) = await list_messages(sip.pool, BOB)
    assert (row.expires_at - row.received_at).total_seconds() == lifetime


@pytest.mark.parametrize("msilo_overrides", [{"msilo_max_messages": 2}])
async def test_the_quota_refuses_further_messages_with_a_clear_reason(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await send(alice, b"one"))[1].status == 202
    assert (await send(alice, b"two"))[1].status == 202
    _, refused = await send(alice, b"three")
    assert (refused.status, refused.reason) == (480, "Mailbox Full")
    assert "offline mailbox of bob@example.test is full" in (refused.get("Warning") or "")
    assert [m.body for m in await list_messages(sip.pool, BOB)] == [b"one", b"two"]
    # Another user's mailbox is not affected.
    _, to_carol = await send(alice, b"hi carol", to="sip:carol@example.test")
    assert to_carol.status == 202


async def test_is_composing_and_empty_messages_are_not_stored(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    _, composing = await send(
        alice, b"<isComposing/>", content_type="application/im-iscomposing+xml"
    )
    assert composing.status == 480
    _, empty = await send(alice, b"")
    assert empty.status == 480
    assert await count_messages(sip.pool, BOB) == 0


def _offline_request() -> SipRequest:
    ua = SipUA("udp", ("127.0.0.1", 9), "alice", "x", "example.test")
    ua.local_port = 5070
    return ua.build(
        "MESSAGE",
        "sip:bob@example.test",
        to="sip:bob@example.test",
        headers=[("Content-Type", "text/plain")],
        body=b"must not be lost",
    )


async def _store_with(pool: asyncpg.Pool, settings: Settings) -> SipResponse:
    return await handover.store_offline(
        pool, settings, _offline_request(), BOB, authenticated_user="alice"
    )


async def test_a_store_against_an_unreachable_database_answers_503_not_202(
    settings: Settings,
) -> None:
    url = f"postgresql://imstack@127.0.0.1:{free_port()}/nowhere"
    pool = await asyncpg.create_pool(url, min_size=0, max_size=1, timeout=5)
    try:
        response = await _store_with(pool, settings)
    finally:
        await pool.close()
    assert response.status == 503 and response.get("Retry-After") == "5"


async def test_a_store_into_a_dropped_database_answers_503_not_202(
    settings: Settings, server_url: str, template_database: str
) -> None:
    name = "imstack_test_msilo_dropped"
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        pool = await asyncpg.create_pool(with_database(server_url, name), min_size=0, max_size=1)
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        try:
            response = await _store_with(pool, settings)
        finally:
            await pool.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert response.status == 503


async def test_a_store_that_fails_inside_the_transaction_answers_503(
    settings: Settings, empty_database_url: str
) -> None:
    # No migrations: the INSERT fails after the connection was made.
    pool = await asyncpg.create_pool(empty_database_url, min_size=0, max_size=1)
    try:
        response = await _store_with(pool, settings)
    finally:
        await pool.close()
    assert response.status == 503


NOTICE: dict[str, Any] = {
    "msilo_notice_from": "sip:msilo@example.test",
    "msilo_notice_text": "{recipient} is away; stored.",
}


@pytest.mark.parametrize("msilo_overrides", [NOTICE])
async def test_the_sender_gets_one_notice_per_stored_message(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    _, response = await send(alice, b"are you there?")
    assert response.status == 202
    notice = await alice.next_request()
    assert notice.method == "MESSAGE"
    assert notice.body == b"bob@example.test is away; stored."
    assert (notice.get("From") or "").startswith("<sip:msilo@example.test>;tag=")
    assert notice.get(GENERATED_HEADER) == "notice"
    alice.answer(notice, 200)


@pytest.mark.parametrize("msilo_overrides", [NOTICE])
async def test_no_notice_for_messages_the_bundle_generated_or_for_notifications(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    assert (await send(alice, b"from a room", headers=[(GENERATED_HEADER, "room")]))[
        1
    ].status == 202
    imdn = await send(alice, b"<imdn/>", content_type="message/imdn+xml")
    assert imdn[1].status == 202
    assert await count_messages(sip.pool, BOB) == 2
    notices = await sip.pool.fetchval(
        "SELECT count(*) FROM outbound_messages WHERE source = $1", NOTICE_SOURCE
    )
    assert notices == 0
    # The stored rows do not carry the marker: the delivery adds its own.
    assert all(
        name != GENERATED_HEADER
        for m in await list_messages(sip.pool, BOB)
        for name, _ in m.extra_headers
    )
