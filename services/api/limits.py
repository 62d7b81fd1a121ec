"""A cap on request bodies, enforced before anything reads them (security review G9).

A body over the cap is refused 413 with the API's error body: at once when its
Content-Length says so, else as soon as the bytes received pass the cap (reading the body
then raises instead of returning more input). Nothing is buffered here."""

from __future__ import annotations

import logging

from fastapi import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from services.api.errors import error_response

log = logging.getLogger("imstack.api")


def too_large(limit: int) -> str:
    return f"the request body is larger than {limit} bytes"


class BodyLimitMiddleware:
    """Refuses request bodies over ``limit`` bytes with 413 (pure ASGI)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.limit:
            log.info("refused %s %s: a %d-byte body", scope["method"], scope["path"], declared)
            response = error_response(413, too_large(self.limit), "payload_too_large")
            await response(scope, receive, send)
            return
        received = 0

        async def receive_counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    # FastAPI passes its own HTTPException on to the error handlers (413).
                    raise HTTPException(413, too_large(self.limit))
            return message

        await self.app(scope, receive_counted, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # not a length: the HTTP server refuses it
    return None
