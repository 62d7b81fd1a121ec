"""``/api/v1/rooms/{room}/bans`` and ``/history``: bans with ``#ban``/``#unban``'s rows and
notices (a user banned here cannot ``#join``), and the history imc keeps, paginated —
against the real database and the imc worker."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from services.imc import commands as text
from services.imc.worker import ImcWorker
from shared.config import Settings
from shared.db.tokens import Scope
from tests.api.api_client import client_for, new_token
from tests.api.test_api_rooms import CONF, ROOMS, client, command, make, notices, room_rows, worker

__all__ = ["client", "worker"]

URI = f"sip:lobby@{CONF}"


async def test_ban_and_unban_match_the_commands_and_a_banned_user_cannot_join(
    client: httpx.AsyncClient, pool: asyncpg.Pool, worker: ImcWorker
) -> None:
    for name in ("lobby", "chat"):
        await make(client, name)
        await client.post(f"{ROOMS}/{name}/members", json={"user": "bob"})
        await client.post(f"{ROOMS}/{name}/members", json={"user": "carol"})
    await notices(pool)

    response = await client.post(f"{ROOMS}/lobby/bans", json={"user": "Bob@example.test"})
    assert response.status_code == 201, response.text
    assert (response.json()["address"], response.json()["state"]) == ("bob@example.test", "banned")
    by_api = await notices(pool)
    await command(pool, worker, "alice@example.test", "#ban bob", "chat")
    by_imc = await notices(pool)
    banned = text.was_banned("bob@example.test")
    assert [n[1:] for n in by_api] == [
        ("bob@example.test", text.YOU_ARE_BANNED, "imc"),
        ("alice@example.test", banned, "imc"),
        ("carol@example.test", banned, "imc"),
    ]
    assert [n[1:] for n in by_api] == [n[1:] for n in by_imc]
    assert {n[0] for n in by_api} == {URI}
    assert [{**r, "name": "x"} for r in await room_rows(pool, "lobby")] == [
        {**r, "name": "x"} for r in await room_rows(pool, "chat")
    ]

    # The banned user's #join is refused by imc, and they stay out of the room.
    await command(pool, worker, "bob@example.test", "#join", "lobby")
    assert [n[1:3] for n in await notices(pool)] == [("bob@example.test", text.BANNED)]
    members = (await client.get(f"{ROOMS}/lobby/members")).json()["data"]
    assert [(m["address"], m["state"]) for m in members] == [
        ("alice@example.test", "active"),
        ("bob@example.test", "banned"),
        ("carol@example.test", "active"),
    ]
    assert (await client.get(f"{ROOMS}/lobby")).json()["member_count"] == 2
    # ...nor can they be added or invited.
    for path in ("members", "invitations"):
        refused = await client.post(f"{ROOMS}/lobby/{path}", json={"user": "bob"})
        assert (refused.status_code, refused.json()["code"]) == (409, "member_exists")

    # Unban, as #unban does; then #join works again.
    assert (await client.delete(f"{ROOMS}/lobby/bans/bob")).status_code == 204
    by_api = await notices(pool)
    await command(pool, worker, "alice@example.test", "#unban bob", "chat")
    by_imc = await notices(pool)
    unbanned = text.was_unbanned("bob@example.test")
    assert [n[1:] for n in by_api] == [
        ("bob@example.test", text.YOU_ARE_UNBANNED, "imc"),
        ("alice@example.test", unbanned, "imc"),
        ("carol@example.test", unbanned, "imc"),
    ]
    assert [n[1:] for n in by_api] == [n[1:] for n in by_imc]
    await command(pool, worker, "bob@example.test", "#join", "lobby")
    assert "bob@example.test" in [r["member"] for r in await room_rows(pool, "lobby")]
    assert (await client.get(f"{ROOMS}/lobby")).json()["member_count"] == 3


async def test_ban_rules_and_error_shapes(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await make(client)
    await client.post(f"{ROOMS}/lobby/invitations", json={"user": "carol"})
    await notices(pool)

    # Someone not in the room is banned beforehand; an invitation becomes the ban.
    for user in ("zoe", "carol"):
        response = await client.post(f"{ROOMS}/lobby/bans", json={"user": user})
        assert response.status_code == 201, response.text
        assert response.json()["state"] == "banned"
    assert [n[1] for n in await notices(pool)] == [
        "zoe@example.test",
        "alice@example.test",
        "carol@example.test",
        "alice@example.test",
    ]

    again = await client.post(f"{ROOMS}/lobby/bans", json={"user": "ZOE"})
    assert again.status_code == 409
    assert again.json() == {
        "detail": f"ZOE@example.test is already banned from lobby@{CONF}",
        "code": "member_exists",
    }
    owner = await client.post(f"{ROOMS}/lobby/bans", json={"user": "alice"})
    assert (owner.status_code, owner.json()["code"]) == (409, "owner_required")
    not_banned = await client.delete(f"{ROOMS}/lobby/bans/alice")
    assert not_banned.status_code == 404
    assert not_banned.json() == {
        "detail": f"alice@example.test is not banned from lobby@{CONF}",
        "code": "ban_not_found",
    }
    for method, path in (("POST", "nope/bans"), ("DELETE", "nope/bans/zoe")):
        missing = await client.request(
            method, f"{ROOMS}/{path}", json={"user": "zoe"} if method == "POST" else None
        )
        assert (missing.status_code, missing.json()["code"]) == (404, "room_not_found")
    bad = await client.post(f"{ROOMS}/lobby/bans", json={"user": "not an address"})
    assert (bad.status_code, bad.json()["code"]) == (422, "invalid_room")
    assert await notices(pool) == []  # nothing refused was announced


@pytest.fixture
def settings(settings: Settings) -> Settings:
    # Chat sent in a burst: no flood control here.
    return settings.model_copy(update={"imc_history": 5, "imc_min_interval": 0.0})


async def test_history_is_the_last_messages_paginated_from_the_newest(
    client: httpx.AsyncClient, pool: asyncpg.Pool, worker: ImcWorker
) -> None:
    await make(client)
    await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})
    empty = await client.get(f"{ROOMS}/lobby/history")
    assert empty.json() == {"data": [], "count": 0, "limit": 50, "offset": 0}
    for n in range(7):
        sender = "alice@example.test" if n % 2 else "bob@example.test"
        await command(pool, worker, sender, f"chat {n}", "lobby")
    await pool.execute(
        """INSERT INTO room_messages (room_id, sender, content_type, body)
           SELECT id, 'bob@example.test', 'application/octet-stream', '\\xff00'::bytea
           FROM rooms"""
    )

    async def page(**params: int) -> tuple[list[str], int]:
        response = await client.get(f"{ROOMS}/lobby/history", params=params)
        assert response.status_code == 200, response.text
        return [m["body"] for m in response.json()["data"]], response.json()["count"]

    # imc keeps the newest 5 (IMSTACK_IMC_HISTORY); the inserted row made 6, one too many.
    assert await page() == (["chat 3", "chat 4", "chat 5", "chat 6", "/wA="], 5)
    assert await page(limit=2) == (["chat 6", "/wA="], 5)
    assert await page(limit=2, offset=2) == (["chat 4", "chat 5"], 5)
    assert await page(limit=2, offset=4) == (["chat 3"], 5)
    assert await page(offset=5) == ([], 5)
    newest = (await client.get(f"{ROOMS}/lobby/history", params={"limit": 2})).json()["data"]
    assert [(m["sender"], m["content_type"], m["body_encoding"]) for m in newest] == [
        ("bob@example.test", "text/plain", "text"),  # chat 6
        ("bob@example.test", "application/octet-stream", "base64"),
    ]
    assert newest[0]["id"] < newest[1]["id"]
    # A room's own history length wins over IMSTACK_IMC_HISTORY, as in imc's replay.
    patched = await client.patch(f"{ROOMS}/lobby", json={"history_length": 2})
    assert patched.status_code == 200, patched.text
    assert await page() == (["chat 6", "/wA="], 2)

    assert (await client.get(f"{ROOMS}/lobby/history", params={"limit": 0})).status_code == 422
    missing = await client.get(f"{ROOMS}/nope/history")
    assert (missing.status_code, missing.json()["code"]) == (404, "room_not_found")


async def test_bans_need_an_admin_token_and_history_any_token(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool, token=await new_token(pool)) as admin:
        await make(admin)
    async with client_for(settings, pool) as anonymous:
        for method, path in (
            ("POST", "lobby/bans"),
            ("DELETE", "lobby/bans/bob"),
            ("GET", "lobby/history"),
        ):
            response = await anonymous.request(
                method, f"{ROOMS}/{path}", json={"user": "bob"} if method == "POST" else None
            )
            assert (response.status_code, response.json()["code"]) == (401, "unauthorized")
    token = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=token) as reader:
        assert (await reader.get(f"{ROOMS}/lobby/history")).status_code == 200
        for method, path in (("POST", "lobby/bans"), ("DELETE", "lobby/bans/bob")):
            response = await reader.request(
                method, f"{ROOMS}/{path}", json={"user": "bob"} if method == "POST" else None
            )
            assert (response.status_code, response.json()["code"]) == (403, "insufficient_scope")
    assert await pool.fetchval("SELECT count(*) FROM room_members WHERE state = 'banned'") == 0
