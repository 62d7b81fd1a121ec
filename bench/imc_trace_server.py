"""``imstack serve ...`` with timestamps along the room fan-out path (bench only).

    IMSTACK_BENCH_TRACE=/tmp/trace.json python bench/imc_trace_server.py serve relay imc msilo

Run by bench/imc_fanout.py ``--trace``; never by the test suite, never in production. Wraps
(monkeypatches) the functions a room MESSAGE passes through and records ``(event, wall
clock)`` pairs in memory; they are written to ``$IMSTACK_BENCH_TRACE`` as JSON when the
process exits (SIGTERM: ``imstack serve`` stops cleanly). Wall-clock (``time.time()``)
stamps, so the load generator's own stamps on the same machine line up with them.

Events: ``rx_message`` (a MESSAGE datagram arrives at the relay), ``handover_end`` (its
``room_inbox`` row is committed), ``imc_notify`` (imc woken on ``room_inbox``),
``imc_start``/``imc_end`` (imc's transaction for one room MESSAGE; ``imc_end`` after the
commit), ``claim_start``/``claim_end`` (the relay claims outbound rows; the row count),
``tx_message`` (the relay writes a MESSAGE datagram), ``rx_response`` (a response
datagram arrives), ``flush_start``/``flush_end`` (the relay writes outcomes; the count).
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EVENTS: list[tuple[str, float, int]] = []


def record(event: str, count: int = 0) -> None:
    EVENTS.append((event, time.time(), count))


def _dump() -> None:
    path = os.environ.get("IMSTACK_BENCH_TRACE")
    if path:
        Path(path).write_text(json.dumps(EVENTS))


def _around(
    owner: Any,
    name: str,
    before: str | None,
    after: str | None,
    count: Callable[[Any], int] | None = None,
) -> None:
    original: Callable[..., Awaitable[Any]] = getattr(owner, name)

    @functools.wraps(original)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        if before:
            record(before)
        result = await original(*args, **kwargs)
        if after and (count is None or count(result)):
            record(after, count(result) if count is not None else 0)
        return result

    setattr(owner, name, wrapper)


def install() -> None:
    from services.imc import worker
    from services.relay.sip import delivery, handover, transport

    udp = transport.UdpProtocol
    received = udp.datagram_received
    sent = udp.send

    def datagram_received(self: Any, data: bytes, addr: Any) -> None:
        if data.startswith(b"MESSAGE "):
            record("rx_message")
        elif data.startswith(b"SIP/2.0 "):
            record("rx_response")
        received(self, data, addr)

    def send(self: Any, data: bytes, host: str, port: int) -> bool:
        if data.startswith(b"MESSAGE "):
            record("tx_message")
        return sent(self, data, host, port)

    udp.datagram_received = datagram_received  # type: ignore[method-assign]
    udp.send = send  # type: ignore[method-assign]
    _around(handover, "deliver_to_room", None, "handover_end")

    on_notify = worker.ImcWorker._on_notify

    def imc_notify(self: Any, notification: Any) -> None:
        if notification.channel == worker.INBOX_CHANNEL:
            record("imc_notify")
        on_notify(self, notification)

    worker.ImcWorker._on_notify = imc_notify  # type: ignore[method-assign]
    _around(worker.ImcWorker, "handle_next", "imc_start", "imc_end", lambda handled: int(handled))
    _around(delivery.DeliveryWorker, "_claim", "claim_start", "claim_end", lambda n: n)
    _around(delivery.OutcomeWriter, "flush", "flush_start", "flush_end")


def main() -> None:
    install()
    atexit.register(_dump)
    from shared.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
