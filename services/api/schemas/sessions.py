"""MSRP sessions: the relay's live sessions (RFC 4976 §5), like Kamailio's ``msrp.cmaplist``."""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel, Field

from shared.db.msrp_sessions import MsrpSession


class MsrpSessionPublic(BaseModel):
    session_id: str = Field(description="The session-id of the Use-Path the relay issued.")
    user: str = Field(description="Who AUTHed (user@domain).", examples=["alice@example.com"])
    peer: str = Field(description="The client's address (host:port of its connection).")
    transport: str = Field(description="tcp or tls (msrps).")
    use_path: str = Field(description="The Use-Path URI handed to the client.")
    client_uri: str = Field(description="The client's own URI (the AUTH's From-Path).")
    created_at: datetime
    expires_at: datetime
    expires: int = Field(description="Seconds left before the session expires.")
    bytes_in: int = Field(
        description="Bytes received from the client on the session's connection (written by "
        "the relay once per IMSTACK_STATS_INTERVAL; sessions sharing a connection share it)."
    )
    bytes_out: int = Field(description="Bytes sent to the client on that connection.")
    relay_instance: str = Field(description="The relay process holding the session.")
    updated_at: datetime = Field(description="When the relay last wrote this row.")

    @classmethod
    def of(cls, session: MsrpSession, now: datetime | None = None) -> MsrpSessionPublic:
        left = (session.expires_at - (now or datetime.now(UTC))).total_seconds()
        return cls(
            session_id=session.session_id,
            user=session.aor,
            peer=session.peer,
            transport=session.transport,
            use_path=session.use_path,
            client_uri=session.client_uri,
            created_at=session.created_at,
            expires_at=session.expires_at,
            expires=max(0, int(left)),
            bytes_in=session.bytes_in,
            bytes_out=session.bytes_out,
            relay_instance=session.relay_instance,
            updated_at=session.updated_at,
        )


class MsrpSessionsPublic(BaseModel):
    """One page of live sessions (newest first) and how many match in all."""

    data: list[MsrpSessionPublic]
    count: int = Field(description="Sessions matching the filter, on every page.")
    limit: int
    offset: int
