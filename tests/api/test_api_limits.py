"""Request body cap (security review G9): a body over ``MAX_REQUEST_BYTES`` is refused 413
without being read, whether its size is declared or only streamed; the largest valid send
still fits."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from services.api.app import MAX_REQUEST_BYTES
from services.api.routers.messages import MAX_BODY_BYTES
from shared.config import Settings
from shared.db.offline import count_messages
from tests.api.api_client import client_for, new_token

SEND = "/api/v1/messages"
JSON = {"Content-Type": "application/json"}


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        created = await client.post(
            "/api/v1/users", json={"address": "bob", "password": "bob-secret-1"}
        )
        assert created.status_code == 201
        yield client


def send_body(text: str) -> bytes:
    # ensure_ascii: every character outside the BMP becomes a 12-byte surrogate pair escape.
    return json.dumps({"to": "bob", "body": text}, ensure_ascii=True).encode()


async def test_the_largest_valid_send_fits(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    body = send_body("\U0001f600" * (MAX_BODY_BYTES // 4))  # 4 bytes each in UTF-8
    assert len(body) > 3 * MAX_BODY_BYTES
    response = await client.post(SEND, content=body, headers=JSON)
    assert response.status_code == 202, response.text[:300]
    assert await count_messages(pool, "bob@example.test") == 1


async def test_a_declared_oversized_body_is_413(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    body = send_body("x" * (MAX_REQUEST_BYTES + 1))
    response = await client.post(SEND, content=body, headers=JSON)
    assert response.status_code == 413
    assert response.json() == {
        "detail": response.json()["detail"],
        "code": "payload_too_large",
    }
    assert await count_messages(pool, "bob@example.test") == 0


async def test_a_streamed_oversized_body_is_413_before_its_end(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    chunk = b"x" * 65536
    sent = 0

    async def stream() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"to": "bob", "body": "'
        for _ in range(4 * MAX_REQUEST_BYTES // len(chunk)):
            sent += len(chunk)
            yield chunk
        yield b'"}'

    response = await client.post(SEND, content=stream(), headers=JSON)
    assert (response.status_code, response.json()["code"]) == (413, "payload_too_large")
    assert sent < 2 * MAX_REQUEST_BYTES  # refused on the way, not after reading it all
    assert await count_messages(pool, "bob@example.test") == 0
