from __future__ import annotations

import asyncio
import hashlib
import time

import asyncpg
import pytest

from shared.config import Settings
from shared.db.tokens import Scope, check_configured, revoke_token
from tests.api.api_client import client_for, new_token
from tests.cli_helpers import imstack_env, run_imstack

USERS = "/api/v1/users"
NEW_USER = {"address": "alice@example.test", "password": "alice-secret-1"}


async def test_without_a_token_the_api_answers_401_with_a_bearer_challenge(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as client:
        for method, path in [("GET", USERS), ("POST", USERS), ("GET", f"{USERS}/a@b.test")]:
            response = await client.request(method, path, json=NEW_USER)
            assert response.status_code == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
            assert response.json()["code"] == "unauthorized"
        basic = await client.get(USERS, headers={"Authorization": "Basic YWxpY2U6cHc="})
        assert basic.status_code == 401


async def test_an_unknown_token_is_401_invalid_token(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await new_token(pool)
    async with client_for(settings, pool, token="imst_not-a-real-one") as client:
        response = await client.get(USERS)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]


async def test_a_created_token_works_until_revoked_and_records_its_last_use(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    uncached = settings.model_copy(update={"api_token_cache_seconds": 0.0})
    token = await new_token(pool, "ops")
    assert await pool.fetchval("SELECT last_used_at FROM api_tokens") is None
    async with client_for(uncached, pool, token=token) as client:
        assert (await client.get(USERS)).status_code == 200
        assert await pool.fetchval("SELECT last_used_at FROM api_tokens") is not None
        await revoke_token(pool, "ops")
        assert (await client.get(USERS)).status_code == 401


async def test_a_revoked_token_stops_working_within_the_cache_time(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    ttl = 1.0
    cached = settings.model_copy(update={"api_token_cache_seconds": ttl})
    token = await new_token(pool, "ops")
    async with client_for(cached, pool, token=token) as client:
        assert (await client.get(USERS)).status_code == 200
        accepted_at = time.monotonic()
        await revoke_token(pool, "ops")
        # Within IMSTACK_API_TOKEN_CACHE_SECONDS the API may still take it (remembered) ...
        await asyncio.sleep(max(0.0, accepted_at + ttl + 0.2 - time.monotonic()))
        # ... never after: the bound the setting documents.
        response = await client.get(USERS)
        assert response.status_code == 401
        assert response.json()["code"] == "invalid_token"
        # A new token works at once (refusals are not remembered).
        again = await new_token(pool, "ops")
        response = await client.get(USERS, headers={"Authorization": f"Bearer {again}"})
        assert response.status_code == 200


async def test_an_unknown_token_is_refused_until_created(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool, token="imst_not-yet") as client:
        assert (await client.get(USERS)).status_code == 401
        await pool.execute(
            "INSERT INTO api_tokens (name, token_sha256, scope) VALUES ('late', $1, 'read')",
            hashlib.sha256(b"imst_not-yet").hexdigest(),
        )
        assert (await client.get(USERS)).status_code == 200


async def test_only_the_hash_of_a_token_is_stored(pool: asyncpg.Pool) -> None:
    token = await new_token(pool, "ops")
    row = await pool.fetchrow("SELECT * FROM api_tokens")
    assert row["token_sha256"] == hashlib.sha256(token.encode()).hexdigest()
    assert token not in repr(dict(row))


async def test_configured_tokens_are_accepted_as_admin(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    configured = settings.model_copy(update={"api_tokens": ["first-secret", "second-secret"]})
    async with client_for(configured, pool, token="second-secret") as client:
        assert (await client.post(USERS, json=NEW_USER)).status_code == 201
    async with client_for(configured, pool, token="second-secre") as client:
        assert (await client.get(USERS)).status_code == 401


def test_configured_tokens_compare_whole_tokens() -> None:
    assert check_configured("abc", ["x", "abc"])
    assert not check_configured("ab", ["abc"])
    assert not check_configured("abcd", ["abc"])
    assert not check_configured("abc", [])


async def test_a_read_only_token_reads_but_gets_403_for_changes(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    admin = await new_token(pool, "admin")
    reader = await new_token(pool, "dashboard", Scope.READ)
    async with client_for(settings, pool, token=admin) as client:
        assert (await client.post(USERS, json=NEW_USER)).status_code == 201
    async with client_for(settings, pool, token=reader) as client:
        assert (await client.get(USERS)).status_code == 200
        assert (await client.get(f"{USERS}/alice@example.test")).status_code == 200
        writes = [
            ("POST", USERS, {"address": "bob@example.test", "password": "bob-secret-1"}),
            ("PATCH", f"{USERS}/alice@example.test", {"display_name": "A"}),
            ("PUT", f"{USERS}/alice@example.test/password", {"password": "alice-secret-2"}),
            ("POST", f"{USERS}/alice@example.test/disable", None),
            ("DELETE", f"{USERS}/alice@example.test", None),
        ]
        for method, path, body in writes:
            response = await client.request(method, path, json=body)
            assert response.status_code == 403, (method, path)
            assert response.json()["code"] == "insufficient_scope"
    assert await pool.fetchval("SELECT count(*) FROM users") == 1


async def test_probes_and_metrics_need_no_token(settings: Settings, pool: asyncpg.Pool) -> None:
    async with client_for(settings, pool) as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code == 200, path


async def test_the_openapi_schema_requires_a_bearer_token_on_every_v1_operation(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as client:
        schema = (await client.get("/openapi.json")).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            secured = operation.get("security") == [{"HTTPBearer": []}]
            assert secured == path.startswith("/api/v1/"), (method, path)


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return imstack_env(IMSTACK_DATABASE_URL=database_url, IMSTACK_DOMAIN="example.test")


async def test_token_commands_create_list_and_revoke(
    env: dict[str, str], settings: Settings, pool: asyncpg.Pool
) -> None:
    created = run_imstack("token", "create", "ops", env=env)
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert token.startswith("imst_") and len(token) > 40
    assert "shown only now" in created.stderr
    reader = run_imstack("token", "create", "grafana", "--read-only", env=env)
    assert reader.returncode == 0, reader.stderr

    async with client_for(settings, pool, token=token) as client:
        assert (await client.get(USERS)).status_code == 200

    listed = run_imstack("token", "list", env=env)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split("\t") for line in listed.stdout.splitlines()]
    assert [row[:3] for row in rows] == [["ops", "admin", "active"], ["grafana", "read", "active"]]
    assert rows[0][4] != "never" and rows[1][4] == "never"
    assert token not in listed.stdout

    revoked = run_imstack("token", "revoke", "ops", env=env)
    assert revoked.returncode == 0, revoked.stderr
    assert revoked.stdout.strip() == "revoked ops"
    assert run_imstack("token", "list", env=env).stdout.splitlines()[0].split("\t")[2] == (
        "revoked"
    )
    async with client_for(settings, pool, token=token) as client:
        assert (await client.get(USERS)).status_code == 401

    again = run_imstack("token", "create", "ops", env=env)  # a revoked token's name is free
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() != token


def test_token_command_errors_are_one_clear_line(env: dict[str, str]) -> None:
    assert run_imstack("token", "create", "ops", env=env).returncode == 0
    duplicate = run_imstack("token", "create", "ops", env=env)
    assert duplicate.returncode == 1
    assert (
        duplicate.stderr.strip() == "imstack: a token named 'ops' exists already (revoke it first)"
    )
    missing = run_imstack("token", "revoke", "nobody", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "imstack: no active token named 'nobody'"
    bad = run_imstack("token", "create", "two words", env=env)
    assert bad.returncode == 2
    assert "not a valid token name" in bad.stderr
    for command in (["token"], ["token", "create"], ["token", "list"], ["token", "revoke"]):
        shown = run_imstack(*command, "--help", env=imstack_env())
        assert shown.returncode == 0, (command, shown.stderr)
