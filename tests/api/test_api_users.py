from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from shared.config import Settings
from shared.db.users import USERS_CHANNEL
from shared.digest import Algorithm, ha1
from tests.api.api_client import client_for, new_token

USERS = "/api/v1/users"
PASSWORD = "s3cret-word-1"
SECRET_WORDS = ("password", "ha1", "s3cret")


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        yield client


async def create(client: httpx.AsyncClient, **body: object) -> httpx.Response:
    body.setdefault("password", PASSWORD)
    return await client.post(USERS, json=body)


def assert_no_credentials(response: httpx.Response) -> None:
    for word in SECRET_WORDS:
        assert word not in response.text.lower(), word


async def test_create_returns_201_with_the_public_profile_and_stores_only_ha1s(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    response = await create(
        client, address="alice@Example.TEST", display_name="Alice", email="alice@mail.test"
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["address"] == "alice@example.test"
    assert (body["username"], body["domain"]) == ("alice", "example.test")
    assert (body["display_name"], body["email"], body["disabled"]) == (
        "Alice",
        "alice@mail.test",
        False,
    )
    assert response.headers["Location"] == "http://api/api/v1/users/alice@example.test"
    assert_no_credentials(response)
    row = await pool.fetchrow("SELECT ha1_md5, ha1_sha256 FROM users")
    assert row["ha1_md5"] == ha1(Algorithm.MD5, "alice", "example.test", PASSWORD)
    assert row["ha1_sha256"] == ha1(Algorithm.SHA256, "alice", "example.test", PASSWORD)


async def test_create_takes_username_and_domain_or_the_server_domain(
    client: httpx.AsyncClient,
) -> None:
    with_domain = await create(client, username="bob", domain="other.test")
    assert with_domain.status_code == 201, with_domain.text
    assert with_domain.json()["address"] == "bob@other.test"
    bare = await create(client, username="carol")
    assert bare.json()["address"] == "carol@example.test"
    short = await create(client, address="dave")
    assert short.json()["address"] == "dave@example.test"


async def test_creating_an_existing_user_is_409(client: httpx.AsyncClient) -> None:
    assert (await create(client, address="alice@example.test")).status_code == 201
    again = await create(client, username="alice", domain="EXAMPLE.test")
    assert again.status_code == 409
    assert again.json() == {
        "detail": "user alice@example.test already exists",
        "code": "user_exists",
    }


@pytest.mark.parametrize(
    "body",
    [
        {"address": "a b@example.test", "password": "pw"},
        {"address": "alice@exa mple.test", "password": "pw"},
        {"address": "alice@example.test", "username": "alice", "password": "pw"},
        {"address": "alice@example.test", "domain": "example.test", "password": "pw"},
        {"password": "pw"},
        {"address": "alice@example.test"},
        {"address": "alice@example.test", "password": ""},
        {"address": "alice@example.test", "password": "pw", "email": "not-an-address"},
        {"address": "alice@example.test", "password": "pw", "display_name": "A\r\nVia: x"},
        {"address": "alice@example.test", "password": "pw", "ha1_md5": "0" * 32},
        {"address": "alice\u0000@example.test", "password": "pw"},
    ],
)
async def test_invalid_input_is_422_with_detail_and_code(
    client: httpx.AsyncClient, pool: asyncpg.Pool, body: dict[str, str]
) -> None:
    response = await client.post(USERS, json=body)
    assert response.status_code == 422, response.text
    error = response.json()
    assert isinstance(error["detail"], str) and error["detail"]
    assert error["code"] in {"invalid_input", "invalid_user"}
    assert await pool.fetchval("SELECT count(*) FROM users") == 0


async def test_a_rejected_password_is_not_echoed_back(client: httpx.AsyncClient) -> None:
    long_secret = "s3cret-" * 200
    response = await create(client, address="alice@example.test", password=long_secret)
    assert response.status_code == 422
    assert "s3cret" not in response.text
    assert response.json()["errors"][0]["loc"] == ["body", "password"]


async def test_a_password_shorter_than_the_minimum_is_422_naming_it(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    short = await create(client, address="alice@example.test", password="nine-char")
    assert short.status_code == 422, short.text
    assert short.json() == {
        "detail": "the password must be at least 10 characters long",
        "code": "weak_password",
    }
    assert "nine-char" not in short.text
    assert await pool.fetchval("SELECT count(*) FROM users") == 0
    enough = await create(client, address="alice@example.test", password="ten-chars!")
    assert enough.status_code == 201, enough.text
    row = await pool.fetchrow("SELECT ha1_md5 FROM users")
    assert row["ha1_md5"] == ha1(Algorithm.MD5, "alice", "example.test", "ten-chars!")


@pytest.mark.parametrize(
    "body",
    [
        {"username": "alexander-the-great", "password": "alexander-the-great"},
        {"username": "alexander-the-great", "password": "Alexander-The-Great"},
        {"address": "alex@example.test", "password": "ALEX@example.test"},
    ],
)
async def test_a_password_equal_to_the_user_name_or_address_is_422(
    client: httpx.AsyncClient, pool: asyncpg.Pool, body: dict[str, str]
) -> None:
    response = await client.post(USERS, json=body)
    assert response.status_code == 422, response.text
    assert response.json() == {
        "detail": "the password must not be the user name or address",
        "code": "weak_password",
    }
    assert await pool.fetchval("SELECT count(*) FROM users") == 0


async def test_a_password_change_follows_the_same_rule(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await create(client, address="alice@example.test")
    before = await pool.fetchval("SELECT ha1_sha256 FROM users")
    path = f"{USERS}/alice@example.test/password"
    for weak in ("short", "alice", "Alice@Example.test"):
        refused = await client.put(path, json={"password": weak})
        assert refused.status_code == 422, (weak, refused.text)
        assert refused.json()["code"] == "weak_password"
        assert weak not in refused.text
    assert await pool.fetchval("SELECT ha1_sha256 FROM users") == before
    changed = await client.put(path, json={"password": "a-longer-secret"})
    assert changed.status_code == 204, changed.text
    assert await pool.fetchval("SELECT ha1_sha256 FROM users") == ha1(
        Algorithm.SHA256, "alice", "example.test", "a-longer-secret"
    )


async def test_the_minimum_length_is_a_setting(settings: Settings, pool: asyncpg.Pool) -> None:
    token = await new_token(pool)
    strict = settings.model_copy(update={"password_min_length": 16})
    async with client_for(strict, pool, token=token) as client:
        refused = await create(client, address="alice@example.test", password="fifteen-chars-!")
        assert refused.status_code == 422
        assert refused.json()["detail"] == "the password must be at least 16 characters long"
        assert (await create(client, address="alice", password="sixteen-chars-!!")).is_success
    lax = settings.model_copy(update={"password_min_length": 1})
    async with client_for(lax, pool, token=token) as client:
        assert (await create(client, address="bob", password="b")).status_code == 201
        assert (await create(client, address="carol", password="carol")).status_code == 422


async def test_list_is_paginated_and_counts_all_matches(client: httpx.AsyncClient) -> None:
    for name in ("erin", "dave", "carol", "bob", "alice"):
        assert (await create(client, address=f"{name}@example.test")).status_code == 201
    await create(client, address="zed@other.test", display_name="Zed Example")

    first = (await client.get(USERS, params={"limit": 2})).json()
    assert [u["username"] for u in first["data"]] == ["alice", "bob"]
    assert (first["count"], first["limit"], first["offset"]) == (6, 2, 0)
    last = (await client.get(USERS, params={"limit": 2, "offset": 4})).json()
    assert [u["address"] for u in last["data"]] == ["erin@example.test", "zed@other.test"]
    past = (await client.get(USERS, params={"offset": 100})).json()
    assert past["data"] == [] and past["count"] == 6

    by_domain = (await client.get(USERS, params={"domain": "Other.Test"})).json()
    assert [u["username"] for u in by_domain["data"]] == ["zed"]
    assert by_domain["count"] == 1
    search = (await client.get(USERS, params={"search": "ZED ex"})).json()
    assert [u["username"] for u in search["data"]] == ["zed"]
    by_address = (await client.get(USERS, params={"search": "O", "domain": "example.test"})).json()
    assert [u["username"] for u in by_address["data"]] == ["bob", "carol"]
    wildcard = (await client.get(USERS, params={"search": "%"})).json()
    assert wildcard["count"] == 0  # the search string is literal text, not a LIKE pattern


@pytest.mark.parametrize(
    "params", [{"limit": 0}, {"limit": 1001}, {"offset": -1}, {"limit": "x"}, {"search": "a\x00"}]
)
async def test_bad_pagination_is_422(client: httpx.AsyncClient, params: dict[str, object]) -> None:
    response = await client.get(USERS, params=params)
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


async def test_get_one_user_by_address_or_bare_name(client: httpx.AsyncClient) -> None:
    await create(client, address="alice@example.test", display_name="Alice")
    by_address = await client.get(f"{USERS}/alice@example.test")
    assert by_address.status_code == 200
    assert by_address.json()["display_name"] == "Alice"
    assert_no_credentials(by_address)
    assert (await client.get(f"{USERS}/alice")).json() == by_address.json()
    assert (await client.get(f"{USERS}/sip:alice@EXAMPLE.test")).json() == by_address.json()


async def test_unknown_users_are_404_everywhere(client: httpx.AsyncClient) -> None:
    who = f"{USERS}/nobody@example.test"
    for method, path, body in [
        ("GET", who, None),
        ("PATCH", who, {"display_name": "N"}),
        ("PUT", f"{who}/password", {"password": PASSWORD}),
        ("POST", f"{who}/disable", None),
        ("POST", f"{who}/enable", None),
        ("DELETE", who, None),
    ]:
        response = await client.request(method, path, json=body)
        assert response.status_code == 404, (method, path)
        assert response.json() == {
            "detail": "no such user: nobody@example.test",
            "code": "user_not_found",
        }


async def test_update_changes_only_the_fields_given(client: httpx.AsyncClient) -> None:
    await create(client, address="alice@example.test", display_name="Alice", email="a@mail.test")
    renamed = await client.patch(f"{USERS}/alice@example.test", json={"display_name": "Alice L."})
    assert renamed.status_code == 200
    assert (renamed.json()["display_name"], renamed.json()["email"]) == ("Alice L.", "a@mail.test")
    cleared = await client.patch(f"{USERS}/alice@example.test", json={"email": None})
    assert (cleared.json()["display_name"], cleared.json()["email"]) == ("Alice L.", None)
    assert cleared.json()["updated_at"] >= renamed.json()["updated_at"]
    nothing = await client.patch(f"{USERS}/alice@example.test", json={})
    assert nothing.status_code == 200 and nothing.json()["display_name"] == "Alice L."
    bad = await client.patch(f"{USERS}/alice@example.test", json={"email": "x"})
    assert bad.status_code == 422
    disabled = await client.patch(f"{USERS}/alice@example.test", json={"disabled": True})
    assert disabled.status_code == 422  # not a profile field: use /disable


async def test_set_password_replaces_the_ha1s(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await create(client, address="alice@example.test")
    response = await client.put(
        f"{USERS}/alice@example.test/password", json={"password": "new-secret-1"}
    )
    assert response.status_code == 204
    assert response.content == b""
    assert await pool.fetchval("SELECT ha1_sha256 FROM users") == ha1(
        Algorithm.SHA256, "alice", "example.test", "new-secret-1"
    )
    empty = await client.put(f"{USERS}/alice@example.test/password", json={"password": ""})
    assert empty.status_code == 422


async def test_disable_and_enable(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await create(client, address="alice@example.test")
    disabled = await client.post(f"{USERS}/alice@example.test/disable")
    assert disabled.status_code == 200
    assert disabled.json()["disabled"] is True
    assert await pool.fetchval("SELECT disabled FROM users")
    enabled = await client.post(f"{USERS}/alice@example.test/enable")
    assert enabled.json()["disabled"] is False
    assert not await pool.fetchval("SELECT disabled FROM users")


async def test_delete_is_204_and_the_user_is_gone(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    await create(client, address="alice@example.test")
    response = await client.delete(f"{USERS}/alice@example.test")
    assert response.status_code == 204
    assert await pool.fetchval("SELECT count(*) FROM users") == 0
    assert (await client.get(f"{USERS}/alice@example.test")).status_code == 404


async def test_delete_removes_bindings_stored_messages_and_memberships(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    for name in ("alice", "bob"):
        await create(client, address=f"{name}@example.test")
        await pool.execute(
            """INSERT INTO locations (aor, contact, transport, source_host, source_port,
                   relay_instance, call_id, cseq, expires_at)
               VALUES ($1, $2, 'udp', '192.0.2.1', 5060, 'r1', 'c', 1, now() + interval '1 h')""",
            f"{name}@example.test",
            f"sip:{name}@192.0.2.1",
        )
        await pool.execute(
            """INSERT INTO offline_messages (recipient, sender_uri, expires_at, content_type, body)
               VALUES ($1, 'sip:carol@example.test', now() + interval '1 h', 'text/plain', 'hi')""",
            f"{name}@example.test",
        )
    rooms = "/api/v1/rooms"
    await client.post(rooms, json={"name": "lobby", "owner": "bob"})
    await client.post(f"{rooms}/lobby/members", json={"user": "alice"})
    await client.post(rooms, json={"name": "other", "owner": "bob"})
    await client.post(f"{rooms}/other/invitations", json={"user": "Alice@example.test"})

    assert (await client.delete(f"{USERS}/alice@example.test")).status_code == 204
    for table, column in (
        ("locations", "aor"),
        ("offline_messages", "recipient"),
        ("room_members", "member"),
    ):
        left = await pool.fetch(f"SELECT {column} FROM {table}")
        assert {row[column].lower() for row in left} == {"bob@example.test"}, table
    # Nothing is touched when the user does not exist.
    assert (await client.delete(f"{USERS}/alice@example.test")).status_code == 404
    assert await pool.fetchval("SELECT count(*) FROM room_members") == 2


async def test_changes_are_notified_on_the_users_channel(
    client: httpx.AsyncClient, database_url: str
) -> None:
    received: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    listener = await asyncpg.connect(database_url)
    try:
        await listener.add_listener(
            USERS_CHANNEL, lambda *args: received.put_nowait(json.loads(args[3]))
        )
        await create(client, address="alice@example.test")
        await client.patch(f"{USERS}/alice@example.test", json={"display_name": "A"})
        await client.put(f"{USERS}/alice@example.test/password", json={"password": "new-secret-1"})
        await client.post(f"{USERS}/alice@example.test/disable")
        await client.post(f"{USERS}/alice@example.test/enable")
        await client.delete(f"{USERS}/alice@example.test")
        await create(client, address="alice@example.test", email="bad")  # 422: no notice
        seen = [await asyncio.wait_for(received.get(), 5) for _ in range(6)]
        await asyncio.sleep(0.1)
        assert received.empty()
    finally:
        await listener.close()
    assert [n["type"] for n in seen] == [
        "created",
        "updated",
        "password",
        "disabled",
        "enabled",
        "deleted",
    ]
    assert {n["id"] for n in seen} == {"alice@example.test"}


async def test_unknown_paths_and_methods_keep_the_error_shape(client: httpx.AsyncClient) -> None:
    missing = await client.get("/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Not Found", "code": "not_found"}
    wrong = await client.put(USERS)
    assert wrong.status_code == 405
    assert wrong.json()["code"] == "method_not_allowed"


async def test_malformed_json_is_422_not_500(client: httpx.AsyncClient) -> None:
    response = await client.post(
        USERS, content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_input"


async def test_an_unreachable_database_is_503_not_500(settings: Settings) -> None:
    configured = settings.model_copy(update={"api_tokens": ["t"]})
    pool = await asyncpg.create_pool("postgresql://nobody@127.0.0.1:1/none", min_size=0)
    try:
        async with client_for(configured, pool, token="t") as client:
            response = await client.get(USERS)
    finally:
        await pool.close()
    assert response.status_code == 503
    assert response.json()["code"] == "database_unavailable"


async def test_e_mail_notice_preference_is_set_on_create_and_changed_by_patch(
    client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    made = await create(client, address="erin@example.test", email="erin@mail.test")
    assert made.json()["notify_email"] is True  # on by default
    quiet = await create(client, address="fred@example.test", notify_email=False)
    assert quiet.json()["notify_email"] is False
    changed = await client.patch(f"{USERS}/erin@example.test", json={"notify_email": False})
    assert changed.status_code == 200, changed.text
    assert changed.json()["notify_email"] is False
    assert changed.json()["email"] == "erin@mail.test"  # left out: unchanged
    assert not await pool.fetchval("SELECT notify_email FROM users WHERE username = 'erin'")
    refused = await client.patch(f"{USERS}/erin@example.test", json={"notify_email": None})
    assert refused.status_code == 422
