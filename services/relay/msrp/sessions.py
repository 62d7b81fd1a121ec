"""Relay sessions: the Use-Path URIs this relay issued after a successful AUTH (RFC 4976 §5).

A session binds an unguessable session-id to the connection the client AUTHed on and to the
client's URI; it lives until its Expires runs out or that connection closes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from shared.msrp import MsrpUri, new_session_id

if TYPE_CHECKING:
    from services.relay.msrp.connection import MsrpConnection


def same_endpoint(a: MsrpUri, b: MsrpUri) -> bool:
    """Scheme, host and port agree (RFC 4975 §6.1 rules, session-id ignored): the same
    client, even when it uses a different session URI for each of its chats."""
    ka, kb = a.comparison_key(), b.comparison_key()
    return ka[0] == kb[0] and ka[1] == kb[1] and a.effective_port == b.effective_port


@dataclass(eq=False)
class RelaySession:
    session_id: str
    user: str
    uri: MsrpUri  # the Use-Path URI handed to the client
    client_uri: MsrpUri  # the AUTH's From-Path (the client itself)
    conn: MsrpConnection
    expires_at: float
    created_at: float


@dataclass
class SessionTable:
    """Issued sessions by id, and by connection (to drop them when it closes)."""

    _by_id: dict[str, RelaySession] = field(default_factory=dict)
    _by_conn: dict[MsrpConnection, set[str]] = field(default_factory=dict)
    #: Set when a session is issued or dropped (the API's published copy follows).
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def issue(
        self,
        *,
        user: str,
        base_uri: MsrpUri,
        client_uri: MsrpUri,
        conn: MsrpConnection,
        now: float,
        expires: int,
    ) -> RelaySession:
        session_id = new_session_id()
        while session_id in self._by_id:  # pragma: no cover - 142 random bits
            session_id = new_session_id()
        uri = MsrpUri(
            scheme=base_uri.scheme,
            host=base_uri.host,
            port=base_uri.port,
            session_id=session_id,
            transport="tcp",
        )
        session = RelaySession(session_id, user, uri, client_uri, conn, now + expires, now)
        self._by_id[session_id] = session
        self._by_conn.setdefault(conn, set()).add(session_id)
        self.changed.set()
        return session

    def get(self, session_id: str | None, now: float) -> RelaySession | None:
        """The live session with this id; an expired one is removed and not returned."""
        if session_id is None:
            return None
        session = self._by_id.get(session_id)
        if session is not None and session.expires_at <= now:
            self.remove(session)
            return None
        return session

    def remove(self, session: RelaySession) -> None:
        self.changed.set()
        self._by_id.pop(session.session_id, None)
        ids = self._by_conn.get(session.conn)
        if ids is not None:
            ids.discard(session.session_id)
            if not ids:
                del self._by_conn[session.conn]

    def drop_connection(self, conn: MsrpConnection) -> list[RelaySession]:
        dropped = [self._by_id.pop(sid) for sid in self._by_conn.pop(conn, set())]
        self.changed.set()
        return dropped

    def has_sessions(self, conn: MsrpConnection) -> bool:
        return conn in self._by_conn

    def purge_expired(self, now: float) -> int:
        expired = [s for s in self._by_id.values() if s.expires_at <= now]
        for session in expired:
            self.remove(session)
        return len(expired)

    def __iter__(self) -> Iterator[RelaySession]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
