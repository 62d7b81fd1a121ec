"""Offline messages through the API: count, list, delete one or all, purge by date."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from services.api import message_ops
from shared.config import Settings
from shared.db import offline as offline_db
from shared.db.tokens import Scope
from tests.api.api_client import client_for, new_token

USERS = "/api/v1/users"
PURGE = "/api/v1/messages/purge"


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        for user in ("alice", "bob"):
            response = await client.post(
                USERS, json={"address": user, "password": f"{user}-secret-1"}
            )
            assert response.is_success
        yield client


async def store(
    pool: asyncpg.Pool,
    body: bytes = b"hello",
    *,
    recipient: str = "alice@example.test",
    content_type: str = "text/plain;charset=UTF-8",
) -> int:
    async with pool.acquire() as conn, conn.transaction():
        new_id = await offline_db.store_message(
            conn,
            recipient=recipient,
            sender_uri="sip:carol@example.test",
            sender_display="Carol",
            call_id="call-1",
            content_type=content_type,
            body=body,
            extra_headers=[],
            lifetime=3600,
        )
    assert new_id is not None
    return new_id


async def test_count_and_list_paginated_with_text_or_base64_bodies(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    text_id = await store(pool, "grüße".encode())
    latin = await store(
        pool, "café".encode("latin-1"), content_type="text/plain; charset=ISO-8859-1"
    )
    binary = await store(pool, b"\x89PNG\x00", content_type="image/png")
    broken = await store(pool, b"\xff\xfe", content_type="text/plain")
    await store(pool, b"for bob", recipient="bob@example.test")

    count = await client.get(f"{USERS}/alice/messages/count")
    assert count.json() == {"count": 4}
    response = await client.get(f"{USERS}/alice@example.test/messages")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["count"], body["limit"], body["offset"]) == (4, 100, 0)
    assert [m["id"] for m in body["data"]] == [text_id, latin, binary, broken]
    bodies = [(m["body"], m["body_encoding"]) for m in body["data"]]
    assert bodies == [
        ("grüße", "text"),
        ("café", "text"),
        (base64.b64encode(b"\x89PNG\x00").decode(), "base64"),
        (base64.b64encode(b"\xff\xfe").decode(), "base64"),
    ]
    first = body["data"][0]
    assert (first["sender_uri"], first["sender_display"], first["state"]) == (
        "sip:carol@example.test",
        "Carol",
        "stored",
    )
    page = (await client.get(f"{USERS}/alice/messages", params={"limit": 2, "offset": 1})).json()
    assert [m["id"] for m in page["data"]] == [latin, binary]
    assert page["count"] == 4


async def test_delete_one_and_all(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    first = await store(pool)
    second = await store(pool)
    bobs = await store(pool, recipient="bob@example.test")

    assert (await client.delete(f"{USERS}/alice/messages/{first}")).status_code == 204
    assert [m.id for m in await offline_db.list_messages(pool, "alice@example.test")] == [second]
    for message_id in (first, bobs):
        response = await client.delete(f"{USERS}/alice/messages/{message_id}")
        assert (response.status_code, response.json()["code"]) == (404, "message_not_found")

    await store(pool)
    response = await client.delete(f"{USERS}/alice/messages")
    assert response.json() == {"deleted": 2}
    assert await offline_db.count_messages(pool, "alice@example.test") == 0
    assert await offline_db.count_messages(pool, "bob@example.test") == 1


async def test_purge_deletes_what_was_received_before_the_date_in_batches(
    client: httpx.AsyncClient, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    old = [await store(pool, recipient=r) for r in ("alice@example.test", "bob@example.test") * 3]
    await pool.execute(
        "UPDATE offline_messages SET received_at = now() - interval '10 days' WHERE id = ANY($1)",
        old,
    )
    recent = await store(pool)
    monkeypatch.setattr(message_ops, "PURGE_BATCH", 4)

    before = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    response = await client.post(PURGE, params={"before": before})
    assert response.status_code == 200, response.text
    assert response.json() == {"purged": 6, "batches": 2}
    assert await pool.fetchval("SELECT array_agg(id) FROM offline_messages") == [recent]
    again = await client.post(PURGE, params={"before": before})
    assert again.json() == {"purged": 0, "batches": 1}


async def test_bad_input_unknown_users_and_scopes(
    client: httpx.AsyncClient, settings: Settings, pool: asyncpg.Pool
) -> None:
    for before in ("yesterday", "2024-01-01T00:00:00"):  # not a date; no time zone
        response = await client.post(PURGE, params={"before": before})
        assert (response.status_code, response.json()["code"]) == (422, "invalid_input")
    assert (await client.post(PURGE)).status_code == 422
    for path in ("messages", "messages/count"):
        response = await client.get(f"{USERS}/nobody/{path}")
        assert (response.status_code, response.json()["code"]) == (404, "user_not_found")
    assert (await client.get(f"{USERS}/alice/messages", params={"limit": 0})).status_code == 422

    message = await store(pool)
    token = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=token) as reader:
        assert (await reader.get(f"{USERS}/alice/messages")).status_code == 200
        assert (await reader.delete(f"{USERS}/alice/messages/{message}")).status_code == 403
        assert (await reader.delete(f"{USERS}/alice/messages")).status_code == 403
        assert (
            await reader.post(PURGE, params={"before": "2030-01-01T00:00:00Z"})
        ).status_code == 403
    assert await offline_db.count_messages(pool, "alice@example.test") == 1
