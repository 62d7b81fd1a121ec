"""Flood protection over real sockets: per-source rate limit, connection limit, message size.

No test waits for something *not* to happen: a dropped UDP request is proven dropped by a
later request whose answer the server sent after it (one server socket is a FIFO, and a
loopback send is in the receiver's buffer when ``sendto`` returns).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket

import pytest

from services.relay.sip.flood import RateLimiter
from shared.sip.parser import parse_datagram
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import TIMEOUT, SipUA

LIMIT = 5
WINDOW = 3600.0  # never ends during a test


def _options(server: SipServer, local: tuple[str, int], transport: str = "UDP") -> bytes:
    host, port = local
    uri = f"sip:127.0.0.1:{server.settings.sip_port}"
    return (
        f"OPTIONS {uri} SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} {host}:{port};branch=z9hG4bK{secrets.token_hex(6)};rport\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:flooder@{host}>;tag={secrets.token_hex(4)}\r\n"
        f"To: <{uri}>\r\n"
        f"Call-ID: {secrets.token_hex(8)}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


async def _options_status(ua: SipUA, sip: SipServer) -> int:
    uri = f"sip:127.0.0.1:{sip.settings.sip_port}"
    return (await ua.send(ua.build("OPTIONS", uri, to=uri))).status


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(65536), TIMEOUT) == b""
    except ConnectionResetError:
        return True


def test_the_limiter_counts_per_source_and_window_and_0_disables_it() -> None:
    limiter = RateLimiter(3, 2.0)
    assert [limiter.allow("10.0.0.1", 100.0) for _ in range(4)] == [True, True, True, False]
    assert limiter.blocked("10.0.0.1", 101.0)
    assert limiter.retry_after("10.0.0.1", 100.5) == 2
    assert limiter.allow("10.0.0.2", 101.0)  # another source has its own budget
    assert limiter.allow("10.0.0.1", 102.0)  # a new window
    assert not limiter.blocked("10.0.0.1", 102.0)
    limiter.allow("10.0.0.3", 110.0)
    assert limiter.tracked == 1  # ended windows are forgotten
    assert all(RateLimiter(0, 2.0).allow("10.0.0.1", 1.0) for _ in range(1000))


class TestRateLimit:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_rate_limit": LIMIT, "sip_rate_window": WINDOW}

    async def test_udp_requests_over_the_limit_are_dropped_silently_and_logged_once(
        self, sip: SipServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        loop = asyncio.get_running_loop()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as flooder:
            flooder.bind(("127.0.0.1", 0))
            flooder.setblocking(False)
            local = flooder.getsockname()
            with caplog.at_level(logging.WARNING, logger="services.relay.sip.flood"):
                for _ in range(LIMIT + 20):
                    flooder.sendto(_options(sip, local), sip.address)
                for _ in range(LIMIT):
                    data = await asyncio.wait_for(loop.sock_recv(flooder, 65536), TIMEOUT)
                    response = parse_datagram(data)
                    assert response is not None and getattr(response, "status", 0) == 200
                # Another source is served; its answer was sent after the flood was handled.
                other = await sip.ua("carol", local_host="127.0.0.2")
                assert await _options_status(other, sip) == 200
                with pytest.raises(BlockingIOError):
                    flooder.recv(65536)
            warnings = [r for r in caplog.records if r.name == "services.relay.sip.flood"]
            assert len(warnings) == 1
            assert "127.0.0.1" in warnings[0].getMessage()

    async def test_tcp_requests_over_the_limit_get_503_with_retry_after(
        self, sip: SipServer
    ) -> None:
        ua = await sip.ua("alice", "tcp")
        for _ in range(LIMIT):
            assert await _options_status(ua, sip) == 200
        uri = f"sip:127.0.0.1:{sip.settings.sip_port}"
        refused = await ua.send(ua.build("OPTIONS", uri, to=uri))
        assert refused.status == 503
        assert 1 <= int(refused.get("Retry-After") or "0") <= WINDOW
        # Registering is refused the same way: the limit is per source, whatever the request.
        request = ua.build("REGISTER", f"sip:{sip.settings.domain}")
        assert (await ua.send(request)).status == 503


class TestRateLimitDisabled:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_rate_limit": 0, "sip_rate_window": 0.001}

    async def test_with_limit_0_every_request_is_served(self, sip: SipServer) -> None:
        ua = await sip.ua("alice", "tcp")
        for _ in range(3 * LIMIT):
            assert await _options_status(ua, sip) == 200


class TestConnectionLimit:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_max_connections": 2}

    async def test_connections_beyond_the_limit_are_closed_until_one_goes(
        self, sip: SipServer
    ) -> None:
        first = await sip.ua("alice", "tcp")
        second = await sip.ua("bob", "tcp")
        assert await _options_status(first, sip) == 200
        assert await _options_status(second, sip) == 200

        reader, writer = await asyncio.open_connection(*sip.address)
        assert await _closed_by_server(reader)
        writer.close()

        await first.close()
        async with asyncio.timeout(TIMEOUT):
            while True:  # the server notices the close asynchronously
                reader, writer = await asyncio.open_connection(*sip.address)
                local = writer.get_extra_info("sockname")
                writer.write(_options(sip, local, "TCP"))
                try:
                    data = await reader.read(65536)
                except ConnectionResetError:
                    data = b""
                writer.close()
                if data:
                    assert data.startswith(b"SIP/2.0 200")
                    break


class TestConnectionLimitPerSource:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_max_connections_per_source": 2}

    async def test_one_address_cannot_take_every_connection(
        self, sip: SipServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """G11: a third connection from 127.0.0.1 is closed as it is accepted (one warning),
        one from 127.0.0.2 is served."""
        first = await sip.ua("alice", "tcp")
        second = await sip.ua("bob", "tcp")
        assert await _options_status(first, sip) == 200
        assert await _options_status(second, sip) == 200
        for _ in range(3):
            reader, writer = await asyncio.open_connection(*sip.address)
            assert await _closed_by_server(reader)
            writer.close()
        warnings = [r.getMessage() for r in caplog.records if "refusing more" in r.getMessage()]
        assert warnings == [
            "SIP: 127.0.0.1 holds 2 connections, the most one address may "
            "(IMSTACK_SIP_MAX_CONNECTIONS_PER_SOURCE); refusing more from it"
        ]

        reader, writer = await asyncio.open_connection(*sip.address, local_addr=("127.0.0.2", 0))
        writer.write(_options(sip, writer.get_extra_info("sockname"), "TCP"))
        data = await asyncio.wait_for(reader.read(65536), TIMEOUT)
        assert data.startswith(b"SIP/2.0 200")
        writer.close()


class TestMessageSize:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_max_message_size": 2048}

    async def test_a_tcp_message_over_the_size_limit_gets_413_and_the_connection_closes(
        self, sip: SipServer
    ) -> None:
        ua = await sip.ua("alice", "tcp")
        small = ua.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x")
        assert (await ua.send(small)).status == 407
        big = ua.build(
            "MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x" * 3000
        )
        assert (await ua.send(big)).status == 413
        assert ua._reader_task is not None
        await asyncio.wait_for(ua._reader_task, TIMEOUT)  # the server closed the connection

    async def test_a_udp_datagram_over_the_size_limit_is_dropped(self, sip: SipServer) -> None:
        ua = await sip.ua("alice")
        big = ua.build(
            "MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x" * 3000
        )
        small = ua.build("MESSAGE", "sip:bob@example.test", to="sip:bob@example.test", body=b"x")
        ua.send_bytes(big.to_bytes())
        assert (await ua.send(small)).status == 407  # answered after the big one was handled
        big_branch = (big.get("Via") or "").split("branch=")[1].split(";")[0]
        assert ua.responses[big_branch].empty()
