"""A small MSRP client for the relay tests, built on the sans-IO core."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from dataclasses import dataclass, field

from shared.digest import Algorithm, compute_response, parse_challenge
from shared.msrp import (
    BodyData,
    Continuation,
    EndOfMessage,
    MsrpParser,
    MsrpUri,
    RequestHead,
    ResponseHead,
    make_response,
    new_message_id,
    new_transaction_id,
    parse_uri,
    serialize_message,
)


@dataclass
class Received:
    head: RequestHead | ResponseHead
    body: bytearray = field(default_factory=bytearray)
    end: Continuation = "$"

    @property
    def is_response(self) -> bool:
        return isinstance(self.head, ResponseHead)


class MsrpTestClient:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        uri: MsrpUri,
        *,
        auto_answer: bool = True,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.uri = uri
        self.auto_answer = auto_answer
        self.parser = MsrpParser()
        self.requests: asyncio.Queue[Received] = asyncio.Queue()
        self.responses: dict[str, asyncio.Future[Received]] = {}
        self.unexpected_responses: list[Received] = []
        self.closed = asyncio.Event()
        self.use_path: tuple[MsrpUri, ...] = ()
        self._task = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        host: str,
        port: int,
        *,
        name: str = "client",
        tls: ssl.SSLContext | None = None,
        auto_answer: bool = True,
        source: str | None = None,
    ) -> MsrpTestClient:
        """``source``: the local address to connect from (another loopback address)."""
        reader, writer = await asyncio.open_connection(
            host, port, ssl=tls, limit=1 << 20, local_addr=(source, 0) if source else None
        )
        local = writer.get_extra_info("sockname")
        scheme = "msrps" if tls else "msrp"
        h = f"[{local[0]}]" if ":" in local[0] else local[0]
        uri = parse_uri(f"{scheme}://{h}:{local[1]}/{name}{new_transaction_id()[:6]};tcp")
        return cls(reader, writer, uri, auto_answer=auto_answer)

    async def _read(self) -> None:
        current: Received | None = None
        try:
            while data := await self.reader.read(65536):
                self.parser.receive_data(data)
                for event in self.parser.events():
                    if isinstance(event, RequestHead | ResponseHead):
                        current = Received(event)
                    elif isinstance(event, BodyData):
                        assert current is not None
                        current.body += event.data
                    elif isinstance(event, EndOfMessage):
                        assert current is not None
                        current.end = event.continuation
                        self._deliver(current)
                        current = None
        except (ConnectionError, OSError):
            pass
        finally:
            self.closed.set()
            for fut in self.responses.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("closed"))

    def _deliver(self, message: Received) -> None:
        head = message.head
        if isinstance(head, ResponseHead):
            fut = self.responses.pop(head.transaction_id, None)
            if fut is None:
                self.unexpected_responses.append(message)
            elif not fut.done():
                fut.set_result(message)
            return
        if self.auto_answer and head.method == "SEND":
            self.write(serialize_message(make_response(head, 200, "OK", from_uri=self.uri)))
        self.requests.put_nowait(message)

    def write(self, data: bytes) -> None:
        self.writer.write(data)

    async def request(
        self,
        method: str,
        to_path: tuple[MsrpUri, ...],
        *,
        headers: tuple[tuple[str, str], ...] = (),
        body: bytes = b"",
        from_path: tuple[MsrpUri, ...] | None = None,
        expect_response: bool = True,
        timeout: float = 10,
    ) -> Received | None:
        tid = new_transaction_id()
        head = RequestHead(
            tid, method, to_path, from_path or (self.uri,), headers, has_body=bool(body)
        )
        fut: asyncio.Future[Received] | None = None
        if expect_response:
            fut = asyncio.get_running_loop().create_future()
            self.responses[tid] = fut
        self.write(serialize_message(head, body))
        await self.writer.drain()
        if fut is None:
            return None
        return await asyncio.wait_for(fut, timeout)

    async def send_text(
        self,
        to_path: tuple[MsrpUri, ...],
        text: bytes,
        *,
        extra: tuple[tuple[str, str], ...] = (),
        expect_response: bool = True,
    ) -> Received | None:
        total = len(text)
        headers = (
            ("Message-ID", new_message_id()),
            ("Byte-Range", f"1-{total}/{total}"),
            *extra,
            ("Content-Type", "text/plain"),
        )
        return await self.request(
            "SEND", to_path, headers=headers, body=text, expect_response=expect_response
        )

    async def auth(
        self,
        relay: MsrpUri,
        user: str,
        password: str,
        *,
        expires: int | None = None,
        realm_user: str | None = None,
    ) -> Received:
        extra: tuple[tuple[str, str], ...] = ()
        if expires is not None:
            extra = (("Expires", str(expires)),)
        first = await self.request("AUTH", (relay,), headers=extra)
        assert first is not None
        if first.head.status != 401:  # type: ignore[union-attr]
            return first
        challenge = parse_challenge(first.head.get_header("WWW-Authenticate") or "")
        ha1 = Algorithm(challenge.algorithm).hash_hex(
            f"{realm_user or user}:{challenge.realm}:{password}"
        )
        cnonce, nc = "0a4f113b", "00000001"
        response = compute_response(
            challenge.algorithm,
            ha1,
            "AUTH",
            str(relay),
            challenge.nonce,
            qop="auth",
            nc=nc,
            cnonce=cnonce,
        )
        authorization = (
            f'Digest username="{realm_user or user}", realm="{challenge.realm}", '
            f'nonce="{challenge.nonce}", uri="{relay}", response="{response}", '
            f'algorithm={challenge.algorithm.value}, qop=auth, nc={nc}, cnonce="{cnonce}"'
        )
        second = await self.request(
            "AUTH", (relay,), headers=(("Authorization", authorization), *extra)
        )
        assert second is not None
        use_path = second.head.use_path
        if use_path:
            self.use_path = use_path
        return second

    async def next_request(self, timeout: float = 10) -> Received:
        return await asyncio.wait_for(self.requests.get(), timeout)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
            await self.writer.wait_closed()
        self._task.cancel()
