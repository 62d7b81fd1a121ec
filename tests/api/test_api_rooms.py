"""``/api/v1/rooms``: rooms and members with imc's semantics, against the real database and
the imc worker (driven one queued MESSAGE at a time)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from services.imc import commands as text
from services.imc.worker import ImcWorker
from shared.config import Settings
from shared.db import rooms as rooms_db
from shared.db.tokens import Scope
from tests.api.api_client import client_for, new_token

ROOMS = "/api/v1/rooms"
CONF = "conference.example.test"
HEADERS = [["Supported", "kamailio/imc"], ["X-Imstack-Generated", "room"]]


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(settings, pool, token=await new_token(pool)) as client:
        yield client


@pytest.fixture
def worker(settings: Settings, pool: asyncpg.Pool, database_url: str) -> ImcWorker:
    return ImcWorker(settings, pool, database_url)


async def command(pool: asyncpg.Pool, worker: ImcWorker, sender: str, body: str, room: str) -> None:
    """``sender`` sends ``body`` to room ``room``, as the relay hands it over; imc handles it."""
    await rooms_db.enqueue(
        pool,
        room=f"{room}@{CONF}",
        sender=sender,
        sender_display=None,
        call_id="c1",
        content_type="text/plain",
        body=body.encode(),
    )
    assert await worker.handle_next()


async def room_rows(pool: asyncpg.Pool, name: str) -> list[dict[str, Any]]:
    rows = await pool.fetch(
        """SELECT r.name, r.domain, r.owner, r.private, r.topic, m.member, m.role, m.state,
                  m.invited_by
           FROM rooms r JOIN room_members m ON m.room_id = r.id WHERE r.name = $1
           ORDER BY m.id""",
        name,
    )
    return [dict(row) for row in rows]


async def notices(pool: asyncpg.Pool) -> list[tuple[str, str, str, str]]:
    """Queued MESSAGEs (and consume them): (from, to, body, source)."""
    rows = await pool.fetch("SELECT * FROM outbound_messages ORDER BY id")
    await pool.execute("DELETE FROM outbound_messages")
    for row in rows:
        headers = json.loads(row["extra_headers"])
        assert [h for h in headers if h[0] != "In-Reply-To"] == HEADERS  # imc answers c1
        assert row["content_type"] == "text/plain;charset=UTF-8"
    return [
        (row["from_uri"], row["to_aor"], bytes(row["body"]).decode(), row["source"]) for row in rows
    ]


async def make(client: httpx.AsyncClient, name: str = "lobby", **body: object) -> httpx.Response:
    body.setdefault("owner", "alice")
    return await client.post(ROOMS, json={"name": name, **body})


async def test_create_makes_the_same_rows_as_hash_create_and_accepts_hash_join(
    client: httpx.AsyncClient, pool: asyncpg.Pool, worker: ImcWorker
) -> None:
    response = await make(client, "Lobby", private=True)
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["address"] == f"lobby@{CONF}"
    assert body["uri"] == f"sip:lobby@{CONF}"
    assert (body["owner"], body["private"], body["topic"]) == ("alice@example.test", True, None)
    assert (body["member_count"], body["invited_count"]) == (1, 0)
    assert response.headers["Location"] == f"http://api{ROOMS}/lobby@{CONF}"

    await command(pool, worker, "alice@example.test", "#create chat private", "chat")
    made_by_api = await room_rows(pool, "lobby")
    made_by_imc = await room_rows(pool, "chat")
    assert made_by_api == [{**row, "name": "lobby"} for row in made_by_imc]
    assert made_by_api[0]["role"] == "owner"
    await notices(pool)

    # The API's public room takes #join from a user like one made by #create.
    await make(client, "open")
    await command(pool, worker, "bob@example.test", "#join", "open")
    assert [r["member"] for r in await room_rows(pool, "open")] == [
        "alice@example.test",
        "bob@example.test",
    ]
    joined = text.joined("bob@example.test")
    assert await notices(pool) == [
        (f"sip:open@{CONF}", "alice@example.test", joined, "imc"),
        (f"sip:open@{CONF}", "bob@example.test", joined, "imc"),
    ]


async def test_create_conflicts_and_invalid_names(client: httpx.AsyncClient) -> None:
    assert (await make(client, topic="hello")).status_code == 201
    again = await make(client, f"LOBBY@{CONF}")
    assert again.status_code == 409
    assert again.json()["code"] == "room_exists"
    for bad in ("lobby@elsewhere.test", ".hidden", "a b", ""):
        response = await make(client, bad)
        assert response.status_code == 422, bad
        assert response.json()["code"] in ("invalid_room", "invalid_input"), bad
    assert (await make(client, "x", owner="not an address")).status_code == 422


async def test_list_filters_and_paginates(client: httpx.AsyncClient) -> None:
    await make(client, "alpha")
    await make(client, "beta", private=True, owner="bob")
    await make(client, "alphabet", owner="bob")
    await client.post(f"{ROOMS}/alpha/invitations", json={"user": "carol"})

    async def names(**params: Any) -> tuple[list[str], int]:
        response = await client.get(ROOMS, params=params)
        assert response.status_code == 200, response.text
        return [r["name"] for r in response.json()["data"]], response.json()["count"]

    assert await names() == (["alpha", "alphabet", "beta"], 3)
    assert await names(name="ALPHA") == (["alpha", "alphabet"], 2)
    assert await names(member="bob") == (["alphabet", "beta"], 2)
    assert await names(member="carol@example.test") == (["alpha"], 1)
    assert await names(private="true") == (["beta"], 1)
    assert await names(private="false", member="bob") == (["alphabet"], 1)
    assert await names(limit=1, offset=1) == (["alphabet"], 3)
    assert (await client.get(ROOMS, params={"limit": 0})).status_code == 422


async def test_get_counts_members_and_unknown_rooms_are_404(client: httpx.AsyncClient) -> None:
    await make(client)
    await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})
    await client.post(f"{ROOMS}/lobby/invitations", json={"user": "carol"})
    room = (await client.get(f"{ROOMS}/lobby")).json()
    assert (room["member_count"], room["invited_count"]) == (2, 1)
    for method in ("GET", "PATCH", "DELETE"):
        response = await client.request(
            method, f"{ROOMS}/nope", json={} if method == "PATCH" else None
        )
        assert response.status_code == 404, method
        assert response.json() == {"detail": f"no such room: nope@{CONF}", "code": "room_not_found"}


async def test_update_changes_options(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await make(client, topic="old")
    response = await client.patch(f"{ROOMS}/lobby", json={"private": True})
    assert (response.json()["private"], response.json()["topic"]) == (True, "old")
    response = await client.patch(f"{ROOMS}/lobby", json={"topic": None})
    assert (response.json()["private"], response.json()["topic"]) == (True, None)
    response = await client.patch(f"{ROOMS}/lobby", json={"topic": "new", "private": False})
    assert (response.json()["private"], response.json()["topic"]) == (False, "new")
    assert await pool.fetchval("SELECT topic FROM rooms") == "new"
    assert (await client.patch(f"{ROOMS}/lobby", json={"owner": "x"})).status_code == 422


async def test_destroy_notifies_members_as_hash_destroy_does(
    client: httpx.AsyncClient, pool: asyncpg.Pool, worker: ImcWorker
) -> None:
    for name in ("viaapi", "viaimc"):
        await make(client, name)
        await client.post(f"{ROOMS}/{name}/members", json={"user": "bob"})
        await client.post(f"{ROOMS}/{name}/invitations", json={"user": "carol"})
    await notices(pool)

    assert (await client.delete(f"{ROOMS}/viaapi")).status_code == 204
    by_api = await notices(pool)
    await command(pool, worker, "alice@example.test", "#destroy", "viaimc")
    by_imc = await notices(pool)
    assert [(to, body, source) for _, to, body, source in by_api] == [
        ("alice@example.test", text.DESTROYED, "imc"),
        ("bob@example.test", text.DESTROYED, "imc"),
    ]
    assert [n[1:] for n in by_api] == [n[1:] for n in by_imc]  # the invited carol: nothing
    assert {n[0] for n in by_api} == {f"sip:viaapi@{CONF}"}
    assert await pool.fetchval("SELECT count(*) FROM rooms") == 0
    assert await pool.fetchval("SELECT count(*) FROM room_members") == 0
    assert (await client.get(f"{ROOMS}/viaapi")).status_code == 404


async def test_add_invite_modify_remove_match_the_commands(
    client: httpx.AsyncClient, pool: asyncpg.Pool, worker: ImcWorker
) -> None:
    uri = f"sip:lobby@{CONF}"
    await make(client)

    response = await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})
    assert response.status_code == 201, response.text
    assert response.json()["address"] == "bob@example.test"
    assert (response.json()["role"], response.json()["state"]) == ("member", "active")
    joined = text.joined("bob@example.test")
    assert await notices(pool) == [
        (uri, "alice@example.test", joined, "imc"),
        (uri, "bob@example.test", joined, "imc"),
    ]

    response = await client.post(f"{ROOMS}/lobby/invitations", json={"user": "carol"})
    assert response.status_code == 201, response.text
    assert (response.json()["role"], response.json()["invited_by"]) == (
        "invited",
        "alice@example.test",
    )
    invitation = text.invitation("alice@example.test", "#")
    assert await notices(pool) == [(uri, "carol@example.test", invitation, "imc-invite")]
    # The invitee accepts with the command, as for an invitation sent by #invite.
    await command(pool, worker, "carol@example.test", "#accept", "lobby")
    assert (
        await pool.fetchval("SELECT role FROM room_members WHERE member = 'carol@example.test'")
        == "member"
    )
    await notices(pool)

    response = await client.patch(f"{ROOMS}/lobby/members/bob", json={"role": "admin"})
    assert response.status_code == 200, response.text
    assert response.json()["role"] == "admin"
    modified = text.modified("bob@example.test", "admin")
    assert sorted(n[1:3] for n in await notices(pool)) == [
        ("alice@example.test", modified),
        ("bob@example.test", modified),
        ("carol@example.test", modified),
    ]

    response = await client.delete(f"{ROOMS}/lobby/members/carol@example.test")
    assert response.status_code == 204
    left = text.left("carol@example.test")
    assert [n[1:3] for n in await notices(pool)] == [
        ("carol@example.test", text.REMOVED),
        ("alice@example.test", left),
        ("bob@example.test", left),
    ]

    members = (await client.get(f"{ROOMS}/lobby/members")).json()
    assert members["count"] == 2
    assert [(m["address"], m["role"]) for m in members["data"]] == [
        ("alice@example.test", "owner"),
        ("bob@example.test", "admin"),
    ]


async def test_invite_on_behalf_of_an_admin(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await make(client)
    await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})
    refused = await client.post(
        f"{ROOMS}/lobby/invitations", json={"user": "carol", "inviter": "bob"}
    )
    assert refused.status_code == 422
    assert refused.json()["code"] == "invalid_room"
    await client.patch(f"{ROOMS}/lobby/members/bob", json={"role": "admin"})
    await notices(pool)
    response = await client.post(
        f"{ROOMS}/lobby/invitations", json={"user": "carol", "inviter": "bob"}
    )
    assert response.json()["invited_by"] == "bob@example.test"
    assert [n[2] for n in await notices(pool)] == [text.invitation("bob@example.test", "#")]


async def test_member_rules(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    await make(client)
    await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})
    await client.post(f"{ROOMS}/lobby/invitations", json={"user": "carol"})
    await notices(pool)

    for path, user in (
        ("members", "bob"),
        ("invitations", "BOB@example.test"),
        ("members", "carol"),
    ):
        response = await client.post(f"{ROOMS}/lobby/{path}", json={"user": user})
        assert response.status_code == 409, (path, user)
        assert response.json()["code"] == "member_exists"
    await pool.execute(
        """INSERT INTO room_members (room_id, member, role, state)
           SELECT id, 'dave@example.test', 'member', 'banned' FROM rooms"""
    )
    banned = await client.post(f"{ROOMS}/lobby/members", json={"user": "dave"})
    assert (banned.status_code, banned.json()["code"]) == (409, "member_exists")

    last_owner = await client.patch(f"{ROOMS}/lobby/members/alice", json={"role": "member"})
    assert (last_owner.status_code, last_owner.json()["code"]) == (409, "owner_required")
    owner = await client.delete(f"{ROOMS}/lobby/members/alice")
    assert (owner.status_code, owner.json()["code"]) == (409, "owner_required")
    missing = await client.delete(f"{ROOMS}/lobby/members/zoe")
    assert (missing.status_code, missing.json()["code"]) == (404, "member_not_found")
    bad_role = await client.patch(f"{ROOMS}/lobby/members/bob", json={"role": "invited"})
    assert bad_role.status_code == 422
    assert (await client.post(f"{ROOMS}/nope/members", json={"user": "bob"})).status_code == 404
    assert await notices(pool) == []  # nothing refused was announced

    # Two owners: one of them may step down.
    await client.patch(f"{ROOMS}/lobby/members/bob", json={"role": "owner"})
    assert (
        await client.patch(f"{ROOMS}/lobby/members/alice", json={"role": "member"})
    ).status_code == 200


async def test_a_full_room_takes_no_newcomer(client: httpx.AsyncClient, pool: asyncpg.Pool) -> None:
    """The member limit holds for the API as for ``#add``/``#invite``: invited users do not
    count, and a refused newcomer is neither stored nor announced."""
    await make(client, member_limit=2)
    await client.post(f"{ROOMS}/lobby/invitations", json={"user": "carol"})
    assert (await client.post(f"{ROOMS}/lobby/members", json={"user": "bob"})).status_code == 201
    await notices(pool)

    for path, user in (("members", "dave"), ("invitations", "erin")):
        response = await client.post(f"{ROOMS}/lobby/{path}", json={"user": user})
        assert (response.status_code, response.json()["code"]) == (409, "room_full"), path
        assert (
            "lobby@conference.example.test is full (2 members at most)"
            in (response.json()["detail"])
        )
    members = await client.get(f"{ROOMS}/lobby/members")
    assert sorted(m["address"] for m in members.json()["data"]) == [
        "alice@example.test",
        "bob@example.test",
        "carol@example.test",
    ]
    assert await notices(pool) == []

    # Raising the limit lets the next one in.
    await client.patch(f"{ROOMS}/lobby", json={"member_limit": 3})
    assert (await client.post(f"{ROOMS}/lobby/members", json={"user": "dave"})).status_code == 201


async def test_reading_needs_a_token_and_changing_an_admin_one(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as anonymous:
        assert (await anonymous.get(ROOMS)).status_code == 401
    token = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=token) as reader:
        assert (await reader.get(ROOMS)).status_code == 200
        refused = await reader.post(ROOMS, json={"name": "lobby", "owner": "alice"})
        assert (refused.status_code, refused.json()["code"]) == (403, "insufficient_scope")
    assert await pool.fetchval("SELECT count(*) FROM rooms") == 0
