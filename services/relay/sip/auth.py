"""Digest authentication of SIP requests against the ``users`` table (RFC 3261 §22).

The registrar challenges with 401 + WWW-Authenticate, the proxy with 407 +
Proxy-Authenticate (§22.3). The realm is the served domain; HA1 comes from the users
table through the credential cache (a digest that does not match a cached HA1 is checked
again against the table, so a password change is honoured at once). Nonces are bound to
the connection (TCP/TLS) or the source address (UDP). The credentials' ``uri`` must be
the Request-URI (RFC 2617 §3.2.2.5: else 400), so a captured header cannot be moved to
another target; credentials without ``qop`` are good for one request per nonce.
"""

from __future__ import annotations

import logging
import time
from typing import Final

from services.relay.guesses import GuessGuard
from services.relay.sip.caches import CredentialCache
from services.relay.sip.transport import Flow
from shared.config import Settings
from shared.db.users import Address
from shared.db.users import Credentials as StoredCredentials
from shared.digest import (
    Algorithm,
    AuthResult,
    Credentials,
    DigestParseError,
    NonceManager,
    parse_credentials,
    verify,
)
from shared.record import Record
from shared.sip.headers import make_response
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UriError, parse_uri

log = logging.getLogger(__name__)


class Authenticated(Record):
    """The request carries valid credentials of ``username`` (in the served domain)."""

    _fields = ("username",)

    def __init__(self, username: str) -> None:
        self.username: Final = username


def nonce_binding(flow: Flow) -> str:
    return flow.connection_id or f"{flow.transport}:{flow.host}"


class DigestAuthenticator:
    def __init__(
        self,
        settings: Settings,
        credentials: CredentialCache,
        nonces: NonceManager,
        guard: GuessGuard | None = None,
    ) -> None:
        self.settings = settings
        self.credentials = credentials
        self.nonces = nonces
        #: Shared with the MSRP side of the relay: guesses over both protocols add up.
        self.guard = guard or GuessGuard(settings.auth_max_failures, settings.auth_block_seconds)

    def challenge(
        self, request: SipRequest, flow: Flow, *, proxy: bool, stale: bool = False
    ) -> SipResponse:
        challenge = self.nonces.challenge(
            time.time(),
            nonce_binding(flow),
            self.settings.domain,
            algorithm=Algorithm.MD5,  # what every client speaks; SHA-256 is verified too
            stale=stale,
        )
        name = "Proxy-Authenticate" if proxy else "WWW-Authenticate"
        return make_response(
            request, 407 if proxy else 401, headers=[(name, challenge.to_header())]
        )

    async def authenticate(
        self, request: SipRequest, flow: Flow, *, proxy: bool
    ) -> Authenticated | SipResponse:
        """The authenticated user, or the response to send (challenge, 400 or 403)."""
        header = "Proxy-Authorization" if proxy else "Authorization"
        credentials: Credentials | None = None
        for value in request.headers.raw(header):
            try:
                parsed = parse_credentials(value)
            except DigestParseError as exc:
                log.info("bad %s from %s: %s", header, flow, exc)
                return make_response(request, 400)
            if parsed.realm == self.settings.domain:
                credentials = parsed
                break
        if credentials is None:
            return self.challenge(request, flow, proxy=proxy)
        if not _same_uri(credentials.uri, request.uri):
            log.info(
                "%s: %s digest uri %r is not the Request-URI", flow, request.method, credentials.uri
            )
            return make_response(request, 400, "Digest URI Does Not Match Request-URI")
        address = Address(credentials.username, self.settings.domain)
        guard = self.guard
        if guard.blocked(credentials.username, flow.host, time.monotonic()):
            return make_response(request, 403, "Too Many Failed Attempts")
        held = self.credentials.peek(address)
        stored = held.value if held is not None else await self.credentials.get(address)
        result = self._verify(request, flow, credentials, stored)
        if result in (AuthResult.UNKNOWN_USER, AuthResult.BAD_RESPONSE):
            # What we hold may predate a change whose NOTIFY has not arrived yet.
            stored = await self.credentials.get(address, fresh=True)
            result = self._verify(request, flow, credentials, stored)
        if result is AuthResult.OK:
            assert stored is not None
            if stored.disabled:
                log.info("%s: user %s is disabled", flow, credentials.username)
                return make_response(request, 403, "Account Disabled")
            guard.succeeded(credentials.username, flow.host)
            return Authenticated(credentials.username)
        if result is AuthResult.STALE_NONCE:
            return self.challenge(request, flow, proxy=proxy, stale=True)
        log.info(
            "%s: %s for %s refused (%s)", flow, request.method, credentials.username, result.value
        )
        if result is AuthResult.BAD_RESPONSE and stored is not None:  # a wrong password
            guard.failed(credentials.username, flow.host, time.monotonic(), "SIP")
        return self.challenge(request, flow, proxy=proxy)

    def _verify(
        self,
        request: SipRequest,
        flow: Flow,
        credentials: Credentials,
        stored: StoredCredentials | None,
    ) -> AuthResult:
        ha1_hex: str | None = None
        if stored is not None:
            md5 = credentials.algorithm is Algorithm.MD5
            ha1_hex = stored.ha1_md5 if md5 else stored.ha1_sha256
        return verify(
            credentials,
            method=request.method,
            ha1_hex=ha1_hex,
            nonces=self.nonces,
            now=time.time(),
            binding=nonce_binding(flow),
            realm=self.settings.domain,
        )


def _same_uri(digest_uri: str, request_uri: str) -> bool:
    """RFC 2617 §3.2.2.5: the digest-uri names the Request-URI's resource (the same text,
    or equivalent SIP URIs, RFC 3261 §19.1.4)."""
    if digest_uri == request_uri:
        return True
    try:
        a, b = parse_uri(digest_uri), parse_uri(request_uri)
    except UriError:
        return False
    return isinstance(a, SipUri) and isinstance(b, SipUri) and a.equivalent_to(b)
