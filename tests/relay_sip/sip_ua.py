"""A small scripted SIP user agent for the SIP edge tests (UDP or TCP, digest auth)."""

from __future__ import annotations

import asyncio
import secrets
import ssl
from collections import defaultdict
from typing import Any

from shared.digest import Credentials, compute_response, ha1, parse_challenge
from shared.sip.headers import make_response, parse_via
from shared.sip.message import Headers, SipRequest, SipResponse
from shared.sip.parser import KeepAlivePing, SipStreamParser, parse_datagram

TIMEOUT = 10.0  # seconds a test waits for something that should come at once


def ack_for(invite: SipRequest, to: str) -> SipRequest:
    """The ACK a UA sends for a non-2xx final response to ``invite`` (§17.1.1.3)."""
    headers = Headers()
    headers.add("Via", invite.get("Via") or "")
    headers.add("Max-Forwards", "70")
    headers.add("From", invite.get("From") or "")
    headers.add("To", to)
    headers.add("Call-ID", invite.get("Call-ID") or "")
    seq = (invite.get("CSeq") or "1").split()[0]
    headers.add("CSeq", f"{seq} ACK")
    return SipRequest(method="ACK", uri=invite.uri, headers=headers)


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, ua: SipUA) -> None:
        self.ua = ua

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.ua.raw_received.append(data)
        message = parse_datagram(data)
        if message is not None:
            self.ua.received(message)


class SipUA:
    def __init__(
        self,
        transport: str,
        server: tuple[str, int],
        user: str,
        password: str,
        domain: str,
        *,
        local_host: str = "127.0.0.1",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.transport = transport  # "udp", "tcp" or "tls" (then ssl_context is needed)
        self.ssl_context = ssl_context
        self.local_host = local_host
        self.server = server
        self.user = user
        self.password = password
        self.domain = domain
        self.call_id = secrets.token_hex(8)
        self.cseq = 0
        self.local_port = 0
        self.requests: asyncio.Queue[SipRequest] = asyncio.Queue()
        self.responses: dict[str, asyncio.Queue[SipResponse]] = defaultdict(asyncio.Queue)
        self.raw_received: list[bytes] = []
        self._udp: asyncio.DatagramTransport | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self.contact = ""
        # Requests seen, by (branch, method), with the bytes of our answer once given.
        self._answered: dict[tuple[str, str], bytes | None] = {}

    @property
    def aor(self) -> str:
        return f"sip:{self.user}@{self.domain}"

    async def start(self) -> SipUA:
        loop = asyncio.get_running_loop()
        if self.transport == "udp":
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Udp(self), local_addr=(self.local_host, 0)
            )
            self._udp = transport
            self.local_port = transport.get_extra_info("sockname")[1]
        else:
            reader, writer = await asyncio.open_connection(
                *self.server,
                local_addr=(self.local_host, 0),
                ssl=self.ssl_context if self.transport == "tls" else None,
            )
            self._writer = writer
            self.local_port = writer.get_extra_info("sockname")[1]
            self._reader_task = asyncio.create_task(self._read(reader))
        self.contact = f"sip:{self.user}-ua@{self.host}:{self.local_port}" + (
            "" if self.transport == "udp" else f";transport={self.transport}"
        )
        return self

    async def _read(self, reader: asyncio.StreamReader) -> None:
        parser = SipStreamParser()
        while data := await reader.read(65536):
            self.raw_received.append(data)
            for event in parser.receive_data(data):
                if not isinstance(event, KeepAlivePing):
                    self.received(event)

    def received(self, message: SipRequest | SipResponse) -> None:
        if isinstance(message, SipRequest):
            # Like a real UA's server transaction (RFC 3261 §17.2): a retransmission of a
            # request already seen is not a new request; it gets the answer again, if any.
            key = self._transaction_key(message)
            if key in self._answered:
                answer = self._answered[key]
                if answer is not None:
                    self.send_bytes(answer)
                return
            self._answered[key] = None
            self.requests.put_nowait(message)
        else:
            branch = parse_via(message.get("Via") or "").branch or ""
            self.responses[branch].put_nowait(message)

    async def close(self) -> None:
        if self._udp is not None:
            self._udp.close()
        if self._writer is not None:
            self._writer.close()
            if self._reader_task is not None:
                await asyncio.wait_for(self._reader_task, TIMEOUT)

    def send_bytes(self, data: bytes) -> None:
        if self._udp is not None:
            self._udp.sendto(data, self.server)
        else:
            assert self._writer is not None
            self._writer.write(data)

    # -- requests ---------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The local address as it is written in a URI or Via (IPv6 in brackets)."""
        return f"[{self.local_host}]" if ":" in self.local_host else self.local_host

    def via(self, branch: str) -> str:
        sent_by = f"{self.host}:{self.local_port}"
        return f"SIP/2.0/{self.transport.upper()} {sent_by};branch={branch};rport"

    def build(
        self,
        method: str,
        uri: str,
        *,
        to: str | None = None,
        headers: list[tuple[str, str]] | None = None,
        body: bytes = b"",
        call_id: str | None = None,
        cseq: int | None = None,
    ) -> SipRequest:
        if cseq is None:
            self.cseq += 1
            cseq = self.cseq
        branch = "z9hG4bK" + secrets.token_hex(8)
        h = Headers()
        h.add("Via", self.via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{self.aor}>;tag={secrets.token_hex(4)}")
        h.add("To", f"<{to or self.aor}>")
        h.add(
            "Call-ID", call_id or (self.call_id if method == "REGISTER" else secrets.token_hex(8))
        )
        h.add("CSeq", f"{cseq} {method}")
        h.add("User-Agent", "imstack-test-ua")
        for name, value in headers or []:
            h.add(name, value)
        return SipRequest(method=method, uri=uri, headers=h, body=body)

    async def send(self, request: SipRequest, *, final: bool = True) -> SipResponse:
        branch = parse_via(request.get("Via") or "").branch or ""
        self.send_bytes(request.to_bytes())
        return await self.wait_response(branch, final=final)

    async def wait_response(self, branch: str, *, final: bool = True) -> SipResponse:
        while True:
            response = await asyncio.wait_for(self.responses[branch].get(), TIMEOUT)
            if response.status >= 200 or not final:
                return response

    def authorize(self, request: SipRequest, challenge_response: SipResponse) -> SipRequest:
        """A copy of ``request`` with credentials for the challenge, new branch and CSeq."""
        proxy = challenge_response.status == 407
        challenge = parse_challenge(
            challenge_response.get("Proxy-Authenticate" if proxy else "WWW-Authenticate") or ""
        )
        cnonce = secrets.token_hex(4)
        digest = compute_response(
            challenge.algorithm,
            ha1(challenge.algorithm, self.user, challenge.realm, self.password),
            request.method,
            request.uri,
            challenge.nonce,
            qop="auth",
            nc="00000001",
            cnonce=cnonce,
        )
        credentials = Credentials(
            username=self.user,
            realm=challenge.realm,
            nonce=challenge.nonce,
            uri=request.uri,
            response=digest,
            algorithm=challenge.algorithm,
            qop="auth",
            nc="00000001",
            cnonce=cnonce,
        )
        headers = Headers(
            (n, v) for n, v in request.headers if n not in ("Via", "CSeq", "Authorization")
        )
        self.cseq += 1
        branch = "z9hG4bK" + secrets.token_hex(8)
        headers.prepend("Via", self.via(branch))
        headers.add("CSeq", f"{self.cseq} {request.method}")
        headers.add("Proxy-Authorization" if proxy else "Authorization", credentials.to_header())
        return SipRequest(
            method=request.method, uri=request.uri, headers=headers, body=request.body
        )

    async def send_authenticated(self, request: SipRequest) -> tuple[SipResponse, SipResponse]:
        """Send, answer the challenge; (the challenge, the final response)."""
        first = await self.send(request)
        assert first.status in (401, 407), first
        return first, await self.send(self.authorize(request, first))

    async def register(
        self, expires: int | None = 3600, *, contacts: list[str] | None = None
    ) -> SipResponse:
        headers = [("Contact", f"<{c}>") for c in contacts or [self.contact]]
        if expires is not None:
            headers.append(("Expires", str(expires)))
        request = self.build("REGISTER", f"sip:{self.domain}", headers=headers)
        _, final = await self.send_authenticated(request)
        return final

    async def message(
        self, to: str, body: bytes, content_type: str = "text/plain;charset=UTF-8"
    ) -> SipResponse:
        request = self.build(
            "MESSAGE", to, to=to, headers=[("Content-Type", content_type)], body=body
        )
        _, final = await self.send_authenticated(request)
        return final

    async def next_request(self) -> SipRequest:
        return await asyncio.wait_for(self.requests.get(), TIMEOUT)

    def answer(self, request: SipRequest, status: int) -> None:
        data = make_response(request, status).to_bytes()
        self._answered[self._transaction_key(request)] = data
        self.send_bytes(data)

    @staticmethod
    def _transaction_key(request: SipRequest) -> tuple[str, str]:
        branch = parse_via(request.get("Via") or "").branch or ""
        return branch, request.method
