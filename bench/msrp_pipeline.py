"""The MSRP relay's per-SEND work in one process, without sockets: CPU per relayed SEND.

    python bench/msrp_pipeline.py                      # 10 pairs, 16 SENDs per read
    python bench/msrp_pipeline.py --batch 1            # one SEND per read (low load)
    valgrind --tool=callgrind python bench/msrp_pipeline.py --sends 2000 --repeat 1

The real ``MsrpRelay`` and ``MsrpConnection`` objects run on fake transports: each sender's
connection is handed ``--batch`` complete SENDs (100-byte bodies, the headers
bench/msrp_load.py sends) per ``data_received``, the relay forwards them to the receivers'
connections, and each receiver answers every forwarded SEND with a 200 in one read. Only
the relay's ``data_received`` calls are timed (``time.process_time``), so the number is the
relay's CPU per relayed SEND — parsing, routing, serializing, the upstream 200 and the
downstream 200 it consumes — free of the kernel's and the load generator's share, and
steady enough on a busy machine to compare two versions. The best of ``--repeat`` runs is
reported.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from typing import cast

from services.relay.msrp.connection import MsrpConnection
from services.relay.msrp.relay import MsrpRelay
from shared.config import Settings
from shared.msrp import parse_uri

FORWARDED = re.compile(
    rb"MSRP ([A-Za-z0-9.\-+%=]+) SEND\r\nTo-Path: ([^\r\n]+)\r\nFrom-Path: ([^ \r\n]+)"
)
RELAY_PORT = 2855


class FakeTransport:
    """Enough of an asyncio transport for the relay: writes are collected."""

    def __init__(self, peer: tuple[str, int]) -> None:
        self.peer = peer
        self.out: list[bytes] = []

    def get_extra_info(self, name: str) -> object:
        return {"peername": self.peer, "sockname": ("127.0.0.1", RELAY_PORT)}.get(name)

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


class Pair:
    def __init__(self, relay: MsrpRelay, index: int) -> None:
        self.sender_t = FakeTransport(("127.0.0.1", 40000 + 2 * index))
        self.receiver_t = FakeTransport(("127.0.0.1", 40001 + 2 * index))
        self.sender = MsrpConnection(relay, secure=False)
        self.receiver = MsrpConnection(relay, secure=False)
        self.sender.connection_made(cast(asyncio.Transport, self.sender_t))
        self.receiver.connection_made(cast(asyncio.Transport, self.receiver_t))
        me = f"msrp://127.0.0.1:{40000 + 2 * index}/c{2 * index};tcp"
        peer = f"msrp://127.0.0.1:{40001 + 2 * index}/c{2 * index + 1};tcp"
        now = relay.loop.time()
        for conn, uri in ((self.sender, me), (self.receiver, peer)):
            session = relay.sessions.issue(
                user=f"user{index}",
                base_uri=relay.authenticator.base_uri(conn),
                client_uri=parse_uri(uri),
                conn=conn,
                now=now,
                expires=3600,
            )
            if conn is self.receiver:
                use_path = str(session.uri)
        self.to_path = f"{use_path} {peer}"
        self.from_path = me
        self.serial = 0

    def sends(self, count: int) -> bytes:
        out = []
        for _ in range(count):
            self.serial += 1
            t = f"t{self.serial:011d}"
            out.append(
                f"MSRP {t} SEND\r\nTo-Path: {self.to_path}\r\nFrom-Path: {self.from_path}\r\n"
                f"Message-ID: m{self.serial}\r\nByte-Range: 1-100/100\r\n"
                f"Content-Type: text/plain\r\n\r\n{'x' * 100}\r\n-------{t}$\r\n".encode()
            )
        return b"".join(out)

    def answers(self) -> tuple[bytes, int]:
        """200s for everything forwarded to the receiver so far, and how many."""
        out = []
        for match in FORWARDED.finditer(self.receiver_t.take()):
            tid, me, relay_uri = match.groups()
            out.append(
                b"MSRP " + tid + b" 200 OK\r\nTo-Path: " + relay_uri
                + b"\r\nFrom-Path: " + me + b"\r\n-------" + tid + b"$\r\n"
            )  # fmt: skip
        return b"".join(out), len(out)


async def run(sends: int, pairs_n: int, batch: int) -> float:
    settings = Settings(
        msrp_host="127.0.0.1",
        msrp_port=RELAY_PORT,
        msrp_public_host="127.0.0.1",
        msrp_allow_insecure_auth=True,
    )
    relay = MsrpRelay(settings, None)
    pairs = [Pair(relay, i) for i in range(pairs_n)]
    clock = time.process_time
    spent = 0.0
    relayed = 0
    while relayed < sends:
        for pair in pairs:
            data = pair.sends(batch)
            began = clock()
            pair.sender.data_received(data)
            spent += clock() - began
            answers, count = pair.answers()
            if count != batch:
                raise RuntimeError(f"{count} of {batch} SENDs forwarded")
            began = clock()
            pair.receiver.data_received(answers)
            spent += clock() - began
            ok = pair.sender_t.take()
            if ok.count(b" 200 OK\r\n") != batch:
                raise RuntimeError("the sender did not get its 200s")
            relayed += batch
    if relay.pending and any(relay.pending.values()):
        raise RuntimeError("transactions left pending")
    return 1e6 * spent / relayed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sends", type=int, default=20000)
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16, help="SENDs per read")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    best = min(asyncio.run(run(args.sends, args.pairs, args.batch)) for _ in range(args.repeat))
    print(f"{best:.1f} us relay CPU per relayed SEND ({args.batch} SENDs per read, best of "
          f"{args.repeat} x {args.sends})")  # fmt: skip


if __name__ == "__main__":
    main()
