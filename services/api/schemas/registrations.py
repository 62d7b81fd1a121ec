"""Registrations: a user's current bindings (RFC 3261 §10), as the API returns them."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from shared.db.locations import Binding


class RegistrationPublic(BaseModel):
    id: int = Field(description="The binding's id (to remove it).")
    contact: str = Field(examples=["sip:alice@192.0.2.10:5060;transport=udp"])
    transport: str = Field(description="udp, tcp or tls.")
    source: str = Field(description="Where the REGISTER came from (host:port).")
    expires: int = Field(description="Seconds left before the binding expires.")
    expires_at: datetime
    user_agent: str | None
    q: float
    instance_id: str | None = Field(description="+sip.instance (RFC 5626), if any.")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, binding: Binding) -> RegistrationPublic:
        host = binding.source_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # IPv6
        return cls(
            id=binding.id,
            contact=binding.contact,
            transport=binding.transport,
            source=f"{host}:{binding.source_port}",
            expires=binding.expires_in,
            expires_at=binding.expires_at,
            user_agent=binding.user_agent,
            q=binding.q,
            instance_id=binding.instance_id,
            created_at=binding.created_at,
            updated_at=binding.updated_at,
        )


class RegistrationsPublic(BaseModel):
    """A user's unexpired bindings, best first (highest q, then most recently refreshed)."""

    data: list[RegistrationPublic]
    count: int
