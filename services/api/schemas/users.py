"""Users: what the API accepts and returns. Passwords are write-only; no response model has a
field for a password or a digest HA1."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

from shared.db.users import User

# Display names end up in SIP From headers and in MSRP/SIP message text: no control characters.
DisplayName = Annotated[
    str, Field(max_length=200, pattern=r"^[^\x00-\x1f\x7f]*$", examples=["Alice Liddell"])
]
Email = Annotated[
    str,
    Field(
        max_length=254,
        pattern=r"^[^@\s\x00-\x1f\x7f]+@[^@\s\x00-\x1f\x7f]+$",
        examples=["alice@mail.example.com"],
    ),
]
Password = Annotated[
    SecretStr,
    Field(
        min_length=1,
        max_length=1024,
        description="Write-only; never returned. At least IMSTACK_PASSWORD_MIN_LENGTH "
        "(default 10) characters and not the user name or address, else 422 weak_password.",
    ),
]
AddressText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=320,
        pattern=r"^[^\x00-\x1f\x7f]*$",
        description="user@domain (sip: prefix allowed), or a bare user name for the "
        "server's domain.",
        examples=["alice@example.com"],
    ),
]
UserName = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^@\s\x00-\x1f\x7f]+$")]
DomainName = Annotated[str, Field(min_length=1, max_length=253, pattern=r"^[^@\s\x00-\x1f\x7f]+$")]


class UserCreate(BaseModel):
    """Either ``address`` or ``username`` (with ``domain``, default the server's domain)."""

    model_config = ConfigDict(extra="forbid")

    address: AddressText | None = None
    username: UserName | None = None
    domain: DomainName | None = None
    password: Password
    display_name: DisplayName | None = None
    email: Email | None = None
    notify_email: bool = Field(
        True, description="E-mail the user about messages stored while they are offline."
    )

    @model_validator(mode="after")
    def _one_way_to_name(self) -> UserCreate:
        if (self.address is None) == (self.username is None):
            raise ValueError("give either address or username (with an optional domain)")
        if self.address is not None and self.domain is not None:
            raise ValueError("domain goes with username, not with address")
        return self


class UserUpdate(BaseModel):
    """The profile fields to change; a field left out stays as it is, ``null`` clears it."""

    model_config = ConfigDict(extra="forbid")

    display_name: DisplayName | None = None
    email: Email | None = None
    notify_email: bool = Field(
        True, description="E-mail the user about messages stored while they are offline."
    )


class PasswordSet(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: Password


class UserPublic(BaseModel):
    address: str = Field(examples=["alice@example.com"])
    username: str
    domain: str
    display_name: str | None
    email: str | None
    notify_email: bool
    disabled: bool
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, user: User) -> UserPublic:
        return cls(
            address=str(user.address),
            username=user.username,
            domain=user.domain,
            display_name=user.display_name,
            email=user.email,
            notify_email=user.notify_email,
            disabled=user.disabled,
            created_at=user.created_at,
            updated_at=user.updated_at,
        )


class UsersPublic(BaseModel):
    """One page of users and how many match the filters in all."""

    data: list[UserPublic]
    count: int = Field(description="Users matching the filters, on every page.")
    limit: int
    offset: int
