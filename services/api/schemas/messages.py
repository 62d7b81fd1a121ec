"""Offline messages: what the API returns about the store (bodies as text or base64)."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from shared.db.offline import OfflineMessage, OfflineState

#: Media types outside text/* whose bodies are text.
TEXTUAL_TYPES = frozenset({"application/json", "application/xml", "message/cpim"})


class BodyEncoding(StrEnum):
    TEXT = "text"
    BASE64 = "base64"


def encode_body(content_type: str, body: bytes) -> tuple[str, BodyEncoding]:
    """The body as text when its type is textual and it decodes in its charset (default
    UTF-8); base64 otherwise."""
    media_type, *params = (part.strip() for part in content_type.split(";"))
    media_type = media_type.lower()
    textual = (
        media_type.startswith("text/")
        or media_type in TEXTUAL_TYPES
        or media_type.endswith(("+xml", "+json"))
    )
    if textual:
        charset = "utf-8"
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "charset" and value.strip():
                charset = value.strip().strip('"')
        try:
            return body.decode(charset), BodyEncoding.TEXT
        except (LookupError, UnicodeDecodeError):
            pass
    return base64.b64encode(body).decode("ascii"), BodyEncoding.BASE64


class MessagePublic(BaseModel):
    id: int
    recipient: str = Field(examples=["alice@example.com"])
    sender_uri: str = Field(examples=["sip:bob@example.com"])
    sender_display: str | None
    received_at: datetime
    expires_at: datetime
    content_type: str = Field(examples=["text/plain;charset=UTF-8"])
    body: str = Field(description="The body: text, or base64 (see body_encoding).")
    body_encoding: BodyEncoding
    state: OfflineState = Field(description="stored, or sending (a delivery is in flight).")
    attempts: int
    last_status: int | None = Field(description="SIP status of the last failed delivery.")

    @classmethod
    def of(cls, message: OfflineMessage) -> MessagePublic:
        body, encoding = encode_body(message.content_type, message.body)
        return cls(
            id=message.id,
            recipient=message.recipient,
            sender_uri=message.sender_uri,
            sender_display=message.sender_display,
            received_at=message.received_at,
            expires_at=message.expires_at,
            content_type=message.content_type,
            body=body,
            body_encoding=encoding,
            state=message.state,
            attempts=message.attempts,
            last_status=message.last_status,
        )


class MessagesPublic(BaseModel):
    """One page of a user's stored messages, oldest first."""

    data: list[MessagePublic]
    count: int = Field(description="Messages stored for the user, on every page.")
    limit: int
    offset: int


class MessageCount(BaseModel):
    count: int = Field(description="Messages stored for the user (expired, unpurged included).")


class MessagesDeleted(BaseModel):
    deleted: int


class MessagesPurged(BaseModel):
    purged: int = Field(description="Messages deleted.")
    batches: int = Field(description="Transactions it took.")
