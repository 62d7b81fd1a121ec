"""SIP protocol errors (h11 style: each carries the status the peer should get).

Mirrors ``shared.msrp.errors``: keyword-only ``status_hint``; a remote error
also carries whatever of the message could be parsed (``partial``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from shared.sip.message import SipRequest, SipResponse

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class for SIP protocol violations."""

    def __init__(self, message: str, *, status_hint: int = 400) -> None:
        super().__init__(message)
        #: The SIP status a request should be answered with (RFC 3261 §21).
        self.status_hint = status_hint


class LocalProtocolError(ProtocolError):
    """We were asked to send something SIP does not allow (a bug on our side)."""

    def __init__(self, message: str, *, status_hint: int = 500) -> None:
        super().__init__(message, status_hint=status_hint)


class RemoteProtocolError(ProtocolError):
    """The peer sent something we cannot accept.

    ``partial`` holds what could be parsed (start line and headers, empty
    body), or None when not even the start line could be read. If it is a
    request with Via, From, To, Call-ID and CSeq, a server can still answer
    it with ``status_hint`` via ``headers.make_response`` (RFC 3261 §8.2.6).
    """

    def __init__(
        self,
        message: str,
        *,
        status_hint: int = 400,
        partial: SipRequest | SipResponse | None = None,
    ) -> None:
        super().__init__(message, status_hint=status_hint)
        self.partial = partial
