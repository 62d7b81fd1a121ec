"""The relay's SIP send path in-process: CPU per relay-generated MESSAGE, answered 200.

    python bench/sip_send.py                     # 20000 deliveries over UDP, 5 rounds
    python bench/sip_send.py --transport tcp --count 50000 --rounds 3

Runs exactly what a room fan-out delivery runs in the relay after the row is claimed:
``build_request`` (services/relay/sip/delivery.py), ``Fork.run`` to one target
(services/relay/sip/proxy.py), the client transaction (services/relay/sip/transactions.py
over shared/sip/transaction.py) and serialisation; the "UA" answers each request at once
with a 200 OK made by slicing the request's lines (cheap, the same in every version), which
the relay parses and matches as if it had arrived. No sockets and no database: the numbers
are ``time.process_time()`` per delivery, best and median of ``--rounds``, so runs of two
versions on a busy machine compare (run them interleaved). Timers still pending at the end
(Timer K over UDP) are cancelled, not run.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.relay.sip.delivery import build_request  # noqa: E402
from services.relay.sip.edge import SipEdge  # noqa: E402
from services.relay.sip.proxy import Fork, Target  # noqa: E402
from services.relay.sip.transactions import TransactionLayer  # noqa: E402
from services.relay.sip.transport import Flow  # noqa: E402
from shared.db.outbound import OutboundMessage, OutboundStatus  # noqa: E402
from shared.sip.parser import parse_datagram  # noqa: E402

ANSWERED = (b"via", b"from", b"call-id", b"cseq")


class _Edge:
    """What Fork and build_request use of SipEdge: its own via/new_branch code."""

    via = SipEdge.via
    new_branch = SipEdge.new_branch

    def __init__(self) -> None:
        self.public_host = "127.0.0.1"
        self.settings = SimpleNamespace(domain="bench.local", sip_port=5060, sip_tls_port=5061)
        self.transactions: TransactionLayer


class _Answering:
    """A transport whose far end answers every request with 200 OK at once."""

    def __init__(self) -> None:
        self.layer: TransactionLayer
        self.sent = 0

    def send(self, flow: Flow, data: bytes) -> bool:
        self.sent += 1
        head = data[: data.index(b"\r\n\r\n")].split(b"\r\n")
        lines = [b"SIP/2.0 200 OK"]
        for line in head[1:]:
            name = line[: line.index(b":")].lower()
            if name in ANSWERED:
                lines.append(line)
            elif name == b"to":
                lines.append(line + b";tag=ua")
        lines.append(b"Content-Length: 0\r\n\r\n")
        response = b"\r\n".join(lines)
        loop = asyncio.get_running_loop()
        loop.call_soon(self._arrive, response, flow)  # after the send returned, as a reply
        return True

    def _arrive(self, data: bytes, flow: Flow) -> None:
        message = parse_datagram(data)
        self.layer.receive(message, flow)


def _message(i: int) -> OutboundMessage:
    now = datetime.now(UTC)
    return OutboundMessage(
        id=i,
        from_uri="sip:room1@bench.local",
        from_display="Room one",
        to_aor=f"user{i % 100}@bench.local",
        content_type="text/plain;charset=UTF-8",
        body=b"hello everyone in the room, message number %d" % i,
        extra_headers=(
            ("X-Imstack-Room", "sip:room1@bench.local"),
            ("X-Imstack-Sender", "sip:user0@bench.local"),
            ("Date", "Thu, 26 Nov 2026 16:00:00 GMT"),
        ),
        source="imc",
        source_id=i,
        status=OutboundStatus.SENDING,
        attempts=0,
        last_status=None,
        last_reason=None,
        created_at=now,
        updated_at=now,
        finished_at=None,
    )


async def _round(count: int, transport: str, window: int) -> float:
    edge: Any = _Edge()
    transports = _Answering()
    layer = TransactionLayer(
        transports,  # type: ignore[arg-type]
        on_request=lambda txn: None,
        on_stray_ack=lambda request, flow: None,
    )
    transports.layer = layer
    edge.transactions = layer
    flow = Flow(transport, "127.0.0.1", 5070, None if transport == "udp" else "c1")
    messages = [_message(i) for i in range(count)]
    ok = 0

    async def deliver(message: OutboundMessage) -> None:
        nonlocal ok
        request = build_request(edge, message)
        target = Target(f"sip:{message.to_aor.split('@')[0]}@127.0.0.1:5070", flow)
        result = await Fork(edge, request).run([target], decrement=False)
        ok += result.response.status == 200

    started = time.process_time()
    for first in range(0, count, window):
        await asyncio.gather(*(deliver(m) for m in messages[first : first + window]))
    spent = time.process_time() - started
    layer.close()
    if ok != count:
        raise SystemExit(f"only {ok} of {count} answered 200")
    return spent / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="deliveries per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--window", type=int, default=100, help="deliveries in flight")
    parser.add_argument("--transport", choices=("udp", "tcp"), default="udp")
    args = parser.parse_args()
    per = [asyncio.run(_round(args.count, args.transport, args.window)) for _ in range(args.rounds)]
    print(
        f"send path ({args.transport}, {args.count} x {args.rounds}): "
        f"cpu µs/delivery best {min(per):.1f} median {statistics.median(per):.1f}"
    )


if __name__ == "__main__":
    main()
