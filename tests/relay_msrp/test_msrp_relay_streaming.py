"""Large and interleaved messages: chunks stream through, memory stays bounded."""

from __future__ import annotations

import asyncio
import os

import asyncpg

from shared.config import Settings
from shared.msrp import RequestHead, new_message_id, new_transaction_id, serialize_end_line
from shared.msrp import serialize_head as head_bytes
from tests.relay_msrp.conftest import RunningRelay, running_relay
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_msrp.test_msrp_relay_forward import path_to


def reassemble(chunks: list[tuple[RequestHead, bytes]]) -> dict[str, bytearray]:
    """Message-ID → bytes placed by Byte-Range, as an endpoint does (RFC 4975 §7.3.1)."""
    out: dict[str, bytearray] = {}
    for head, body in chunks:
        byte_range = head.byte_range
        assert byte_range is not None
        buf = out.setdefault(head.message_id or "", bytearray())
        start = byte_range.start - 1
        if len(buf) < start + len(body):
            buf.extend(b"\0" * (start + len(body) - len(buf)))
        buf[start : start + len(body)] = body
    return out


async def collect(client: MsrpTestClient, count: int) -> list[tuple[RequestHead, bytes]]:
    chunks = []
    for _ in range(count):
        got = await client.next_request(timeout=30)
        assert isinstance(got.head, RequestHead)
        chunks.append((got.head, bytes(got.body)))
    return chunks


async def test_a_1_mb_message_in_chunks_arrives_whole(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    data = os.urandom(1 << 20)
    message_id, size, step = new_message_id(), len(data), 64 * 1024
    for start in range(0, size, step):
        piece = data[start : start + step]
        last = start + step >= size
        head = RequestHead(
            new_transaction_id(),
            "SEND",
            path_to(alice, bob),
            (alice.uri,),
            (
                ("Message-ID", message_id),
                ("Byte-Range", f"{start + 1}-{start + len(piece)}/{size}"),
                ("Content-Type", "application/octet-stream"),
            ),
            has_body=True,
        )
        alice.write(
            head_bytes(head)
            + piece
            + serialize_end_line(head.transaction_id, "$" if last else "+", after_body=True)
        )
    chunks = await collect(bob, size // step)
    assert chunks[0][0].get_header("Byte-Range") == f"1-{step}/{size}"
    assert reassemble(chunks)[message_id] == data


async def test_interleaved_chunks_of_two_messages_stay_apart(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    first, second = os.urandom(30_000), os.urandom(20_000)
    ids = new_message_id(), new_message_id()
    plan = [(0, 0, 10_000), (1, 0, 10_000), (0, 10_000, 30_000), (1, 10_000, 20_000)]
    for which, start, end in plan:
        body = (first, second)[which]
        head = RequestHead(
            new_transaction_id(),
            "SEND",
            path_to(alice, bob),
            (alice.uri,),
            (
                ("Message-ID", ids[which]),
                ("Byte-Range", f"{start + 1}-{end}/{len(body)}"),
                ("Content-Type", "application/octet-stream"),
            ),
            has_body=True,
        )
        flag = "$" if end == len(body) else "+"
        alice.write(
            head_bytes(head)
            + body[start:end]
            + serialize_end_line(head.transaction_id, flag, after_body=True)
        )
    messages = reassemble(await collect(bob, 4))
    assert messages[ids[0]] == first
    assert messages[ids[1]] == second


async def stream_send(
    client: MsrpTestClient,
    to_path: tuple,
    size: int,
    piece: int = 256 * 1024,  # type: ignore[type-arg]
) -> str:
    """Send one ``size``-byte chunk, writing it in pieces and honouring back-pressure."""
    message_id = new_message_id()
    head = RequestHead(
        new_transaction_id(),
        "SEND",
        to_path,
        (client.uri,),
        (
            ("Message-ID", message_id),
            ("Byte-Range", f"1-{size}/{size}"),
            ("Content-Type", "application/octet-stream"),
        ),
        has_body=True,
    )
    client.write(head_bytes(head))
    block = bytes(range(256)) * (piece // 256)
    sent = 0
    while sent < size:
        part = block[: min(piece, size - sent)]
        client.write(part)
        sent += len(part)
        await client.writer.drain()
    client.write(serialize_end_line(head.transaction_id, "$", after_body=True))
    await client.writer.drain()
    return message_id


async def test_50_mb_streams_through_without_the_relay_holding_it(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_buffer_limit=1 << 20) as running:
        alice = await running.authed("alice")
        bob = await running.authed("bob")
        size = 50 * 1024 * 1024
        peak = 0
        done = asyncio.Event()

        async def watch() -> None:
            nonlocal peak
            while not done.is_set():
                held = sum(
                    len(frame.buffer)
                    for conn in running.relay.connections
                    for frame in ([conn.active] if conn.active else []) + list(conn.queue)
                ) + sum(
                    conn.transport.get_write_buffer_size()
                    for conn in running.relay.connections
                    if conn.transport is not None
                )
                peak = max(peak, held)
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch())
        sender = asyncio.create_task(stream_send(alice, path_to(alice, bob), size))
        got = await bob.next_request(timeout=120)
        await sender
        done.set()
        await watcher
        assert len(got.body) == size
        assert got.body[:512] == bytes(range(256)) * 2
        # Whole 50 MB went through while the relay held at most a few MB at any moment.
        assert peak < 8 * 1024 * 1024, peak


async def test_slow_receiver_pauses_the_sender_and_spares_other_sessions(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_buffer_limit=256 * 1024) as running:
        alice = await running.authed("alice")
        bob = await running.authed("bob")
        carol = await running.authed("carol")
        bob.reader._transport.pause_reading()  # type: ignore[attr-defined]  # bob stops reading
        sender = asyncio.create_task(stream_send(alice, path_to(alice, bob), 64 * 1024 * 1024))
        await asyncio.sleep(1.0)
        assert not sender.done(), "the sender should be held back by the relay"
        alice_conn = next(c for c in running.relay.connections if c.local and c.paused_by)
        assert alice_conn.reading_paused
        # carol and alice still talk to each other over their own connections.
        answer = await carol.send_text(path_to(carol, alice), b"still here?")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        sender.cancel()


async def test_a_long_chunk_is_interrupted_so_others_get_through(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_interrupt_bytes=64 * 1024) as running:
        alice = await running.authed("alice")
        carol = await running.authed("carol")
        bob = await running.authed("bob")
        # alice starts a big chunk but sends it slowly; carol's short message must not wait.
        message_id = new_message_id()
        size = 512 * 1024
        head = RequestHead(
            new_transaction_id(),
            "SEND",
            path_to(alice, bob),
            (alice.uri,),
            (
                ("Message-ID", message_id),
                ("Byte-Range", f"1-{size}/{size}"),
                ("Content-Type", "application/octet-stream"),
            ),
            has_body=True,
        )
        data = os.urandom(size)
        alice.write(head_bytes(head) + data[: 128 * 1024])
        await alice.writer.drain()
        await asyncio.sleep(0.2)
        await carol.send_text(path_to(carol, bob), b"short and sweet")
        first = await bob.next_request()
        second = await bob.next_request()
        assert first.end == "+" and first.head.get_header("Message-ID") == message_id
        assert bytes(second.body) == b"short and sweet"
        alice.write(
            data[128 * 1024 :] + serialize_end_line(head.transaction_id, "$", after_body=True)
        )
        rest = await bob.next_request()
        assert isinstance(rest.head, RequestHead)
        byte_range = rest.head.byte_range
        assert byte_range is not None and byte_range.start == len(first.body) + 1
        assert bytes(first.body) + bytes(rest.body) == data
