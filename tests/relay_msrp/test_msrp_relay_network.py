"""Transports and topologies: TLS on the shared port, IPv6, two relays in a chain."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import asyncpg
import pytest

from services.relay.tls import write_selfsigned
from shared.config import Settings
from shared.msrp import RequestHead
from tests.relay_msrp.conftest import running_relay
from tests.relay_msrp.test_msrp_relay_forward import path_to


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    write_selfsigned(cert, key, ["127.0.0.1", "localhost"])
    return cert, key


def trusting(cert: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(cert))
    return context


async def test_tls_and_plain_tcp_share_one_port(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str], certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    async with running_relay(
        settings, pool, tls_cert=cert, tls_key=key, msrp_allow_insecure_auth=False
    ) as running:
        alice = await running.authed("alice", tls=trusting(cert))
        assert alice.use_path[0].scheme == "msrps"
        bob = await running.authed("bob", tls=trusting(cert))
        answer = await alice.send_text(path_to(alice, bob), b"over TLS")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        assert bytes((await bob.next_request()).body) == b"over TLS"
        # Plain TCP on the same port still speaks MSRP, but may not AUTH (RFC 4976).
        plain = await running.client("carol")
        refused = await plain.auth(running.uri(), "carol", "carol-pw")
        assert refused.head.status == 403  # type: ignore[union-attr]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="this machine has no IPv6 loopback")
async def test_ipv6_loopback(settings: Settings, pool: asyncpg.Pool, users: dict[str, str]) -> None:
    async with running_relay(settings, pool, host="::1") as running:
        alice = await running.authed("alice")
        bob = await running.authed("bob")
        assert alice.use_path[0].host == "[::1]"
        answer = await alice.send_text(path_to(alice, bob), b"v6")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        assert bytes((await bob.next_request()).body) == b"v6"


async def test_two_relays_in_a_chain(
    settings: Settings, pool: asyncpg.Pool, users: dict[str, str]
) -> None:
    """alice → relay A → relay B → bob: A opens a connection to B for the next hop."""
    async with (
        # Each relay may connect to the other (IMSTACK_MSRP_PEER_RELAYS; ports are dynamic).
        running_relay(settings, pool, msrp_peer_relays=["127.0.0.2"]) as relay_a,
        running_relay(
            settings,
            pool,
            host="127.0.0.2",
            msrp_public_host="127.0.0.2",
            msrp_peer_relays=["127.0.0.1"],
        ) as relay_b,
    ):
        alice = await relay_a.authed("alice")
        bob = await relay_b.authed("bob")
        to_path = (*alice.use_path, *bob.use_path, bob.uri)
        answer = await alice.send_text(to_path, b"across two relays")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        got = await bob.next_request()
        assert isinstance(got.head, RequestHead)
        assert bytes(got.body) == b"across two relays"
        assert got.head.from_path == (bob.use_path[0], alice.use_path[0], alice.uri)
        # And back, reusing the relay-to-relay connection in the other direction's hop.
        back = (*bob.use_path, *alice.use_path, alice.uri)
        answer = await bob.send_text(back, b"and back")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        assert bytes((await alice.next_request()).body) == b"and back"
        assert len(relay_a.relay.outbound) == 1
