"""Offline messages: what the API returns about the store (bodies as text or base64); what
it accepts to send a message and what it answers."""

from __future__ import annotations

import base64
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from services.api.schemas.users import AddressText, DisplayName
from shared.db.offline import OfflineMessage, OfflineState

#: Most characters of a sent body as given (base64 included): 64 KiB of bytes and more.
MAX_BODY_TEXT = 100_000

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


MediaType = Annotated[
    str,
    Field(
        min_length=3,
        max_length=200,
        pattern=r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+(\s*;\s*[A-Za-z0-9!#$&^_.+-]+=[^\x00-\x1f\x7f;]+)*$",
        description="The MESSAGE's Content-Type.",
        examples=["text/plain;charset=UTF-8"],
    ),
]
SenderText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=320,
        pattern=r"^(sips?:)?[A-Za-z0-9._~!$&'()*+,=%-]+(@[A-Za-z0-9.-]+)?$",
        description="sip:user@domain (or user@domain, or a bare user name of the server's "
        "domain). For a room, a user of the server's "
        "domain (the room's members see it as the author).",
        examples=["sip:alice@example.com"],
    ),
]


class MessageSend(BaseModel):
    """A MESSAGE to a user or a room, routed as the relay routes one: to a registered user it
    is sent now (and stored offline if that fails), to an unregistered user it is stored for
    delivery on registration, to a room it is handed to the room worker for fan-out.

    Fields may be added later (e.g. an optional send time): clients that leave them out
    keep today's behaviour."""

    model_config = ConfigDict(extra="forbid")

    to: AddressText = Field(
        description="A user (user@domain, sip:user@domain, or a bare user name of the "
        "server's domain) or a room (name@<conference domain>).",
        examples=["bob@example.com"],
    )
    sender: SenderText | None = Field(
        None,
        description="Who the MESSAGE is from; default: the system address "
        "(IMSTACK_MSILO_NOTICE_FROM, else sip:<domain>). Required for a room.",
    )
    sender_display: DisplayName | None = Field(None, description="The From display name.")
    content_type: MediaType = "text/plain;charset=UTF-8"
    body: str = Field(
        min_length=1,
        max_length=MAX_BODY_TEXT,
        description="The body: text (sent UTF-8 encoded), or base64 (see body_encoding).",
    )
    body_encoding: BodyEncoding = BodyEncoding.TEXT
    deliver_at: AwareDatetime | None = Field(
        None,
        description="Scheduled delivery (to a user; not to a room): the message is stored and "
        "delivered once this time has come and the recipient is registered, in order with "
        "their other stored messages. It expires IMSTACK_MSILO_EXPIRE after this time. A "
        "time already past means now.",
        examples=["2030-01-01T09:00:00Z"],
    )


class SendOutcome(StrEnum):
    QUEUED = "queued"  # the recipient is registered: the relay sends it now
    STORED = "stored"  # not registered: msilo delivers it on registration
    SCHEDULED = "scheduled"  # stored until deliver_at (and the recipient's registration)
    ROOM = "room"  # handed to the room worker, which fans it out to the members


class MessageSent(BaseModel):
    """What happened to a sent message (202: accepted, delivery is asynchronous)."""

    outcome: SendOutcome = Field(
        description="queued: the recipient is registered and the relay sends it now (if that "
        "fails it is stored offline); stored: kept in the offline store until the recipient "
        "registers (or, registered, behind their stored messages still being delivered); "
        "scheduled: stored until deliver_at; room: queued for the room, whose worker fans "
        "it out to the members."
    )
    recipient: str = Field(examples=["bob@example.com"])
    sender: str = Field(description="The From URI used.", examples=["sip:alice@example.com"])
    outbound_id: int | None = Field(None, description="The queued delivery (outcome queued).")
    offline_id: int | None = Field(
        None, description="The stored message (outcome stored or scheduled)."
    )
    room_inbox_id: int | None = Field(None, description="The queued room message (outcome room).")
