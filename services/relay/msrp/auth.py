"""MSRP AUTH (RFC 4976 §5): digest against the users table, Expires bounds, Use-Path."""

from __future__ import annotations

import asyncio
import logging
import secrets
from typing import TYPE_CHECKING

import asyncpg

from services.relay.guesses import GuessGuard
from services.relay.msrp.sessions import SessionTable
from shared.config import Settings
from shared.db.users import Address, get_credentials
from shared.digest import AuthResult, DigestParseError, NonceManager, parse_credentials, verify
from shared.msrp import MsrpUri, RemoteProtocolError, RequestHead, parse_uri

if TYPE_CHECKING:
    from services.relay.msrp.connection import MsrpConnection
    from services.relay.msrp.relay import MsrpStats

log = logging.getLogger(__name__)

Answer = tuple[int, str, tuple[tuple[str, str], ...]]


class MsrpAuthenticator:
    """Decides the answer to an AUTH addressed to this relay; issues or refreshes sessions."""

    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool | None,
        sessions: SessionTable,
        stats: MsrpStats,
        guard: GuessGuard | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.sessions = sessions
        self.stats = stats
        #: Shared with the SIP side of the relay: guesses over both protocols add up.
        self.guard = guard or GuessGuard(settings.auth_max_failures, settings.auth_block_seconds)
        # Nonces are signed with a per-process key and bound to one connection.
        self.nonces = NonceManager(secrets.token_bytes(32), lifetime=settings.msrp_nonce_lifetime)

    def base_uri(self, conn: MsrpConnection) -> MsrpUri:
        host = self.settings.msrp_host_name
        return MsrpUri(
            scheme="msrps" if conn.secure else "msrp",
            host=f"[{host}]" if ":" in host and not host.startswith("[") else host,
            port=conn.local[1] or self.settings.msrp_port,
        )

    def challenge(self, conn: MsrpConnection, stale: bool = False) -> tuple[str, str]:
        challenge = self.nonces.challenge(
            asyncio.get_running_loop().time(), _binding(conn), self.settings.domain, stale=stale
        )
        return ("WWW-Authenticate", challenge.to_header())

    async def check(self, conn: MsrpConnection, head: RequestHead) -> Answer:
        settings = self.settings
        if not conn.secure and not settings.msrp_allow_insecure_auth:
            return 403, "AUTH requires TLS (msrps)", ()
        try:
            expires = head.expires
        except RemoteProtocolError:
            return 400, "Bad Expires", ()
        if expires is not None and expires < settings.msrp_auth_min_expires:
            return (
                423,
                "Interval Out Of Bounds",
                (("Min-Expires", str(settings.msrp_auth_min_expires)),),
            )
        if expires is not None and expires > settings.msrp_auth_max_expires:
            return (
                423,
                "Interval Out Of Bounds",
                (("Max-Expires", str(settings.msrp_auth_max_expires)),),
            )
        granted = expires if expires is not None else settings.msrp_auth_max_expires
        authorization = head.get_header("Authorization")
        if authorization is None:
            return 401, "Unauthorized", (self.challenge(conn),)
        try:
            credentials = parse_credentials(authorization)
            named = parse_uri(credentials.uri)
        except (DigestParseError, RemoteProtocolError):
            conn.auth_failures += 1
            return 400, "Bad Authorization", ()
        if named != head.to_path[0]:
            conn.auth_failures += 1
            return 401, "Unauthorized", (self.challenge(conn),)
        source = conn.source or conn.peer
        if self.guard.blocked(credentials.username, source, asyncio.get_running_loop().time()):
            conn.auth_failures += 1
            self.stats.auth_failed += 1
            return 403, "Too many failed attempts, try later", ()
        try:
            address = Address(credentials.username, settings.domain)
            stored = None if self.pool is None else await get_credentials(self.pool, address)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            log.error("AUTH for %s: database unavailable: %s", credentials.username, exc)
            return 403, "Authentication service unavailable", ()
        ha1 = None
        if stored is not None:
            ha1 = stored.ha1_sha256 if credentials.algorithm.value == "SHA-256" else stored.ha1_md5
        result = verify(
            credentials,
            method="AUTH",
            ha1_hex=ha1,
            nonces=self.nonces,
            now=asyncio.get_running_loop().time(),
            binding=_binding(conn),
            realm=settings.domain,
        )
        if result is AuthResult.STALE_NONCE:
            return 401, "Unauthorized", (self.challenge(conn, stale=True),)
        if not result.ok:
            conn.auth_failures += 1
            self.stats.auth_failed += 1
            log.info("%s: AUTH for %s refused (%s)", conn.peer, address, result.value)
            if result is AuthResult.BAD_RESPONSE and stored is not None:  # a wrong password
                self.guard.failed(
                    credentials.username, source, asyncio.get_running_loop().time(), "MSRP"
                )
            return 401, "Unauthorized", (self.challenge(conn),)
        assert stored is not None
        self.guard.succeeded(credentials.username, source)
        if stored.disabled:
            conn.auth_failures += 1
            self.stats.auth_failed += 1
            return 403, "User disabled", ()
        now = asyncio.get_running_loop().time()
        first = head.to_path[0]
        if first.session_id is not None:
            session = self.sessions.get(first.session_id, now)
            if session is None or session.conn is not conn or session.user != str(address):
                return 481, "Session does not exist", ()
            session.expires_at = now + granted  # refresh keeps the same Use-Path
        else:
            session = self.sessions.issue(
                user=str(address),
                base_uri=self.base_uri(conn),
                client_uri=head.from_path[-1],
                conn=conn,
                now=now,
                expires=granted,
            )
            log.info(
                "%s: %s AUTHed, session %s for %ds",
                conn.peer,
                address,
                session.session_id[:6],
                granted,
            )
        self.stats.auth_ok += 1
        return 200, "OK", (("Use-Path", str(session.uri)), ("Expires", str(granted)))


def _binding(conn: MsrpConnection) -> str:
    """Nonces are bound to one connection (RFC 4976 wants them short-lived and local)."""
    return f"{id(conn)}:{conn.peer}"
