"""AUTH (RFC 4976 §5): digest challenge, Use-Path, Expires, refusals."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.config import Settings
from shared.db.users import Address, set_disabled
from shared.msrp import ResponseHead
from tests.relay_msrp.conftest import RunningRelay, running_relay


def status(message: object) -> int:
    head = message.head  # type: ignore[attr-defined]
    assert isinstance(head, ResponseHead)
    return head.status


async def test_auth_challenges_then_grants_a_use_path(msrp_relay: RunningRelay) -> None:
    client = await msrp_relay.client("alice")
    first = await client.request("AUTH", (msrp_relay.uri(),))
    assert first is not None and status(first) == 401
    challenge = first.head.get_header("WWW-Authenticate") or ""
    assert challenge.startswith("Digest ") and 'realm="example.test"' in challenge
    assert 'qop="auth"' in challenge

    answer = await client.auth(msrp_relay.uri(), "alice", "alice-pw")
    assert status(answer) == 200
    (use_path,) = answer.head.use_path or ()
    assert use_path.host == "127.0.0.1" and use_path.port == msrp_relay.port
    assert use_path.session_id and len(use_path.session_id) >= 16
    assert answer.head.get_header("Expires") == "3600"
    assert answer.head.to_path == (client.uri,)  # end-to-end response
    await client.close()


async def test_each_auth_gets_an_unguessable_new_session(msrp_relay: RunningRelay) -> None:
    a = await msrp_relay.authed("alice")
    b = await msrp_relay.authed("alice")
    assert a.use_path[0].session_id != b.use_path[0].session_id
    assert len(msrp_relay.relay.sessions) == 2
    await a.close()
    await b.close()


async def test_wrong_password_is_refused_and_repeated_failures_close_the_connection(
    msrp_relay: RunningRelay,
) -> None:
    client = await msrp_relay.client("alice")
    for _ in range(3):
        answer = await client.auth(msrp_relay.uri(), "alice", "wrong")
        assert status(answer) == 401
    await client.closed.wait()
    assert len(msrp_relay.relay.sessions) == 0


async def test_unknown_user_is_refused(msrp_relay: RunningRelay) -> None:
    client = await msrp_relay.client("mallory")
    answer = await client.auth(msrp_relay.uri(), "mallory", "x")
    assert status(answer) == 401
    await client.close()


async def test_disabled_user_is_refused(
    msrp_relay: RunningRelay, pool: asyncpg.Pool, settings: Settings
) -> None:
    await set_disabled(pool, Address("bob", settings.domain), True)
    client = await msrp_relay.client("bob")
    answer = await client.auth(msrp_relay.uri(), "bob", "bob-pw")
    assert status(answer) == 403
    await client.close()


async def test_expires_out_of_bounds_gets_423_with_the_bound(msrp_relay: RunningRelay) -> None:
    client = await msrp_relay.client("alice")
    low = await client.auth(msrp_relay.uri(), "alice", "alice-pw", expires=5)
    assert status(low) == 423 and low.head.get_header("Min-Expires") == "60"
    high = await client.auth(msrp_relay.uri(), "alice", "alice-pw", expires=999999)
    assert status(high) == 423 and high.head.get_header("Max-Expires") == "3600"
    ok = await client.auth(msrp_relay.uri(), "alice", "alice-pw", expires=120)
    assert status(ok) == 200 and ok.head.get_header("Expires") == "120"
    await client.close()


async def test_refresh_auth_keeps_the_issued_uri(msrp_relay: RunningRelay) -> None:
    client = await msrp_relay.authed("alice")
    issued = client.use_path[0]
    again = await client.auth(issued, "alice", "alice-pw", expires=600)
    assert status(again) == 200
    assert again.head.use_path == (issued,)
    assert again.head.get_header("Expires") == "600"
    assert len(msrp_relay.relay.sessions) == 1
    await client.close()


async def test_auth_over_plain_tcp_is_refused_unless_allowed(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    async with running_relay(settings, pool, msrp_allow_insecure_auth=False) as running:
        client = await running.client("alice")
        answer = await client.auth(running.uri(), "alice", "alice-pw")
        assert status(answer) == 403
        assert "TLS" in (answer.head.comment or "")  # type: ignore[union-attr]
        await client.close()


async def test_closing_the_connection_drops_its_sessions(msrp_relay: RunningRelay) -> None:
    client = await msrp_relay.authed("alice")
    assert len(msrp_relay.relay.sessions) == 1
    await client.close()
    for _ in range(100):
        if not msrp_relay.relay.sessions:
            break
        await asyncio.sleep(0.01)
    assert len(msrp_relay.relay.sessions) == 0


async def test_password_guessing_is_braked_per_user_and_address(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """G8: after IMSTACK_AUTH_MAX_FAILURES wrong passwords for alice from one address, even the
    right one is refused 403 from there (reconnecting does not help), while alice from another
    address, and bob from the same one, still get in; the block ends after its time."""
    overrides = {"auth_max_failures": 4, "auth_block_seconds": 1.0, "msrp_max_auth_failures": 3}
    async with running_relay(settings, pool, **overrides) as running:
        answers = []
        for _ in range(2):  # the relay closes a connection after 3 failures: guess on two
            guesser = await running.client("alice")
            answers += [status(await guesser.auth(running.uri(), "alice", "guess")) for _ in (1, 2)]
            await guesser.close()
        assert answers == [401, 401, 401, 401]
        blocked = await running.client("alice")
        assert status(await blocked.auth(running.uri(), "alice", "alice-pw")) == 403
        assert [r for r in caplog.records if "failed password checks" in r.message] != []

        elsewhere = await running.client("alice", source="127.0.0.2")
        assert status(await elsewhere.auth(running.uri(), "alice", "alice-pw")) == 200
        bob = await running.client("bob")
        assert status(await bob.auth(running.uri(), "bob", "bob-pw")) == 200

        await asyncio.sleep(1.1)
        later = await running.client("alice")
        assert status(await later.auth(running.uri(), "alice", "alice-pw")) == 200
