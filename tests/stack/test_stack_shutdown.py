"""Graceful shutdown: SIGTERM drains what is in flight (SIP transactions, an MSRP chunk half
received) within IMSTACK_SHUTDOWN_TIMEOUT and exits 0; a rolling restart of every service
under load loses nothing."""

from __future__ import annotations

import asyncio
import os

from shared.msrp import (
    RequestHead,
    new_message_id,
    new_transaction_id,
    parse_uri,
    serialize_message,
)
from tests.relay_msrp.msrp_client import MsrpTestClient, Received
from tests.stack.load import create_users
from tests.stack.scenario import Scenario, record
from tests.stack.topology import SERVICES, Stack

ABORTED = ("aborted after", "shutdown timeout", "still in flight")


async def msrp_pair(stack: Stack, tag: str) -> tuple[MsrpTestClient, MsrpTestClient]:
    await create_users(stack, [f"{tag}m1", f"{tag}m2"], password="msrp-secret-1")
    host, port = stack.msrp
    relay = parse_uri(f"msrp://{host}:{port};tcp")
    clients = []
    for name in (f"{tag}m1", f"{tag}m2"):
        client = await MsrpTestClient.connect(host, port, name=name)
        assert (await client.auth(relay, name, "msrp-secret-1")).head.status == 200  # type: ignore[union-attr]
        clients.append(client)
    return clients[0], clients[1]


async def test_rolling_restart_under_load_drains_and_loses_nothing(
    stack: Stack, audit_report: dict[str, object]
) -> None:
    scenario = Scenario(stack, duration=3.0, fault_at=1.0)
    await scenario.prepare()
    sender, receiver = await msrp_pair(stack, scenario.tag)
    limit = float(stack.specs["relay"].setting("shutdown_timeout"))
    body = os.urandom(512 * 1024)
    msrp_outcome: dict[str, object] = {}

    async def relay_stop_with_a_chunk_in_flight() -> tuple[int | None, float]:
        # Half of a SEND is on the wire when SIGTERM arrives; the rest follows after it.
        tid = new_transaction_id()
        to_path = (*sender.use_path, *receiver.use_path, receiver.uri)
        head = RequestHead(
            tid,
            "SEND",
            to_path,
            (sender.uri,),
            (
                ("Message-ID", new_message_id()),
                ("Byte-Range", f"1-{len(body)}/{len(body)}"),
                ("Content-Type", "application/octet-stream"),
            ),
            has_body=True,
        )
        data = serialize_message(head, body)
        answered: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
        sender.responses[tid] = answered
        sender.write(data[: len(data) // 2])
        await sender.writer.drain()
        stopping = asyncio.create_task(stack.terminate("relay"))
        await asyncio.sleep(0.3)
        sender.write(data[len(data) // 2 :])
        await sender.writer.drain()
        response = await asyncio.wait_for(answered, limit)
        got = bytearray()
        while len(got) < len(body):
            got += (await receiver.next_request(timeout=limit)).body
        msrp_outcome.update(status=response.head.status, intact=bytes(got) == body)  # type: ignore[union-attr]
        return await stopping

    async def rolling() -> dict[str, object]:
        stops: dict[str, object] = {}
        for name in SERVICES:
            if name == "relay":
                code, seconds = await relay_stop_with_a_chunk_in_flight()
            else:
                code, seconds = await stack.terminate(name)
            text = stack.log_text(name)
            stops[name] = {
                "exit": code,
                "stop_seconds": round(seconds, 2),
                "aborted": any(marker in text for marker in ABORTED),
            }
            await stack.start(name)
        return {"stops": stops}

    try:
        audit, facts = await scenario.run(rolling)
    finally:
        await sender.close()
        await receiver.close()
        await scenario.close()
    facts["msrp"] = msrp_outcome
    record(audit_report, "rolling-sigterm", audit, facts)
    stops = facts["stops"]
    assert isinstance(stops, dict)
    for name, stop in stops.items():
        assert stop["exit"] == 0, (name, stop)
        assert stop["stop_seconds"] < limit, (name, stop)
        assert not stop["aborted"], (name, stop)
    assert msrp_outcome == {"status": 200, "intact": True}
    assert audit.acknowledged > 20, audit
    assert audit.lost == 0, audit.lost_units
    assert audit.duplicated == 0
    assert audit.out_of_order == 0
    assert audit.stored == 0, audit.stored_rows
