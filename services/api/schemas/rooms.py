"""Rooms and their members: what the API accepts and returns."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from services.api.schemas.messages import BodyEncoding, encode_body
from services.api.schemas.users import AddressText
from shared.db.rooms import HistoryMessage, MemberRow, Role, RoomSummary

RoomName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=200,
        pattern=r"^[^\x00-\x1f\x7f\s@:]+(@[^\x00-\x1f\x7f\s@]+)?$",
        description="The room's name, or name@<conference domain>; compared without case.",
        examples=["lobby"],
    ),
]
Topic = Annotated[str, Field(max_length=500, pattern=r"^[^\x00-\x1f\x7f]*$")]
MemberLimit = Annotated[
    int,
    Field(
        ge=0,
        le=1_000_000,
        description="Most members that have joined (owners and admins too, not the invited); "
        "0: no limit; null: IMSTACK_IMC_MEMBER_LIMIT.",
    ),
]
HistoryLength = Annotated[
    int,
    Field(
        ge=0,
        le=1000,
        description="Chat messages kept and replayed to whoever joins; 0: none; "
        "null: IMSTACK_IMC_HISTORY.",
    ),
]


class RoleName(StrEnum):
    """The roles ``#modify`` can give."""

    OWNER = "owner"
    ADMIN = "admin"
    MEMBER = "member"


class RoomCreate(BaseModel):
    """A persistent room, as ``#create`` makes it: the owner is its first member."""

    model_config = ConfigDict(extra="forbid")

    name: RoomName
    owner: AddressText
    private: bool = Field(False, description="By invitation only; listed only to members.")
    topic: Topic | None = None
    member_limit: MemberLimit | None = None
    history_length: HistoryLength | None = None


class RoomUpdate(BaseModel):
    """The options to change; a field left out stays as it is, a ``null`` topic clears it,
    a ``null`` member limit or history length gives the room the setting's default."""

    model_config = ConfigDict(extra="forbid")

    private: bool | None = None
    topic: Topic | None = None
    member_limit: MemberLimit | None = None
    history_length: HistoryLength | None = None


class RoomPublic(BaseModel):
    name: str = Field(examples=["lobby"])
    domain: str = Field(examples=["conference.example.com"])
    address: str = Field(examples=["lobby@conference.example.com"])
    uri: str = Field(examples=["sip:lobby@conference.example.com"])
    owner: str = Field(description="Who created the room.")
    private: bool
    topic: str | None
    member_limit: int | None = Field(
        description="Most joined members; 0: no limit; null: IMSTACK_IMC_MEMBER_LIMIT."
    )
    history_length: int | None = Field(
        description="Chat messages kept and replayed; null: IMSTACK_IMC_HISTORY."
    )
    member_count: int = Field(description="Members that have joined (owners and admins too).")
    invited_count: int = Field(description="Invited users that have not accepted yet.")
    created_at: datetime

    @classmethod
    def of(cls, room: RoomSummary) -> RoomPublic:
        return cls(
            name=room.name,
            domain=room.domain,
            address=room.key,
            uri=f"sip:{room.key}",
            owner=room.owner,
            private=room.private,
            topic=room.topic,
            member_limit=room.member_limit,
            history_length=room.history_length,
            member_count=room.member_count,
            invited_count=room.invited_count,
            created_at=room.created_at,
        )


class RoomsPublic(BaseModel):
    """One page of rooms and how many match the filters in all."""

    data: list[RoomPublic]
    count: int = Field(description="Rooms matching the filters, on every page.")
    limit: int
    offset: int


class MemberCreate(BaseModel):
    """``#add``: the user becomes a member at once."""

    model_config = ConfigDict(extra="forbid")

    user: AddressText


class InvitationCreate(BaseModel):
    """``#invite``: the user is sent an invitation to accept (``#accept``) or reject."""

    model_config = ConfigDict(extra="forbid")

    user: AddressText
    inviter: AddressText | None = Field(
        None,
        description="An owner or admin of the room the invitation names; default: "
        "the room's first owner.",
    )


class MemberUpdate(BaseModel):
    """``#modify``."""

    model_config = ConfigDict(extra="forbid")

    role: RoleName


class MemberPublic(BaseModel):
    address: str = Field(examples=["alice@example.com"])
    role: Role = Field(description="owner, admin, member, or invited (not yet accepted).")
    state: str = Field(description="active, or banned (kept out of the room).")
    invited_by: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, member: MemberRow) -> MemberPublic:
        return cls(
            address=member.member,
            role=member.role,
            state=member.state,
            invited_by=member.invited_by,
            created_at=member.created_at,
            updated_at=member.updated_at,
        )


class MembersPublic(BaseModel):
    """Every member of a room, in the order they were added."""

    data: list[MemberPublic]
    count: int


class BanCreate(BaseModel):
    """``#ban``: the user is put out of the room (a membership or invitation becomes the
    ban) and cannot join, be added or invited until unbanned."""

    model_config = ConfigDict(extra="forbid")

    user: AddressText


class HistoryMessagePublic(BaseModel):
    """A chat message kept in the room's history, as its sender wrote it."""

    id: int
    sender: str = Field(examples=["alice@example.com"])
    content_type: str = Field(examples=["text/plain"])
    body: str = Field(description="The body: text, or base64 (see body_encoding).")
    body_encoding: BodyEncoding
    sent_at: datetime

    @classmethod
    def of(cls, message: HistoryMessage) -> HistoryMessagePublic:
        body, encoding = encode_body(message.content_type, message.body)
        return cls(
            id=message.id,
            sender=message.sender,
            content_type=message.content_type,
            body=body,
            body_encoding=encoding,
            sent_at=message.sent_at,
        )


class HistoryPublic(BaseModel):
    """One page of the room's history: ``offset`` skips the newest messages, ``data`` is
    oldest first. Only the newest IMSTACK_IMC_HISTORY messages are kept (0: none)."""

    data: list[HistoryMessagePublic]
    count: int = Field(description="Messages in the room's history, on every page.")
    limit: int
    offset: int
