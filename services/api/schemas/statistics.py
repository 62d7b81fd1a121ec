"""Statistics across the services: counts the database holds, and the event counters each
live service instance publishes (``service_stats``)."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

#: A published counter: a number, or a labelled family ``{label: number}``.
CounterValue = int | dict[str, int]


class RegistrationStats(BaseModel):
    bindings: int = Field(description="Unexpired bindings in the location table.")
    users: int = Field(description="Distinct users with at least one binding.")


class MsrpStatistics(BaseModel):
    connections_open: int = Field(description="MSRP connections open now (live relays).")
    connections: int = Field(description="MSRP connections accepted or opened since start.")
    sessions: int = Field(description="Live MSRP sessions (Use-Paths issued, not expired).")
    auth_ok: int
    auth_failed: int
    requests_relayed: int
    bytes_relayed: int = Field(description="Message body bytes relayed since start.")


class MessageStatistics(BaseModel):
    stored: int = Field(description="Messages in the offline store now.")
    stored_recipients: int = Field(description="Users with stored messages now.")
    stored_since_start: int = Field(description="MESSAGEs the relays stored (202) since start.")
    relayed: int = Field(description="MESSAGEs forwarded to a registered user (2xx).")
    to_rooms: int = Field(description="MESSAGEs handed to the chat rooms.")
    delivered: int = Field(description="Stored messages delivered by msilo.")
    delivery_failed: int = Field(description="Failed delivery attempts of stored messages.")
    expired: int = Field(description="Stored messages that expired undelivered.")
    undeliverable: int = Field(
        description="Stored messages given up undelivered after IMSTACK_MSILO_MAX_ATTEMPTS "
        "permanent refusals by the recipient's client.",
    )
    outbound_pending: int = Field(
        description="MESSAGEs queued for the relays to send (deliveries, fan-out, notices) "
        "and not sent yet, now."
    )


class RoomStatistics(BaseModel):
    rooms: int = Field(description="Rooms now.")
    private: int = Field(description="Private rooms now.")
    members: int = Field(description="Active members (not invited, not banned) now.")
    handled: int = Field(description="Room MESSAGEs (chat and commands) imc handled.")
    fanned_out: int = Field(description="Chat copies queued for members (fan-out).")
    stored_offline: int = Field(description="Chat copies moved to the offline store.")
    commands: dict[str, int] = Field(description="Commands run, by name (chat: plain chat).")


class EmailStatistics(BaseModel):
    sent: int
    failed: int


class InstancePublic(BaseModel):
    service: str
    instance: str
    started_at: datetime
    updated_at: datetime = Field(description="When the instance last published.")
    counters: dict[str, CounterValue] = Field(description="Event counts since it started.")
    gauges: dict[str, float] = Field(description="Current values.")


class StatisticsPublic(BaseModel):
    """Counts from the tables are exact now; event counts are since each live instance
    started, summed, as of its last publish (IMSTACK_STATS_INTERVAL)."""

    users: int
    registrations: RegistrationStats
    msrp: MsrpStatistics
    messages: MessageStatistics
    rooms: RoomStatistics
    emails: EmailStatistics
    totals: dict[str, dict[str, CounterValue]] = Field(
        description="Every published counter summed per service over its live instances."
    )
    services: list[InstancePublic] = Field(description="The live service instances.")
