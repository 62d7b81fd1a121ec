"""Forwarding through the relay (RFC 4976 §7): paths, transactions, REPORTs, checks."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.config import Settings
from shared.msrp import (
    RequestHead,
    ResponseHead,
    make_response,
    new_transaction_id,
    serialize_message,
)
from tests.relay_msrp.conftest import RunningRelay, running_relay
from tests.relay_msrp.msrp_client import MsrpTestClient


def path_to(sender: MsrpTestClient, receiver: MsrpTestClient) -> tuple:  # type: ignore[type-arg]
    """To-Path from ``sender`` to ``receiver`` when both use the relay (RFC 4976 §6)."""
    return (*sender.use_path, *receiver.use_path, receiver.uri)


async def test_send_goes_through_with_the_paths_rewritten(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    answer = await alice.send_text(path_to(alice, bob), "héllo bob ✓".encode())
    assert answer is not None
    assert answer.head.status == 200  # type: ignore[union-attr]
    # Hop-by-hop: only the relay answers alice, from the URI she addressed.
    assert answer.head.to_path == (alice.uri,)
    assert answer.head.from_path == (alice.use_path[0],)

    got = await bob.next_request()
    head = got.head
    assert isinstance(head, RequestHead)
    assert head.method == "SEND"
    assert head.to_path == (bob.uri,)
    assert head.from_path == (bob.use_path[0], alice.use_path[0], alice.uri)
    assert bytes(got.body) == "héllo bob ✓".encode()
    # The traffic shows in the statistics of bob's session (its connection).
    (bob_session,) = [x for x in msrp_relay.relay.sessions if x.user.startswith("bob@")]
    assert bob_session.conn.bytes_out >= len("héllo bob ✓".encode())
    assert head.get_header("Content-Type") == "text/plain"
    # bob's 200 is consumed by the relay, never shown to alice.
    await asyncio.sleep(0.1)
    assert alice.unexpected_responses == []

    back = await bob.send_text(path_to(bob, alice), b"hi alice")
    assert back is not None and back.head.status == 200  # type: ignore[union-attr]
    assert bytes((await alice.next_request()).body) == b"hi alice"


async def test_failure_report_partial_and_no_suppress_the_200(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    for value in ("partial", "no"):
        await alice.send_text(
            path_to(alice, bob),
            value.encode(),
            extra=(("Failure-Report", value),),
            expect_response=False,
        )
        assert bytes((await bob.next_request()).body) == value.encode()
    await asyncio.sleep(0.2)
    assert alice.unexpected_responses == []


async def test_receiver_error_becomes_a_failure_report(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob", auto_answer=False)
    sent = asyncio.create_task(alice.send_text(path_to(alice, bob), b"unwanted"))
    got = await bob.next_request()
    assert isinstance(got.head, RequestHead)
    bob.write(serialize_message(make_response(got.head, 415, "Not understood", from_uri=bob.uri)))
    assert (await sent).head.status == 200  # type: ignore[union-attr]
    report = await alice.next_request()
    assert isinstance(report.head, RequestHead) and report.head.method == "REPORT"
    assert report.head.get_header("Status") == "000 415 Not understood"
    assert report.head.get_header("Message-ID") == got.head.get_header("Message-ID")
    assert report.head.get_header("Byte-Range") == "1-8/8"
    assert report.head.to_path == (alice.uri,)
    assert report.head.from_path == (alice.use_path[0],)


async def test_receiver_that_never_answers_yields_a_408_report(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_transaction_timeout=0.3) as running:
        alice = await running.authed("alice")
        bob = await running.authed("bob", auto_answer=False)
        await alice.send_text(path_to(alice, bob), b"anyone?")
        await bob.next_request()
        report = await alice.next_request()
        assert report.head.get_header("Status") == "000 408 Request Timeout"


async def test_unknown_session_gets_481(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    forged = msrp_relay.uri().__class__(
        scheme="msrp", host="127.0.0.1", port=msrp_relay.port, session_id="forged123456"
    )
    answer = await alice.send_text((*alice.use_path, forged, bob.uri), b"x")
    assert answer is not None and answer.head.status == 481  # type: ignore[union-attr]
    answer = await alice.send_text((forged, bob.uri), b"x")
    assert answer is not None and answer.head.status == 481  # type: ignore[union-attr]
    assert bob.requests.empty()


async def test_session_used_from_another_connection_gets_506(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    # alice's session URI, but sent from a fresh connection claiming to be alice.
    intruder = await msrp_relay.client("alice")
    answer = await intruder.send_text(path_to(alice, bob), b"x")
    assert answer is not None
    assert answer.head.status in (403, 506)  # type: ignore[union-attr]
    spoof = await intruder.request(
        "SEND",
        path_to(alice, bob),
        headers=(("Message-ID", "m1"), ("Byte-Range", "1-1/1"), ("Content-Type", "text/plain")),
        body=b"x",
        from_path=(alice.uri,),
    )
    assert spoof is not None and spoof.head.status == 506  # type: ignore[union-attr]
    assert bob.requests.empty()


async def test_from_path_not_matching_the_session_gets_403(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    other = bob.uri.__class__(scheme="msrp", host="192.0.2.7", port=9, session_id="x1y2z3")
    answer = await alice.request(
        "SEND",
        path_to(alice, bob),
        headers=(("Message-ID", "m1"), ("Byte-Range", "1-1/1"), ("Content-Type", "text/plain")),
        body=b"x",
        from_path=(other,),
    )
    assert answer is not None and answer.head.status == 403  # type: ignore[union-attr]


async def test_forged_response_from_a_stranger_is_dropped(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob", auto_answer=False)
    await alice.send_text(path_to(alice, bob), b"hello")  # the relay's own 200
    got = await bob.next_request()
    assert isinstance(got.head, RequestHead)
    stranger = await msrp_relay.client("stranger")
    forged = ResponseHead(got.head.transaction_id, 200, "OK", (alice.uri,), (bob.uri,))
    stranger.write(serialize_message(forged))
    await asyncio.sleep(0.2)
    assert msrp_relay.relay.stats.responses_dropped == 1
    assert alice.unexpected_responses == []


async def test_report_is_forwarded_and_never_answered(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    await bob.request(
        "REPORT",
        path_to(bob, alice),
        headers=(("Message-ID", "m1"), ("Byte-Range", "1-5/5"), ("Status", "000 200 OK")),
        expect_response=False,
    )
    report = await alice.next_request()
    assert isinstance(report.head, RequestHead) and report.head.method == "REPORT"
    assert report.head.get_header("Status") == "000 200 OK"
    await asyncio.sleep(0.1)
    assert bob.unexpected_responses == []


async def test_other_methods_are_forwarded_and_their_response_routed_back(
    msrp_relay: RunningRelay,
) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob", auto_answer=False)
    asked = asyncio.create_task(
        alice.request("NICKNAME", path_to(alice, bob), headers=(("Use-Nickname", '"Al"'),))
    )
    got = await bob.next_request()
    assert isinstance(got.head, RequestHead) and got.head.method == "NICKNAME"
    bob.write(serialize_message(make_response(got.head, 200, "OK", from_uri=bob.uri)))
    answer = await asked
    assert answer is not None
    assert answer.head.status == 200  # type: ignore[union-attr]
    assert answer.head.to_path == (alice.uri,)


async def test_malformed_input_gets_400_and_the_connection_closed(
    msrp_relay: RunningRelay,
) -> None:
    client = await msrp_relay.client("junk")
    client.write(b"MSRP abcd1234 SEND\r\nFrom-Path: msrp://x:1/y;tcp\r\n\r\n")
    await asyncio.wait_for(client.closed.wait(), 5)
    assert msrp_relay.relay.stats.rejects[400] == 1
    # The relay carries on for everyone else.
    alice = await msrp_relay.authed("alice")
    assert alice.use_path


async def test_send_without_message_id_gets_400(msrp_relay: RunningRelay) -> None:
    alice = await msrp_relay.authed("alice")
    bob = await msrp_relay.authed("bob")
    answer = await alice.request(
        "SEND", path_to(alice, bob), headers=(("Content-Type", "text/plain"),), body=b"x"
    )
    assert answer is not None and answer.head.status == 400  # type: ignore[union-attr]


async def test_expired_session_gets_481(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_auth_min_expires=1) as running:
        alice = await running.client("alice")
        ok = await alice.auth(running.uri(), "alice", "alice-pw", expires=1)
        assert ok.head.status == 200  # type: ignore[union-attr]
        bob = await running.authed("bob")
        await asyncio.sleep(1.2)
        answer = await alice.send_text(path_to(alice, bob), b"late")
        assert answer is not None and answer.head.status == 481  # type: ignore[union-attr]


async def test_idle_connection_without_a_session_is_closed(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_idle_timeout=0.2) as running:
        idle = await running.client("idle")
        authed = await running.authed("alice")
        await asyncio.sleep(0.4)
        running.relay.sweep(asyncio.get_running_loop().time())
        await asyncio.wait_for(idle.closed.wait(), 5)
        assert not authed.closed.is_set()


async def test_one_address_cannot_take_every_connection(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """G11: IMSTACK_MSRP_MAX_CONNECTIONS_PER_SOURCE caps one address; others still get in,
    and the capped address gets a slot back when one of its connections closes."""
    async with running_relay(settings, pool, msrp_max_connections_per_source=2) as running:
        first = await running.client("one")
        second = await running.client("two")
        await asyncio.sleep(0.1)
        refused = [await running.client(f"extra{i}") for i in range(3)]
        for client in refused:
            await asyncio.wait_for(client.closed.wait(), 5)
        assert running.relay.stats.connections_refused == 3
        assert [r.message for r in caplog.records if "refusing more" in r.message] == [
            "MSRP: 127.0.0.1 holds 2 connections, the most one address may "
            "(IMSTACK_MSRP_MAX_CONNECTIONS_PER_SOURCE); refusing more from it"
        ]  # once, not per refused connection

        other = await running.authed("alice", source="127.0.0.2")  # another address: served
        assert not first.closed.is_set() and not other.closed.is_set()

        await second.close()
        await asyncio.sleep(0.1)
        again = await running.authed("bob")  # a slot of 127.0.0.1 is free again
        assert not again.closed.is_set()


async def test_connection_limit_refuses_extra_connections(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_max_connections=2) as running:
        first = await running.client("one")
        second = await running.client("two")
        await asyncio.sleep(0.1)
        third = await running.client("three")
        await asyncio.wait_for(third.closed.wait(), 5)
        assert running.relay.stats.connections_refused == 1
        assert not first.closed.is_set() and not second.closed.is_set()
        assert new_transaction_id()
