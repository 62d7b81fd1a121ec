"""PostgreSQL restarts under load: nothing is answered 202 while it is down, every service
reconnects by itself within 10 s, nothing answered 2xx/202 is lost."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.stack.load import Peer, create_room, create_users, send_message
from tests.stack.scenario import Scenario, record
from tests.stack.topology import SERVICES, Stack

OUTAGE = 2.0  # seconds PostgreSQL stays down
RECOVERY_LIMIT = 10.0  # seconds every service may take to work again


async def test_postgres_restart_under_load(stack: Stack, audit_report: dict[str, object]) -> None:
    scenario = Scenario(stack, duration=6.0, fault_at=1.5)
    await scenario.prepare()
    # Probes, one per service, each retried until it works after PostgreSQL is back.
    names = [scenario.name(n) for n in ("psend", "poff", "pmember")]
    await create_users(stack, names)
    sender, offline, member = [await Peer(stack, n).start() for n in names]
    room = await create_room(stack, scenario.name("proom"), sender.aor, [member.aor])
    await sender.register()
    await member.register()
    window: dict[str, float] = {}

    async def restart_postgres() -> dict[str, object]:
        await stack.stop_postgres("fast")
        window["down"] = time.monotonic()
        await asyncio.sleep(OUTAGE)
        window["up"] = time.monotonic()
        await stack.start_postgres()
        up = time.monotonic()
        recovered = await asyncio.gather(
            api_ready(stack, up),
            relay_stores(sender, offline, up),
            imc_fans_out(sender, member, room, up),
        )
        msilo = await msilo_delivers(offline, up)
        return {
            "recovery_seconds": {
                "api": recovered[0],
                "relay": recovered[1],
                "imc": recovered[2],
                "msilo": msilo,
            }
        }

    try:
        audit, facts = await scenario.run(restart_postgres)
    finally:
        for peer in (sender, offline, member):
            await peer.close()
        await scenario.close()
    assert scenario.load is not None
    during = [
        s
        for s in scenario.load.sent
        if s.sent_at >= window["down"]
        and s.answered_at is not None
        and s.answered_at <= window["up"]
    ]
    outage_statuses: dict[str, int] = {}
    for s in during:
        outage_statuses[str(s.status)] = outage_statuses.get(str(s.status), 0) + 1
    facts["outage_statuses"] = outage_statuses
    record(audit_report, "postgres-restart", audit, facts)
    assert during, "no request was answered while PostgreSQL was down"
    # A 202 means "stored": impossible without the database. Direct deliveries (200) may
    # still go through on cached credentials and bindings.
    assert all(s.status != 202 for s in during), outage_statuses
    assert any(s.status in (500, 503) for s in during), outage_statuses
    recovery = facts["recovery_seconds"]
    assert isinstance(recovery, dict)
    assert all(seconds <= RECOVERY_LIMIT for seconds in recovery.values()), recovery
    assert audit.lost == 0, audit.lost_units
    # Deliveries cut off by the outage resume at once (not after the relay's 120 s lease).
    assert audit.stored == 0, audit.stored_rows
    assert audit.duplicated == 0
    assert audit.out_of_order == 0
    for name in SERVICES:
        assert stack.running[name].process.poll() is None, f"{name} died"


async def api_ready(stack: Stack, since: float) -> float:
    async with httpx.AsyncClient(base_url=stack.api_url, timeout=2) as client:
        while True:
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return round(time.monotonic() - since, 2)
            except httpx.HTTPError:
                pass
            await wait_or_give_up(since, "api")


async def relay_stores(sender: Peer, offline: Peer, since: float) -> float:
    """A MESSAGE to an unregistered user is stored (202) again."""
    n = 0
    while True:
        n += 1
        answer = await send_message(sender.ua, f"sip:{offline.aor}", f"probe store {n}".encode())
        if answer is not None and answer.status == 202:
            return round(time.monotonic() - since, 2)
        await wait_or_give_up(since, "relay")


async def imc_fans_out(sender: Peer, member: Peer, room: str, since: float) -> float:
    """A room message reaches the other member again."""
    n = 0
    while True:
        n += 1
        text = f"probe room {n}"
        answer = await send_message(sender.ua, room, text.encode())
        if answer is not None and answer.status == 202:
            async with asyncio.timeout(RECOVERY_LIMIT + 5):
                while not any(b.endswith(text.encode()) for b in member.bodies()):
                    member.arrived.clear()
                    await member.arrived.wait()
            return round(time.monotonic() - since, 2)
        await wait_or_give_up(since, "imc")


async def msilo_delivers(offline: Peer, since: float) -> float:
    """The user the relay stored messages for registers: msilo delivers them."""
    await offline.register()
    async with asyncio.timeout(RECOVERY_LIMIT + 5):
        while not any(b"probe store" in b for b in offline.bodies()):
            offline.arrived.clear()
            await offline.arrived.wait()
    return round(time.monotonic() - since, 2)


async def wait_or_give_up(since: float, what: str) -> None:
    assert time.monotonic() - since < RECOVERY_LIMIT + 10, f"{what}: no recovery"
    await asyncio.sleep(0.1)
