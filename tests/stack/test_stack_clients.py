"""A client that disappears without de-registering: deliveries to it fail over to the offline
store, and it gets them, once and in order, when it registers again."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.stack.load import Peer, create_users, send_message
from tests.stack.topology import Stack


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_vanished_client_gets_its_messages_from_the_store(
    stack: Stack, audit_report: dict[str, object], transport: str
) -> None:
    sender_name, gone_name = f"van{transport}s", f"van{transport}r"
    await create_users(stack, [sender_name, gone_name])
    sender = await Peer(stack, sender_name).start()
    gone = await Peer(stack, gone_name, transport=transport).start()
    await sender.register()
    await gone.register()
    to = f"sip:{gone.aor}"
    try:
        first = await send_message(sender.ua, to, b"before 0")
        assert first is not None and first.status == 200
        # The client vanishes: its socket closes, no REGISTER with Expires: 0.
        await gone.close()
        began = time.monotonic()
        answers = await asyncio.gather(
            *(send_message(sender.ua, to, f"after {n}".encode(), timeout=60) for n in range(3))
        )
        seconds = round(time.monotonic() - began, 2)
        statuses = [a.status if a is not None else None for a in answers]
        assert statuses == [202, 202, 202], statuses
        back = await Peer(stack, gone_name, transport=transport).start()
        try:
            await back.register()
            async with asyncio.timeout(20):
                while len(back.arrivals) < 3:
                    back.arrived.clear()
                    await back.arrived.wait()
            await asyncio.sleep(0.5)  # a duplicate would follow at once
            texts = sorted(b.split(b"] ", 1)[-1] for b in back.bodies())
            assert texts == [b"after 0", b"after 1", b"after 2"], back.bodies()
        finally:
            await back.close()
    finally:
        await sender.close()
    audit_report[f"vanished-{transport}"] = {"stored_after_seconds": seconds}
    print(f"STACK-AUDIT vanished-{transport} stored after {seconds}s")
