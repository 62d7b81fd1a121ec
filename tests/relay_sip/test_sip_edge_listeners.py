"""The SIP listeners besides UDP/TCP on IPv4: TLS (IMSTACK_SIP_TLS_PORT with a certificate),
IPv6 (IMSTACK_SIP_HOST=::1) and both families at once (IMSTACK_SIP_HOST=127.0.0.1,::1), each
carrying a registration and a relayed MESSAGE."""

from __future__ import annotations

import asyncio
import socket
import ssl
from pathlib import Path

import pytest

from services.relay.tls import write_selfsigned
from shared.config import Settings
from shared.db.locations import get_bindings
from tests.relay_sip.conftest import SipServer, free_port
from tests.relay_sip.sip_ua import SipUA

TEXT = "Über TLS und IPv6: ✓".encode()


class TestTls:
    @pytest.fixture
    def certificate(self, tmp_path: Path) -> tuple[Path, Path]:
        cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
        write_selfsigned(cert, key, ["127.0.0.1"])
        return cert, key

    @pytest.fixture
    def sip_settings(self, certificate: tuple[Path, Path]) -> dict[str, object]:
        cert, key = certificate
        return {"sip_tls_port": free_port(), "tls_cert": cert, "tls_key": key}

    async def test_a_ua_registered_over_tls_gets_its_message_on_that_connection(
        self, sip: SipServer, certificate: tuple[Path, Path]
    ) -> None:
        # The client checks the relay's certificate, as a real one would.
        context = ssl.create_default_context(cafile=str(certificate[0]))
        server = ("127.0.0.1", sip.settings.sip_tls_port)
        alice = SipUA("tls", server, "alice", "alice-pw", sip.settings.domain, ssl_context=context)
        await alice.start()
        sip.uas.append(alice)
        assert (await alice.register()).status == 200
        [binding] = await get_bindings(sip.pool, f"alice@{sip.settings.domain}")
        assert binding.transport == "tls"
        assert binding.contact == alice.contact

        bob = await sip.ua("bob")  # over UDP, to the plain port
        assert (await bob.register()).status == 200
        request = bob.build(
            "MESSAGE",
            alice.aor,
            to=alice.aor,
            headers=[("Content-Type", "text/plain;charset=UTF-8")],
            body=TEXT,
        )
        challenge = await bob.send(request)
        authorized = bob.authorize(request, challenge)
        bob.send_bytes(authorized.to_bytes())
        received = await alice.next_request()
        assert received.body == TEXT
        # The relay's Via names the TLS transport and port it sent from (§18.1.1).
        top = received.get("Via") or ""
        assert top.startswith("SIP/2.0/TLS ") and f":{sip.settings.sip_tls_port};" in top
        alice.answer(received, 200)
        branch = (authorized.get("Via") or "").split("branch=")[1].split(";")[0]
        assert (await bob.wait_response(branch)).status == 200

    async def test_a_client_that_does_not_trust_the_certificate_gets_nowhere(
        self, sip: SipServer
    ) -> None:
        context = ssl.create_default_context()  # the system CAs: our certificate is not there
        alice = SipUA(
            "tls",
            ("127.0.0.1", sip.settings.sip_tls_port),
            "alice",
            "alice-pw",
            sip.settings.domain,
            ssl_context=context,
        )
        with pytest.raises(ssl.SSLCertVerificationError):
            await alice.start()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback")
class TestIpv6:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_host": "::1"}

    @pytest.mark.parametrize("transport", ["udp", "tcp"])
    async def test_register_and_message_over_ipv6(self, sip: SipServer, transport: str) -> None:
        server = ("::1", sip.settings.sip_port)
        domain = sip.settings.domain
        alice = await SipUA(
            transport, server, "alice", "alice-pw", domain, local_host="::1"
        ).start()
        bob = await SipUA(transport, server, "bob", "bob-pw", domain, local_host="::1").start()
        sip.uas += [alice, bob]
        assert (await bob.register()).status == 200
        [binding] = await get_bindings(sip.pool, f"bob@{domain}")
        assert binding.source_host == "::1"
        assert binding.source_port == bob.local_port
        assert binding.contact == f"sip:bob-ua@[::1]:{bob.local_port}" + (
            ";transport=tcp" if transport == "tcp" else ""
        )

        request = alice.build(
            "MESSAGE",
            bob.aor,
            to=bob.aor,
            headers=[("Content-Type", "text/plain;charset=UTF-8")],
            body=TEXT,
        )
        challenge = await alice.send(request)
        assert challenge.status == 407
        authorized = alice.authorize(request, challenge)
        alice.send_bytes(authorized.to_bytes())
        received = await bob.next_request()
        assert received.body == TEXT
        assert received.uri == bob.contact
        # Our Via carries the IPv6 address in brackets (RFC 3261 §25.1 sent-by).
        assert (received.get("Via") or "").split(";")[0].endswith(f"[::1]:{sip.settings.sip_port}")
        bob.answer(received, 200)
        branch = (authorized.get("Via") or "").split("branch=")[1].split(";")[0]
        assert (await alice.wait_response(branch)).status == 200


async def test_the_relay_listens_only_on_the_configured_address(sip: SipServer) -> None:
    # The fixture's relay is configured for 127.0.0.1: nothing answers on ::1 at its port.
    if not _ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        assert probe.connect_ex(("::1", sip.settings.sip_port)) != 0


class TestBothFamilies:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"sip_host": "127.0.0.1,::1"}

    @pytest.mark.parametrize("transport", ["udp", "tcp"])
    async def test_an_ipv4_ua_and_an_ipv6_ua_message_each_other(
        self, sip: SipServer, transport: str
    ) -> None:
        port, domain = sip.settings.sip_port, sip.settings.domain
        alice = await SipUA(transport, ("127.0.0.1", port), "alice", "alice-pw", domain).start()
        bob = await SipUA(
            transport, ("::1", port), "bob", "bob-pw", domain, local_host="::1"
        ).start()
        sip.uas += [alice, bob]
        for ua in (alice, bob):
            assert (await ua.register()).status == 200

        sending = asyncio.create_task(alice.message(bob.aor, TEXT))  # IPv4 to IPv6
        received = await bob.next_request()
        assert received.body == TEXT and received.uri == bob.contact
        bob.answer(received, 200)
        assert (await sending).status == 200

        sending = asyncio.create_task(bob.message(alice.aor, b"back"))  # and IPv6 to IPv4
        received = await alice.next_request()
        assert received.body == b"back" and received.uri == alice.contact
        alice.answer(received, 200)
        assert (await sending).status == 200

    def test_the_two_addresses_may_come_in_either_order_and_in_brackets(self) -> None:
        assert Settings(sip_host=" [::] , 0.0.0.0").sip_hosts == ["::", "0.0.0.0"]

    def test_more_than_one_address_of_a_family_is_refused(self) -> None:
        for hosts in ("127.0.0.1,127.0.0.2", "::1,::2", "127.0.0.1,example.test"):
            with pytest.raises(ValueError, match="an IPv4 and an IPv6 address"):
                Settings(sip_host=hosts)
