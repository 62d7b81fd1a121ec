"""MSRP parser microbenchmark: microseconds of CPU per parsed message.

    python bench/msrp_parser.py                    # N typical SENDs and 200s, whole and split
    python bench/msrp_parser.py -n 2000 --repeat 1 # small N, e.g. under valgrind:
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        python bench/msrp_parser.py -n 2000 --repeat 1 --only whole-send

Workloads (each parses N messages with one ``MsrpParser`` and drains every event):

- ``whole-send``: the SENDs bench/msrp_load.py sends (100-byte body), 16 per read;
- ``whole-200``: the hop-by-hop 200 responses a receiver sends back, 16 per read;
- ``split-send``: the same SENDs fed in 7-byte slices (every message crosses reads);
- ``big-send``: 64 KB chunks fed in 16 KB reads (body streaming, end-line search).

CPU time is ``time.process_time``; the best of ``--repeat`` runs is reported. Message
construction is done before the clock starts.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from shared.msrp import MsrpParser

TO = "msrp://127.0.0.1:2855/4f7c1a0be2d93e5a6c8f01b2d4e6a8;tcp msrp://127.0.0.1:40001/c1;tcp"
FROM = "msrp://127.0.0.1:40000/c0;tcp"


def send(n: int, body: bytes = b"x" * 100) -> bytes:
    tid = f"t{n:011d}"
    size = len(body)
    return (
        f"MSRP {tid} SEND\r\nTo-Path: {TO}\r\nFrom-Path: {FROM}\r\nMessage-ID: m{n}\r\n"
        f"Byte-Range: 1-{size}/{size}\r\nContent-Type: text/plain\r\n\r\n".encode()
        + body
        + f"\r\n-------{tid}$\r\n".encode()
    )


def ok(n: int) -> bytes:
    tid = f"r{n:019d}"
    return (
        f"MSRP {tid} 200 OK\r\nTo-Path: msrp://127.0.0.1:2855/4f7c1a0be2d93e5a6c8f01b2d4e6a8;tcp"
        f"\r\nFrom-Path: msrp://127.0.0.1:40001/c1;tcp\r\n-------{tid}$\r\n"
    ).encode()


def reads(messages: list[bytes], per_read: int = 0, slice_size: int = 0) -> list[bytes]:
    """The stream cut into reads: ``per_read`` whole messages each, or fixed-size slices."""
    if per_read:
        return [b"".join(messages[i : i + per_read]) for i in range(0, len(messages), per_read)]
    stream = b"".join(messages)
    return [stream[i : i + slice_size] for i in range(0, len(stream), slice_size)]


def parse_all(chunks: list[bytes], fast_path: bool) -> int:
    # (Without the keyword when it is the default, so the script also runs against versions
    # of shared/msrp from before the fast path, for before/after numbers.)
    parser = MsrpParser() if fast_path else MsrpParser(fast_path=False)
    events = 0
    for chunk in chunks:
        parser.receive_data(chunk)
        while parser.next_event() is not None:
            events += 1
    return events


WORKLOADS: dict[str, Callable[[int], list[bytes]]] = {
    "whole-send": lambda n: reads([send(i) for i in range(n)], per_read=16),
    "whole-200": lambda n: reads([ok(i) for i in range(n)], per_read=16),
    "split-send": lambda n: reads([send(i) for i in range(n)], slice_size=7),
    "big-send": lambda n: reads(
        [send(i, b"y" * 65536) for i in range(max(1, n // 100))], slice_size=16384
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-n", type=int, default=20000, help="messages per workload")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=sorted(WORKLOADS), action="append")
    parser.add_argument(
        "--incremental", action="store_true", help="disable the whole-message fast path"
    )
    args = parser.parse_args()
    for name in args.only or WORKLOADS:
        chunks = WORKLOADS[name](args.n)
        messages = args.n if name != "big-send" else max(1, args.n // 100)
        best = float("inf")
        for _ in range(args.repeat):
            began = time.process_time()
            parse_all(chunks, not args.incremental)
            best = min(best, time.process_time() - began)
        print(f"{name:11} {1e6 * best / messages:8.2f} us/message  (best of {args.repeat})")


if __name__ == "__main__":
    main()
