"""A slow MSRP consumer: the receiver stops reading mid-message. The relay holds a bounded
amount (its memory stays flat), the sender is back-pressured, another session through the
same relay is unaffected, and once the receiver reads again the whole message arrives."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import cast

from shared.msrp import RequestHead, new_message_id, new_transaction_id, serialize_message
from tests.relay_msrp.msrp_client import Received
from tests.stack.test_stack_shutdown import msrp_pair
from tests.stack.topology import Stack

TOTAL = 64 * 1024 * 1024  # bytes of the one big message
PIECE = b"slow consumer " * 4681  # ~64 KiB written at a time
RSS_BOUND = 48 * 1024 * 1024  # what the relay may grow by while it is stalled


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_slow_receiver_back_pressures_the_sender_only(
    stack: Stack, audit_report: dict[str, object]
) -> None:
    sender, slow = await msrp_pair(stack, "slow")
    other, fast = await msrp_pair(stack, "fast")
    relay_pid = stack.running["relay"].process.pid
    before = rss(relay_pid)
    transport = cast(asyncio.ReadTransport, slow.writer.transport)
    transport.pause_reading()  # the receiver stops reading from its socket

    tid = new_transaction_id()
    head = RequestHead(
        tid,
        "SEND",
        (*sender.use_path, *slow.use_path, slow.uri),
        (sender.uri,),
        (
            ("Message-ID", new_message_id()),
            ("Byte-Range", f"1-{TOTAL}/{TOTAL}"),
            ("Content-Type", "application/octet-stream"),
        ),
        has_body=True,
    )
    prefix, suffix = serialize_message(head, b"\0").split(b"\0")
    answered: asyncio.Future[Received] = asyncio.get_running_loop().create_future()
    sender.responses[tid] = answered
    written = 0

    async def push() -> None:
        nonlocal written
        sender.write(prefix)
        while written < TOTAL:
            piece = PIECE[: TOTAL - written]
            sender.write(piece)
            await sender.writer.drain()
            written += len(piece)
        sender.write(suffix)
        await sender.writer.drain()

    pushing = asyncio.create_task(push())
    try:
        # The sender is held back: what it wrote stops growing, far short of the message.
        last, still_since = -1, time.monotonic()
        async with asyncio.timeout(30):
            while time.monotonic() - still_since < 1.0:
                if written != last:
                    last, still_since = written, time.monotonic()
                await asyncio.sleep(0.05)
        stalled_at = written
        grown = rss(relay_pid) - before
        assert stalled_at < TOTAL // 2, stalled_at
        assert grown < RSS_BOUND, grown

        # Another session through the same relay goes on as usual.
        for n in range(5):
            answer = await other.send_text(
                (*other.use_path, *fast.use_path, fast.uri), f"still fast {n}".encode()
            )
            assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
            assert bytes((await fast.next_request()).body) == f"still fast {n}".encode()
        assert written == stalled_at  # and the stalled one is still stalled

        # The receiver reads again: the whole message arrives.
        transport.resume_reading()
        await asyncio.wait_for(pushing, 60)
        got = 0
        async with asyncio.timeout(60):
            while got < TOTAL:
                chunk = await slow.next_request(timeout=30)
                got += len(chunk.body)
        assert got == TOTAL
        response = await asyncio.wait_for(answered, 30)
        assert response.head.status == 200  # type: ignore[union-attr]
    finally:
        pushing.cancel()
        for client in (sender, slow, other, fast):
            await client.close()
    facts = {
        "sender_stalled_after_bytes": stalled_at,
        "relay_rss_growth_bytes": grown,
        "message_bytes": TOTAL,
    }
    audit_report["slow-consumer"] = facts
    print(f"STACK-AUDIT slow-consumer {facts}")
