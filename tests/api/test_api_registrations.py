"""``/api/v1/users/{address}/registrations``: a user's bindings, and removing one."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db import locations as locations_db
from shared.db.locations import NewBinding
from shared.db.tokens import Scope
from tests.api.api_client import client_for, new_token

USERS = "/api/v1/users"


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        assert (
            await client.post(USERS, json={"address": "alice", "password": "alice-secret-1"})
        ).is_success
        yield client


async def register(
    pool: asyncpg.Pool,
    contact: str,
    *,
    aor: str = "alice@example.test",
    transport: str = "udp",
    host: str = "192.0.2.10",
    q: float = 1.0,
    expires: int = 3600,
) -> int:
    binding = await locations_db.upsert_binding(
        pool,
        NewBinding(
            aor=aor,
            contact=contact,
            transport=transport,
            source_host=host,
            source_port=5062,
            relay_instance="relay-1",
            connection_id=None if transport == "udp" else "conn-1",
            q=q,
            instance_id=None,
            user_agent="Linphone/5.2",
            call_id="reg-1",
            cseq=1,
            expires=expires,
        ),
    )
    return binding.id


async def test_lists_the_unexpired_bindings_best_first(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    phone = await register(pool, "sip:alice@192.0.2.10:5062", q=0.5)
    desk = await register(
        pool,
        "sip:alice@[2001:db8::1]:5061;transport=tls",
        transport="tls",
        host="2001:db8::1",
        expires=600,
    )
    await register(pool, "sip:alice@192.0.2.99", expires=1)
    await pool.execute(
        "UPDATE locations SET expires_at = now() - interval '1 s' "
        "WHERE contact = 'sip:alice@192.0.2.99'"
    )
    await register(pool, "sip:bob@192.0.2.11", aor="bob@example.test")

    response = await client.get(f"{USERS}/alice@example.test/registrations")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    assert [r["id"] for r in body["data"]] == [desk, phone]
    first = body["data"][0]
    assert first["contact"] == "sip:alice@[2001:db8::1]:5061;transport=tls"
    assert (first["transport"], first["source"]) == ("tls", "[2001:db8::1]:5062")
    assert 590 <= first["expires"] <= 600
    assert first["user_agent"] == "Linphone/5.2"
    assert body["data"][1]["source"] == "192.0.2.10:5062"


async def test_delete_removes_one_binding(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    keep = await register(pool, "sip:alice@192.0.2.10")
    drop = await register(pool, "sip:alice@192.0.2.20")
    bobs = await register(pool, "sip:bob@192.0.2.11", aor="bob@example.test")

    assert (await client.delete(f"{USERS}/alice/registrations/{drop}")).status_code == 204
    assert [b.id for b in await locations_db.get_bindings(pool, "alice@example.test")] == [keep]
    for binding_id in (drop, bobs):  # gone already; another user's
        response = await client.delete(f"{USERS}/alice/registrations/{binding_id}")
        assert response.status_code == 404
        assert response.json()["code"] == "registration_not_found"
    assert len(await locations_db.get_bindings(pool, "bob@example.test")) == 1


async def test_unknown_users_bad_ids_and_scopes(
    client: httpx.AsyncClient, settings: Settings, pool: asyncpg.Pool
) -> None:
    response = await client.get(f"{USERS}/nobody/registrations")
    assert (response.status_code, response.json()["code"]) == (404, "user_not_found")
    assert (await client.delete(f"{USERS}/alice/registrations/0")).status_code == 422
    assert (await client.delete(f"{USERS}/alice/registrations/x")).status_code == 422
    binding = await register(pool, "sip:alice@192.0.2.10")
    token = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=token) as reader:
        assert (await reader.get(f"{USERS}/alice/registrations")).status_code == 200
        refused = await reader.delete(f"{USERS}/alice/registrations/{binding}")
        assert refused.status_code == 403
    async with client_for(settings, pool) as anonymous:
        assert (await anonymous.get(f"{USERS}/alice/registrations")).status_code == 401
