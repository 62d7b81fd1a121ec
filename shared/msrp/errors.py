"""MSRP protocol errors (h11-style split between local and remote faults).

Every error carries the status the peer should get (``status_hint``) and, when
it could be read, the transaction id of the offending request, so that a relay
can answer ``MSRP <tid> 400`` instead of just closing the connection
(RFC 4975 §7.3: a malformed request whose paths could be read gets a 400).
"""

from __future__ import annotations

__all__ = ["LocalProtocolError", "ProtocolError", "RemoteProtocolError"]


class ProtocolError(Exception):
    """Base class for MSRP protocol violations."""

    def __init__(
        self,
        message: str,
        *,
        status_hint: int = 400,
        transaction_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        #: The MSRP status code the peer should be answered with (RFC 4975 §10).
        self.status_hint = status_hint
        #: The transaction id of the offending message, or ``None`` if it could not
        #: be read (then the only sane reaction is to close the connection).
        self.transaction_id = transaction_id

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.message!r}, status_hint={self.status_hint}, "
            f"transaction_id={self.transaction_id!r})"
        )


class LocalProtocolError(ProtocolError):
    """We tried to send something that is not valid MSRP."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something that is not valid MSRP."""
