"""The SIP edge's CPU per relayed MESSAGE, in process, without sockets or a database.

    python bench/sip_pipeline.py                   # µs of CPU per relayed MESSAGE
    python bench/sip_pipeline.py --profile FILE    # and cProfile statistics to FILE

Run by hand, never from the test suite. Builds the relay's real SIP edge and router (on
uvloop when installed), with the credential, binding and mailbox caches filled as a warm
relay has them and the UDP socket replaced by a list, then feeds it what
bench/sip_load.py sends: digest-authenticated MESSAGEs from one registered user to
another (every one with its own branch, tag, Call-ID and nonce count), and the callee's
200 OK to each forwarded request. It measures the process's CPU time over ``--count``
MESSAGEs in windows of ``--window``: the relay's own work (parsing, routing, digest,
transactions, serialising), without the kernel's socket costs or a load generator
competing for the machine. ``best_1000_cpu_us_per_message`` is the least disturbed run of
1,000 in a row: on a shared machine compare that figure, from runs of the two versions
taken in turn, not single totals.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import hashlib
import itertools
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.relay.sip.edge import YOUNG_GC_THRESHOLD, SipEdge  # noqa: E402
from services.relay.sip.router import Router  # noqa: E402
from services.relay.sip.transport import UdpProtocol  # noqa: E402
from shared.config import Settings  # noqa: E402
from shared.db.locations import Binding  # noqa: E402
from shared.db.users import Address, Credentials  # noqa: E402
from shared.digest import Algorithm, ha1  # noqa: E402

DOMAIN = "bench.local"
PASSWORD = "bench-secret"
CALLER = ("127.0.0.1", 40000)
CALLEE = ("127.0.0.1", 40001)


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


class Sink:
    """The relay's UDP socket: what it sends, kept instead."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((data, addr))

    def is_closing(self) -> bool:
        return False


def build_edge(settings: Settings) -> tuple[SipEdge, UdpProtocol, Sink]:
    edge = SipEdge(settings, None, "postgresql://unused")  # type: ignore[arg-type]
    router = Router(edge)
    edge.handle_request = router.handle
    edge.handle_ack = router.stray_ack
    udp = UdpProtocol(edge.transports)
    sink = Sink()
    udp.transport = sink  # type: ignore[assignment]
    edge.transports.udp = udp
    # What SipEdge.start does besides opening sockets: the garbage collector's settings.
    gc.freeze()
    threshold, *older = gc.get_threshold()
    gc.set_threshold(max(threshold, YOUNG_GC_THRESHOLD), *older)
    edge.credentials.listener.connected.set()
    edge.mailboxes.listener.connected.set()
    far = time.monotonic() + 1e6
    for user in ("alice", "bob"):
        ha1_md5 = ha1(Algorithm.MD5, user, DOMAIN, PASSWORD)
        ha1_sha = ha1(Algorithm.SHA256, user, DOMAIN, PASSWORD)
        edge.credentials.cache.put(
            Address(user, DOMAIN), Credentials(1, ha1_md5, ha1_sha, False), expires=far
        )
        edge.mailboxes.cache.put(f"{user}@{DOMAIN}", False, expires=far)
    now = datetime.now(UTC)
    binding = Binding(
        id=1,
        aor=f"bob@{DOMAIN}",
        contact=f"sip:bob@{CALLEE[0]}:{CALLEE[1]}",
        transport="udp",
        source_host=CALLEE[0],
        source_port=CALLEE[1],
        relay_instance=edge.relay_instance,
        connection_id=None,
        q=1.0,
        instance_id=None,
        user_agent=None,
        call_id="reg",
        cseq=1,
        expires_at=now,
        expires_in=10**9,
        created_at=now,
        updated_at=now,
    )
    edge.bindings.cache.put(f"bob@{DOMAIN}", (time.monotonic(), [binding]), expires=far)
    return edge, udp, sink


class Caller:
    """alice: MESSAGEs to bob with qop=auth digests on the nonce the relay gave her."""

    def __init__(self, nonce: str) -> None:
        self.nonce = nonce
        self.ha1 = ha1(Algorithm.MD5, "alice", DOMAIN, PASSWORD)
        self.nc = itertools.count(1)

    def message(self, n: int) -> bytes:
        uri = f"sip:bob@{DOMAIN}"
        nc = f"{next(self.nc):08x}"
        response = md5(f"{self.ha1}:{self.nonce}:{nc}:{n}:auth:{md5(f'MESSAGE:{uri}')}")
        body = "hello"
        return (
            f"MESSAGE {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bKload{n};rport\r\n"
            "Max-Forwards: 70\r\n"
            f"From: <sip:alice@{DOMAIN}>;tag={n}\r\n"
            f"To: <{uri}>\r\n"
            f"Call-ID: msg-load-{n}\r\n"
            f"CSeq: {n} MESSAGE\r\n"
            "Content-Type: text/plain\r\n"
            f'Proxy-Authorization: Digest username="alice", realm="{DOMAIN}", '
            f'nonce="{self.nonce}", uri="{uri}", response="{response}", algorithm=MD5, '
            f'qop=auth, nc={nc}, cnonce="{n}"\r\n'
            f"Content-Length: {len(body)}\r\n\r\n{body}"
        ).encode()


def answer(request: bytes) -> bytes:
    """The callee's 200 OK, as bench/sip_load.py writes it."""
    out = [b"SIP/2.0 200 OK"]
    for line in request.split(b"\r\n\r\n", 1)[0].split(b"\r\n")[1:]:
        name = line.split(b":", 1)[0].strip().lower()
        if name in (b"via", b"from", b"call-id", b"cseq"):
            out.append(line)
        elif name == b"to":
            out.append(line + b";tag=gen")
    out.append(b"Content-Length: 0\r\n\r\n")
    return b"\r\n".join(out)


async def settle() -> None:
    for _ in range(4):
        await asyncio.sleep(0)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            database_url="postgresql://unused",
            data_dir=Path(tmp),
            domain=DOMAIN,
            sip_host="127.0.0.1",
            sip_rate_limit=0,
        )
        edge, udp, sink = build_edge(settings)
        # The challenge: a MESSAGE without credentials gets a 407 with the nonce.
        first = Caller("x").message(0).replace(b"Proxy-Authorization", b"X-No")
        udp.datagram_received(first, CALLER)
        await settle()
        challenge = sink.sent.pop()[0].decode()
        nonce = challenge.split('nonce="', 1)[1].split('"', 1)[0]
        caller = Caller(nonce)
        counter = itertools.count(1)
        messages = [caller.message(next(counter)) for _ in range(args.count + args.warmup)]
        profile = cProfile.Profile() if args.profile else None
        ok = 0

        async def window(batch: list[bytes]) -> int:
            for data in batch:
                udp.datagram_received(data, CALLER)
            await settle()
            forwarded = [data for data, addr in sink.sent if addr == CALLEE]
            sink.sent.clear()
            for data in forwarded:
                udp.datagram_received(answer(data), CALLEE)
            await settle()
            answered = sum(data.startswith(b"SIP/2.0 200") for data, _ in sink.sent)
            sink.sent.clear()
            return answered

        warm, measured = messages[: args.warmup], messages[args.warmup :]
        for i in range(0, len(warm), args.window):
            await window(warm[i : i + args.window])
        started = time.process_time()
        if profile is not None:
            profile.enable()
        chunks: list[float] = []  # CPU µs per message of each 1,000 (the least disturbed)
        chunk_started, chunk_done = started, 0
        for i in range(0, len(measured), args.window):
            ok += await window(measured[i : i + args.window])
            if i + args.window - chunk_done >= 1000:
                now = time.process_time()
                chunks.append((now - chunk_started) / (i + args.window - chunk_done) * 1e6)
                chunk_started, chunk_done = now, i + args.window
        if profile is not None:
            profile.disable()
            profile.dump_stats(args.profile)
        cpu = time.process_time() - started
        edge.transactions.close()
        return {
            "messages": len(measured),
            "relayed_200": ok,
            "cpu_us_per_message": round(cpu / len(measured) * 1e6, 1),
            "best_1000_cpu_us_per_message": round(min(chunks), 1) if chunks else None,
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--window", type=int, default=50)
    parser.add_argument("--profile", help="cProfile statistics of the measured part to this file")
    args = parser.parse_args()
    try:
        import uvloop

        result = uvloop.run(run(args))
    except ImportError:
        result = asyncio.run(run(args))
    print(result)


if __name__ == "__main__":
    main()
