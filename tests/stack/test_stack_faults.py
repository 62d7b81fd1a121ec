"""Faults under a steady message load: every message answered 2xx/202 arrives (once) or is
still stored when the dust settles."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import pytest

from tests.stack.load import api
from tests.stack.scenario import Scenario, record
from tests.stack.topology import SERVICES, Stack


async def poll_api(stack: Stack, stop: asyncio.Event, seen: dict[str, int]) -> None:
    """Read through the API every 50 ms while the load runs; count the outcomes."""
    async with api(stack) as client:
        while not stop.is_set():
            try:
                answer = await client.get("/users", params={"limit": 1}, timeout=2)
                key = str(answer.status_code)
            except httpx.HTTPError:
                key = "unreachable"
            seen[key] = seen.get(key, 0) + 1
            await asyncio.sleep(0.05)


#: What shows that a service is in the middle of its work (rows it holds).
WORKING = {
    "relay": "SELECT count(*) FROM outbound_messages WHERE status = 'sending'",
    "msilo": "SELECT count(*) FROM offline_messages WHERE state = 'sending'",
    "imc": "SELECT count(*) FROM room_inbox",
}


async def caught_working(stack: Stack, service: str, limit: float = 3.0) -> bool:
    """Wait (at most ``limit`` s) until ``service`` holds work in flight; whether it did."""
    query = WORKING.get(service)
    if query is None:
        return False
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if await conn.fetchval(query):
                return True
            await asyncio.sleep(0.005)
        return False
    finally:
        await conn.close()


@pytest.mark.parametrize("service", SERVICES)
async def test_sigkill_and_restart_loses_nothing(
    stack: Stack, audit_report: dict[str, object], service: str
) -> None:
    scenario = Scenario(stack)
    await scenario.prepare()

    async def kill_and_restart() -> dict[str, object]:
        # off1 just registered: msilo is delivering its messages. Kill in the middle of work.
        busy = await caught_working(stack, service)
        began = time.monotonic()
        code = stack.kill(service)
        await stack.start(service)
        return {
            "exit": code,
            "killed_while_working": busy,
            "recovery_seconds": round(time.monotonic() - began, 2),
        }

    stop = asyncio.Event()
    api_outcomes: dict[str, int] = {}
    polling = asyncio.create_task(poll_api(stack, stop, api_outcomes))
    try:
        audit, facts = await scenario.run(kill_and_restart)
    finally:
        stop.set()
        await polling
        await scenario.close()
    facts["api"] = api_outcomes
    # Deliveries the relay sent more than once (a restarted relay sends again at once what
    # its killed run left 'sending', not after the 120 s lease: at least once, the
    # documented crash window; a message the UA had answered before the kill arrives twice).
    conn = await asyncpg.connect(stack.database_url)
    try:
        resent = await conn.fetchval("SELECT count(*) FROM outbound_messages WHERE attempts > 1")
    finally:
        await conn.close()
    facts["resent"] = resent
    record(audit_report, f"sigkill-{service}", audit, facts)
    assert audit.acknowledged > 20, audit
    assert audit.lost == 0, audit.lost_units
    assert audit.out_of_order == 0
    if service != "relay":
        # Everything owed arrived once the service was back.
        assert audit.stored == 0, audit.stored_rows
        assert audit.duplicated == 0
    # A relay killed while sending: the restarted relay (same relay_instance) sends again
    # at once what the killed run left 'sending' (at least once, the documented crash
    # window): a message the UA had answered before the kill may arrive twice (counted in
    # duplicated; "resent" counts deliveries with more than one attempt).
    assert api_outcomes.get("200", 0) > 0
    assert not [k for k in api_outcomes if k.startswith("5")], api_outcomes
    for name in SERVICES:
        assert stack.running[name].process.poll() is None, f"{name} died"
