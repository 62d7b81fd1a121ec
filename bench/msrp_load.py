"""MSRP load generator: drives client pairs through any MSRP relay (imstack or Kamailio).

Each pair is a receiver that AUTHs (digest) and a sender that sends SENDs to the receiver's
Use-Path. The generator parses only what it must (transaction-ids, end-lines) so it can
outrun the relay under test. Used by ``bench/msrp_relay.py``; runnable alone:

    python bench/msrp_load.py throughput --relay 127.0.0.1:2855 --pairs 10 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import re
import ssl
import statistics
import time
from dataclasses import dataclass, field

END = re.compile(rb"-------([A-Za-z0-9.\-+%=]+)([$+#])\r\n")
START = re.compile(
    rb"MSRP ([A-Za-z0-9.\-+%=]+) ([A-Z]+|\d{3})[^\r\n]*\r\nTo-Path: ([^\r\n]+)\r\n"
    rb"From-Path: ([^\r\n]+)\r\n"
)
_ids = itertools.count(1)


def tid() -> str:
    return f"t{next(_ids):011d}"


@dataclass
class Options:
    host: str
    port: int
    tls: ssl.SSLContext | None
    realm_user: str  # format with {i}
    password: str
    users: int = 20  # client i authenticates as user number i % users


class Conn(asyncio.Protocol):
    """A bench connection: finds complete frames, hands (tid, kind, to, frm, body) upward."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.waiters: dict[str, asyncio.Future[bytes]] = {}
        self.on_frame: object = None
        self.local = ("", 0)
        self.scanned = 0  # bytes of buf already searched for an end-line
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop: not a subclass
        sock = transport.get_extra_info("sockname")
        self.local = (sock[0], sock[1])

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        while True:
            m = END.search(buf, max(pos, self.scanned))
            if m is None:
                break
            frame = bytes(buf[pos : m.end()])
            pos = m.end()
            self.scanned = 0
            self.frame(frame, m.group(1).decode())
        if pos:
            del buf[:pos]
        # An end-line is under 50 bytes: never rescan more than that of a long body.
        self.scanned = max(0, len(buf) - 64)

    def frame(self, frame: bytes, t: str) -> None:
        fut = self.waiters.pop(t, None)
        if fut is not None and not fut.done():
            fut.set_result(frame)
            return
        if self.on_frame is not None:
            self.on_frame(frame, t)  # type: ignore[operator]

    async def request(self, data: bytes, t: str) -> bytes:
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiters[t] = fut
        assert self.transport is not None
        self.transport.write(data)
        return await asyncio.wait_for(fut, 30)


def header(frame: bytes, name: bytes) -> str | None:
    m = re.search(rb"\r\n" + name + rb": ([^\r\n]+)", frame)
    return m.group(1).decode() if m else None


async def connect(opts: Options) -> Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(Conn, opts.host, opts.port, ssl=opts.tls)
    return conn


def my_uri(conn: Conn, scheme: str, name: str) -> str:
    return f"{scheme}://{conn.local[0]}:{conn.local[1]}/{name};tcp"


async def auth(conn: Conn, opts: Options, index: int) -> str:
    """AUTH with digest; return the Use-Path."""
    scheme = "msrps" if opts.tls else "msrp"
    relay = f"{scheme}://{opts.host}:{opts.port};tcp"
    me = my_uri(conn, scheme, f"c{index}")
    t = tid()
    first = await conn.request(
        f"MSRP {t} AUTH\r\nTo-Path: {relay}\r\nFrom-Path: {me}\r\n-------{t}$\r\n".encode(), t
    )
    challenge = header(first, b"WWW-Authenticate") or ""
    params = dict(re.findall(r'(\w+)="?([^",]*)"?', challenge))
    algorithm = params.get("algorithm", "MD5").upper()
    h = (
        (lambda s: hashlib.sha256(s.encode()).hexdigest())
        if algorithm == "SHA-256"
        else (lambda s: hashlib.md5(s.encode()).hexdigest())
    )
    user = opts.realm_user.format(i=index % opts.users)
    ha1 = h(f"{user}:{params['realm']}:{opts.password}")
    ha2 = h(f"AUTH:{relay}")
    nc, cnonce = "00000001", "bench"
    response = h(f"{ha1}:{params['nonce']}:{nc}:{cnonce}:auth:{ha2}")
    authz = (
        f'Digest username="{user}", realm="{params["realm"]}", nonce="{params["nonce"]}", '
        f'uri="{relay}", response="{response}", algorithm={algorithm}, qop=auth, nc={nc}, '
        f'cnonce="{cnonce}"'
    )
    t = tid()
    second = await conn.request(
        f"MSRP {t} AUTH\r\nTo-Path: {relay}\r\nFrom-Path: {me}\r\nAuthorization: {authz}\r\n"
        f"-------{t}$\r\n".encode(),
        t,
    )
    use_path = header(second, b"Use-Path")
    if use_path is None:
        raise RuntimeError(f"AUTH failed: {second[:200]!r}")
    return use_path


@dataclass
class Pair:
    sender: Conn
    receiver: Conn
    to_path: str
    from_path: str
    received: int = 0
    latencies: list[float] = field(default_factory=list)
    sent_at: dict[str, float] = field(default_factory=dict)
    expect: int = 0  # transfer: chunks to wait for
    all_received: asyncio.Event = field(default_factory=asyncio.Event)


def make_receiver(pair: Pair) -> None:
    recv = pair.receiver

    def on_frame(frame: bytes, t: str) -> None:
        m = START.match(frame)
        if m is None or m.group(2) != b"SEND":
            return
        # Hop-by-hop 200 back to the relay (To-Path = the relay's URI in From-Path).
        relay_uri = m.group(4).split(b" ", 1)[0]
        me = m.group(3)
        assert recv.transport is not None
        recv.transport.write(
            b"MSRP "
            + m.group(1)
            + b" 200 OK\r\nTo-Path: "
            + relay_uri
            + b"\r\nFrom-Path: "
            + me
            + b"\r\n-------"
            + m.group(1)
            + b"$\r\n"
        )
        pair.received += 1
        if pair.received == pair.expect:
            pair.all_received.set()
        mid = header(frame, b"Message-ID")
        if mid is not None:
            started = pair.sent_at.pop(mid, None)
            if started is not None:
                pair.latencies.append(time.perf_counter() - started)

    recv.on_frame = on_frame


async def make_pairs(opts: Options, count: int) -> list[Pair]:
    scheme = "msrps" if opts.tls else "msrp"
    pairs = []
    for i in range(count):
        receiver = await connect(opts)
        use_path = await auth(receiver, opts, 2 * i + 1)
        sender = await connect(opts)
        await auth(sender, opts, 2 * i)
        to_path = f"{use_path} {my_uri(receiver, scheme, f'c{2 * i + 1}')}"
        pair = Pair(sender, receiver, to_path, my_uri(sender, scheme, f"c{2 * i}"))
        make_receiver(pair)
        pairs.append(pair)
    return pairs


def send_bytes(pair: Pair, body: bytes, mid: str) -> tuple[bytes, str]:
    t = tid()
    size = len(body)
    return (
        f"MSRP {t} SEND\r\nTo-Path: {pair.to_path}\r\nFrom-Path: {pair.from_path}\r\n"
        f"Message-ID: {mid}\r\nByte-Range: 1-{size}/{size}\r\n"
        "Content-Type: text/plain\r\n\r\n".encode()
        + body
        + f"\r\n-------{t}$\r\n".encode(),
        t,
    )


async def throughput(opts: Options, pairs_n: int, seconds: float, window: int) -> dict[str, float]:
    pairs = await make_pairs(opts, pairs_n)
    body = b"x" * 100
    stop = time.perf_counter() + seconds
    done = 0

    async def run(pair: Pair) -> None:
        nonlocal done
        pending: set[asyncio.Future[bytes]] = set()
        while time.perf_counter() < stop:
            while len(pending) < window:
                data, t = send_bytes(pair, body, f"m{next(_ids)}")
                fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
                pair.sender.waiters[t] = fut
                assert pair.sender.transport is not None
                pair.sender.transport.write(data)
                pending.add(fut)
            finished, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            done += len(finished)
        if pending:
            await asyncio.wait(pending, timeout=5)

    began = time.perf_counter()
    await asyncio.gather(*(run(p) for p in pairs))
    elapsed = time.perf_counter() - began
    received = sum(p.received for p in pairs)
    return {
        "pairs": pairs_n,
        "seconds": elapsed,
        "sends_acked": done,
        "sends_per_s": done / elapsed,
        "received": received,
    }


async def latency(opts: Options, pairs_n: int, rate: float, seconds: float) -> dict[str, float]:
    pairs = await make_pairs(opts, pairs_n)
    body = b"x" * 100
    interval = 1.0 / rate
    total = int(rate * seconds)
    began = time.perf_counter()
    for n in range(total):
        target = began + n * interval
        delay = target - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pair = pairs[n % len(pairs)]
        mid = f"m{next(_ids)}"
        data, _ = send_bytes(pair, body, mid)
        pair.sent_at[mid] = time.perf_counter()
        assert pair.sender.transport is not None
        pair.sender.transport.write(data)
    await asyncio.sleep(1.0)
    lat = sorted(x for p in pairs for x in p.latencies)
    if not lat:
        return {"rate": rate, "received": 0}
    return {
        "offered_rate": rate,
        "achieved_rate": len(lat) / (time.perf_counter() - began - 1.0),
        "received": len(lat),
        "sent": total,
        "p50_ms": 1000 * lat[len(lat) // 2],
        "p99_ms": 1000 * lat[int(len(lat) * 0.99) - 1],
        "mean_ms": 1000 * statistics.fmean(lat),
    }


async def transfer(opts: Options, size: int, chunk: int, in_flight: int) -> dict[str, float]:
    """Move one ``size``-byte message in ``chunk``-byte SENDs, ``in_flight`` at a time."""
    (pair,) = await make_pairs(opts, 1)
    pair.expect = -(-size // chunk)
    mid = f"big{next(_ids)}"
    data = b"y" * chunk
    began = time.perf_counter()
    pending: set[asyncio.Future[bytes]] = set()
    for start in range(0, size, chunk):
        part = data[: min(chunk, size - start)]
        t = tid()
        last = start + len(part) >= size
        frame = (
            f"MSRP {t} SEND\r\nTo-Path: {pair.to_path}\r\nFrom-Path: {pair.from_path}\r\n"
            f"Message-ID: {mid}\r\nByte-Range: {start + 1}-{start + len(part)}/{size}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n".encode()
            + part
            + f"\r\n-------{t}{'$' if last else '+'}\r\n".encode()
        )
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        pair.sender.waiters[t] = fut
        assert pair.sender.transport is not None
        pair.sender.transport.write(frame)
        pending.add(fut)
        if len(pending) >= in_flight:
            _, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
    if pending:
        await asyncio.wait(pending)
    await asyncio.wait_for(pair.all_received.wait(), 120)
    return {"size": size, "chunk": chunk, "seconds": time.perf_counter() - began}


async def idle(opts: Options, count: int) -> dict[str, float]:
    conns = []
    began = time.perf_counter()
    sem = asyncio.Semaphore(200)

    async def one(i: int) -> None:
        async with sem:
            conn = await connect(opts)
            await auth(conn, opts, i)
            conns.append(conn)

    await asyncio.gather(*(one(i) for i in range(count)))
    return {"connections": len(conns), "seconds": time.perf_counter() - began, "_keep": conns}  # type: ignore[dict-item]


def options(args: argparse.Namespace) -> Options:
    host, port = args.relay.rsplit(":", 1)
    tls = None
    if args.tls:
        tls = ssl.create_default_context()
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
    return Options(host, int(port), tls, args.user, args.password, args.users)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("scenario", choices=["throughput", "latency", "transfer", "idle"])
    parser.add_argument("--relay", default="127.0.0.1:2855")
    parser.add_argument("--tls", action="store_true")
    parser.add_argument("--user", default="user{i}", help="digest user name, {i} = client no.")
    parser.add_argument("--password", default="bench-secret")
    parser.add_argument("--users", type=int, default=20, help="distinct digest users")
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--window", type=int, default=16)
    parser.add_argument("--rate", type=float, default=2000)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument("--chunk", type=int, default=2048)
    parser.add_argument("--in-flight", type=int, default=16)
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=0, help="idle: seconds to hold")
    args = parser.parse_args()
    opts = options(args)

    async def go() -> dict[str, float]:
        if args.scenario == "throughput":
            return await throughput(opts, args.pairs, args.seconds, args.window)
        if args.scenario == "latency":
            return await latency(opts, args.pairs, args.rate, args.seconds)
        if args.scenario == "transfer":
            return await transfer(opts, args.size, args.chunk, args.in_flight)
        result = await idle(opts, args.count)
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}), flush=True)
        await asyncio.sleep(args.hold)
        return {}

    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        result = runner.run(go())
    if result:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
