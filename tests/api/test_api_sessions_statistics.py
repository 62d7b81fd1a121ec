"""``/api/v1/msrp/sessions``, ``/api/v1/statistics`` and the statistics in ``/metrics``, with
the real relay service (SIP + MSRP, its publishers) in this process and the real database."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.imc.service import run as run_imc
from services.msilo.service import run as run_msilo
from services.relay.msrp.session_publisher import SessionPublisher
from services.relay.msrp.sessions import SessionTable
from services.relay.service import run as run_relay
from shared.config import Settings
from shared.db import rooms
from shared.db.tokens import Scope
from shared.db.users import Address, create_user
from shared.lifecycle import ServiceContext
from shared.msrp import parse_uri
from shared.stats import StatsPublisher, relay_instance
from tests.api.api_client import client_for, new_token
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_sip.sip_ua import SipUA
from tests.test_serve import free_port

SESSIONS = "/api/v1/msrp/sessions"
STATISTICS = "/api/v1/statistics"
INTERVAL = 0.2  # IMSTACK_STATS_INTERVAL for these tests
INSERT_SESSION = """
    INSERT INTO msrp_sessions (session_id, relay_instance, aor, peer, transport, use_path,
                               client_uri, created_at, expires_at)
    VALUES ($1, $2, 'carol@example.test', '192.0.2.1:5000', 'tcp', 'msrp://x:1/s;tcp',
            'msrp://192.0.2.1:5000/c;tcp', $3, $4)
"""


@dataclass
class Relay:
    settings: Settings
    port: int  # SIP and MSRP share it

    @property
    def instance(self) -> str:
        return relay_instance(self.port)

    async def msrp(self, name: str, password: str) -> MsrpTestClient:
        client = await MsrpTestClient.connect("127.0.0.1", self.port, name=name)
        answer = await client.auth(parse_uri(f"msrp://127.0.0.1:{self.port};tcp"), name, password)
        assert answer.head.status == 200  # type: ignore[union-attr]
        return client


async def eventually(check: Callable[[], Awaitable[Any]], what: str) -> Any:
    """Poll ``check()`` until it returns something truthy (the services publish
    asynchronously); fail after 10 s."""
    async with asyncio.timeout(10):
        while not (result := await check()):  # noqa: ASYNC110 - published through the database
            await asyncio.sleep(0.05)
    return result


@pytest.fixture
async def relay(settings: Settings, pool: asyncpg.Pool, database_url: str) -> AsyncIterator[Relay]:
    for name in ("alice", "bob"):
        await create_user(pool, Address(name, settings.domain), f"{name}-pw")
    port = free_port()
    configured = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": free_port(),
            "msrp_host": "127.0.0.1",
            "msrp_port": port,
            "msrp_public_host": "127.0.0.1",
            "msrp_allow_insecure_auth": True,
            "stats_interval": INTERVAL,
            "shutdown_timeout": 3.0,
        }
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_relay(ServiceContext(configured, database_url, pool, stop)))

    async def published() -> bool:
        if task.done():
            task.result()
        rows = await pool.fetchval(
            "SELECT count(*) FROM service_stats WHERE service = 'relay' AND instance = $1",
            relay_instance(port),
        )
        return bool(rows)

    await eventually(published, "the relay's first statistics")
    try:
        yield Relay(configured, port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


@pytest.fixture
async def client(settings: Settings, pool: asyncpg.Pool) -> AsyncIterator[httpx.AsyncClient]:
    token = await new_token(pool, "reader", Scope.READ)  # reading needs no admin token
    async with client_for(settings, pool, token=token) as http:
        yield http


async def test_an_msrp_session_is_listed_with_its_user_and_peer_counts_bytes_and_goes_away(
    relay: Relay, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    alice = await relay.msrp("alice", "alice-pw")
    bob = await relay.msrp("bob", "bob-pw")
    alice_sid = alice.use_path[0].session_id

    async def alice_sessions() -> list[dict[str, Any]]:
        response = await client.get(SESSIONS, params={"user": "alice"})
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    (session,) = await eventually(alice_sessions, "alice's session in the API")
    local = alice.writer.get_extra_info("sockname")
    assert session["session_id"] == alice_sid
    assert session["user"] == "alice@example.test"
    assert session["peer"] == f"127.0.0.1:{local[1]}"
    assert session["transport"] == "tcp"
    assert session["relay_instance"] == relay.instance
    assert session["use_path"] == str(alice.use_path[0])
    assert 3500 < session["expires"] <= 3600
    before = session["bytes_in"]

    async def both() -> dict[str, Any] | None:
        listed: dict[str, Any] = (await client.get(SESSIONS)).json()
        return listed if listed["count"] == 2 else None

    everyone = await eventually(both, "bob's session in the API too")
    assert {s["user"] for s in everyone["data"]} == {"alice@example.test", "bob@example.test"}
    page = (await client.get(SESSIONS, params={"limit": 1, "offset": 1})).json()
    assert (page["count"], len(page["data"]), page["limit"], page["offset"]) == (2, 1, 1, 1)
    assert (await client.get(SESSIONS, params={"user": "carol"})).json()["count"] == 0

    body = b"x" * 5000
    sent = await alice.send_text((*alice.use_path, *bob.use_path, bob.uri), body)
    assert sent is not None and sent.head.status == 200  # type: ignore[union-attr]
    assert bytes((await bob.next_request()).body) == body

    async def grown() -> bool:
        (now,) = await alice_sessions()
        return bool(now["bytes_in"] >= before + len(body))

    await eventually(grown, "alice's session's bytes growing")

    async def relayed() -> dict[str, Any] | None:
        stats: dict[str, Any] = (await client.get(STATISTICS)).json()["msrp"]
        return stats if stats["bytes_relayed"] >= len(body) else None

    msrp = await eventually(relayed, "the relay's published byte count")
    assert (msrp["sessions"], msrp["connections_open"]) == (2, 2)
    assert msrp["auth_ok"] >= 2 and msrp["requests_relayed"] >= 1

    await alice.close()

    async def gone() -> bool:
        return not await alice_sessions()

    await eventually(gone, "alice's session leaving the API after her connection closed")
    assert (await client.get(SESSIONS)).json()["count"] == 1
    await bob.close()


async def test_a_relay_restart_drops_its_previous_rows_and_dead_relays_are_not_listed(
    relay: Relay, client: httpx.AsyncClient, pool: asyncpg.Pool
) -> None:
    now = datetime.now(UTC)
    # A relay that stopped publishing long ago (its statistics row is stale).
    await pool.execute(
        "INSERT INTO service_stats (service, instance, started_at, updated_at, stale_at) "
        "VALUES ('relay', 'dead:1', $1, $1, $1)",
        now - timedelta(minutes=5),
    )
    await pool.execute(INSERT_SESSION, "dead-session", "dead:1", now, now + timedelta(hours=1))
    assert (await client.get(SESSIONS)).json()["count"] == 0
    instances = {
        (i["service"], i["instance"]) for i in (await client.get(STATISTICS)).json()["services"]
    }
    assert ("relay", relay.instance) in instances and ("relay", "dead:1") not in instances


async def test_a_relay_drops_its_previous_runs_rows_when_it_starts_and_its_own_when_it_stops(
    pool: asyncpg.Pool,
) -> None:
    now = datetime.now(UTC)
    await pool.execute(INSERT_SESSION, "left-over", "host:5060", now, now + timedelta(hours=1))
    await pool.execute(INSERT_SESSION, "other-relay", "host:5070", now, now + timedelta(hours=1))
    publisher = SessionPublisher(SessionTable(), pool, "host:5060", interval=INTERVAL)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))
    await publisher.written.wait()
    remaining = await pool.fetch("SELECT session_id FROM msrp_sessions ORDER BY 1")
    assert [r["session_id"] for r in remaining] == ["other-relay"]
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_rows_of_long_dead_instances_are_garbage_collected(pool: asyncpg.Pool) -> None:
    long_ago = datetime.now(UTC) - timedelta(hours=3)
    for instance in ("dead:1", "recent:1"):
        stale = long_ago if instance == "dead:1" else datetime.now(UTC) - timedelta(minutes=1)
        await pool.execute(
            "INSERT INTO service_stats (service, instance, started_at, updated_at, stale_at) "
            "VALUES ('relay', $1, $2, $2, $2)",
            instance,
            stale,
        )
    await pool.execute(INSERT_SESSION, "dead-session", "dead:1", long_ago, long_ago)
    await pool.execute(INSERT_SESSION, "recent-session", "recent:1", long_ago, long_ago)
    await pool.execute("UPDATE msrp_sessions SET updated_at = $1", long_ago)
    assert await StatsPublisher(pool, "imc", interval=INTERVAL).publish()
    rows = await pool.fetch("SELECT service, instance FROM service_stats ORDER BY 1, 2")
    # The long-dead relay's row is gone; the recently dead one stays (but is not shown).
    assert [r["service"] for r in rows] == ["imc", "relay"]
    assert rows[1]["instance"] == "recent:1"

    publisher = SessionPublisher(SessionTable(), pool, "host:1", interval=INTERVAL)
    stop = asyncio.Event()
    task = asyncio.create_task(publisher.run(stop))

    async def collected() -> bool:
        left = await pool.fetch("SELECT session_id FROM msrp_sessions")
        return [r["session_id"] for r in left] == ["recent-session"]

    await eventually(collected, "the dead relay's sessions deleted")
    stop.set()
    await asyncio.wait_for(task, 10)


async def test_statistics_count_a_stored_message_and_a_room_and_metrics_show_them(
    relay: Relay, settings: Settings, pool: asyncpg.Pool
) -> None:
    admin = await new_token(pool, "admin")
    async with client_for(settings, pool, token=admin) as http:
        before = (await http.get(STATISTICS)).json()
        assert before["messages"]["stored"] == 0 and before["rooms"]["rooms"] == 0

        # bob is offline: the relay stores alice's MESSAGE (202) and counts it.
        ua = SipUA("udp", ("127.0.0.1", relay.port), "alice", "alice-pw", settings.domain)
        await ua.start()
        try:
            assert (await ua.message(f"sip:bob@{settings.domain}", b"later")).status == 202
        finally:
            await ua.close()
        made = await http.post("/api/v1/rooms", json={"name": "lobby", "owner": "alice"})
        assert made.status_code == 201, made.text

        def stored_since_start(stats: dict[str, Any]) -> int:
            return int(stats["messages"]["stored_since_start"])

        async def counted() -> dict[str, Any] | None:
            stats: dict[str, Any] = (await http.get(STATISTICS)).json()
            return stats if stored_since_start(stats) > stored_since_start(before) else None

        after = await eventually(counted, "the relay's published stored-message count")
        assert stored_since_start(after) == stored_since_start(before) + 1
        assert (after["messages"]["stored"], after["messages"]["stored_recipients"]) == (1, 1)
        assert (after["rooms"]["rooms"], after["rooms"]["members"]) == (1, 1)
        assert after["users"] == 2
        sip = after["totals"]["relay"]["sip_requests"]
        assert sip["MESSAGE"] >= 2  # challenged, then authenticated
        relays = [s for s in after["services"] if s["service"] == "relay"]
        assert [s["instance"] for s in relays] == [relay.instance]

        text = (await http.get("/metrics")).text
    found = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert found[("imstack_stored_messages", ())] == 1
    assert found[("imstack_rooms", ())] == 1
    assert found[("imstack_room_members", ())] == 1
    assert found[("imstack_msrp_sessions", ())] == 0
    assert found[("imstack_messages_stored_total", ())] == stored_since_start(after)
    assert found[("imstack_service_instances", (("service", "relay"),))] == 1
    assert found[("imstack_sip_requests_total", (("method", "MESSAGE"),))] >= 2
    for family in ("imstack_registrations", "imstack_msrp_bytes_relayed_total"):
        assert (family, ()) in found
    assert "# TYPE imstack_api_request_duration_seconds histogram" in text


async def test_sessions_and_statistics_need_a_token_and_check_their_input(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    async with client_for(settings, pool) as anonymous:
        for path in (SESSIONS, STATISTICS):
            response = await anonymous.get(path)
            assert response.status_code == 401, path
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        wrong = await anonymous.get(SESSIONS, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    reader = await new_token(pool, "reader", Scope.READ)
    async with client_for(settings, pool, token=reader) as http:
        assert (await http.get(STATISTICS)).status_code == 200
        assert (await http.get(SESSIONS)).json() == {
            "data": [],
            "count": 0,
            "limit": 100,
            "offset": 0,
        }
        for params in ({"user": "a b@c"}, {"limit": 0}, {"offset": -1}, {"user": ""}):
            response = await http.get(SESSIONS, params=params)
            assert response.status_code == 422, params
            assert set(response.json()) >= {"detail", "code"}
        # Writes are refused to a read-only token elsewhere; these routes only read.
        assert (await http.post(SESSIONS)).status_code == 405


async def test_the_api_publishes_its_request_counts(pool: asyncpg.Pool, settings: Settings) -> None:
    publisher = StatsPublisher(pool, "api", interval=INTERVAL)
    before = publisher.collect()[0].get("requests", {})
    async with client_for(settings, pool) as anonymous:
        assert (await anonymous.get(STATISTICS)).status_code == 401
    assert await publisher.publish()
    row = await pool.fetchrow("SELECT counters FROM service_stats WHERE service = 'api'")
    assert row is not None
    published = json.loads(row["counters"])["requests"]
    assert isinstance(before, dict)
    assert published["401"] == before.get("401", 0) + 1


class Inbox:
    """A registered UA answering every MESSAGE with 200 and keeping each new body once
    (retransmissions of one it answered are answered again, not kept twice)."""

    def __init__(self, ua: SipUA) -> None:
        self.ua = ua
        self.seen: set[tuple[str, str]] = set()

    async def next_body(self) -> bytes:
        while True:
            request = await self.ua.next_request()
            self.ua.answer(request, 200)
            key = (request.get("Call-ID") or "", request.get("CSeq") or "")
            if request.method == "MESSAGE" and key not in self.seen:
                self.seen.add(key)
                return request.body


async def test_statistics_follow_delivery_fan_out_and_relaying_across_the_services(
    settings: Settings, pool: asyncpg.Pool, database_url: str
) -> None:
    """relay, msilo and imc run as the services they are; the API sees what they did only
    through the database."""
    for name in ("alice", "bob"):
        await create_user(pool, Address(name, settings.domain), f"{name}-pw")
    port = free_port()
    configured = settings.model_copy(
        update={
            "sip_host": "127.0.0.1",
            "sip_port": port,
            "sip_tls_port": free_port(),
            "msrp_host": "127.0.0.1",
            "msrp_port": free_port(),
            "stats_interval": INTERVAL,
            "shutdown_timeout": 3.0,
            "sip_rate_limit": 0,
            "imc_history": 0,
        }
    )
    relay_at = ("127.0.0.1", port)
    stop = asyncio.Event()
    ctx = ServiceContext(configured, database_url, pool, stop)
    tasks = [
        asyncio.create_task(run_relay(ctx)),
        asyncio.create_task(run_msilo(ctx)),
        asyncio.create_task(run_imc(ctx)),
    ]
    token = await new_token(pool, "reader", Scope.READ)
    uas: list[SipUA] = []
    try:
        async with client_for(settings, pool, token=token) as http:

            async def statistics() -> dict[str, Any]:
                for task in tasks:
                    if task.done():
                        task.result()
                stats: dict[str, Any] = (await http.get(STATISTICS)).json()
                return stats

            async def all_publishing() -> dict[str, Any] | None:
                stats = await statistics()
                services = {s["service"] for s in stats["services"]}
                return stats if {"relay", "msilo", "imc"} <= services else None

            before = await eventually(all_publishing, "relay, msilo and imc publishing")
            alice = await SipUA("udp", relay_at, "alice", "alice-pw", "example.test").start()
            bob = await SipUA("udp", relay_at, "bob", "bob-pw", "example.test").start()
            uas += [alice, bob]
            room_id = await rooms.create_room(
                pool, "lobby@conference.example.test", owner="alice@example.test", private=False
            )
            await rooms.add_member(pool, room_id, "bob@example.test", rooms.Role.MEMBER)

            # Stored for offline bob, delivered by msilo when he registers.
            assert (await alice.message("sip:bob@example.test", b"later")).status == 202
            assert (await bob.register()).status == 200
            inbox = Inbox(bob)
            assert (await inbox.next_body()).endswith(b"] later")  # "[Offline message ...]"

            async def drained() -> bool:
                count = await pool.fetchval("SELECT count(*) FROM offline_messages")
                return count == 0

            # (Until msilo has deleted it, a new MESSAGE would be stored behind it.)
            await eventually(drained, "the stored message deleted")
            # Relayed to registered bob; fanned out to him by the room.
            sending = asyncio.create_task(alice.message("sip:bob@example.test", b"now"))
            assert await inbox.next_body() == b"now"
            assert (await sending).status == 200
            room = "sip:lobby@conference.example.test"
            assert (await alice.message(room, b"hello room")).status == 202
            assert await inbox.next_body() == b"[alice]: hello room"

            def grew(after: dict[str, Any], section: str, key: str) -> int:
                return int(after[section][key]) - int(before[section][key])

            # Each service publishes its own counts on its own schedule: wait for every one
            # of them (the relay's "relayed" may be published before its "to_rooms" is).
            expected = [
                ("messages", "delivered"),
                ("messages", "stored_since_start"),
                ("messages", "relayed"),
                ("messages", "to_rooms"),
                ("rooms", "fanned_out"),
                ("rooms", "handled"),
            ]

            async def caught_up() -> dict[str, Any] | None:
                after = await statistics()
                return after if all(grew(after, *counter) for counter in expected) else None

            after = await eventually(caught_up, "the services' published counts")
            assert grew(after, "messages", "delivered") == 1
            assert grew(after, "messages", "stored_since_start") == 1
            assert grew(after, "messages", "relayed") == 1
            assert grew(after, "messages", "to_rooms") == 1
            assert grew(after, "rooms", "fanned_out") == 1
            assert grew(after, "rooms", "handled") == 1
            assert after["rooms"]["commands"].get("chat", 0) == 1 + before["rooms"]["commands"].get(
                "chat", 0
            )
            assert after["messages"]["stored"] == 0  # delivered, so deleted
            assert (after["registrations"]["bindings"], after["registrations"]["users"]) == (1, 1)
            assert (after["rooms"]["rooms"], after["rooms"]["members"]) == (1, 2)
    finally:
        for ua in uas:
            await ua.close()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
