"""MSRP status codes (RFC 4975 §10, RFC 4976 §5; IANA "MSRP Parameters")."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Status"]


class Status(IntEnum):
    #: 200 Success: the transaction was accepted (hop-by-hop for SEND, RFC 4975 §10.1).
    OK = 200
    #: 400 Unintelligible: the request was malformed (RFC 4975 §10.2).
    BAD_REQUEST = 400
    #: 401 Unauthorized: AUTH needs (better) Digest credentials (RFC 4976 §5.1).
    UNAUTHORIZED = 401
    #: 403 Action-not-allowed: the request is understood but refused (RFC 4975 §10.4).
    FORBIDDEN = 403
    #: 408 Transaction did not complete in allotted time; REPORT only (RFC 4975 §10.5).
    REQUEST_TIMEOUT = 408
    #: 413 Stop-sending-message: receiver wants no more of this message (RFC 4975 §10.6).
    STOP_SENDING = 413
    #: 415 MIME-not-understood: endpoint cannot handle the media type (RFC 4975 §10.7).
    UNSUPPORTED_MEDIA_TYPE = 415
    #: 423 Parameter-out-of-bounds: e.g. AUTH Expires outside limits (RFC 4976 §5.3).
    PARAMETER_OUT_OF_BOUNDS = 423
    #: 481 Session-does-not-exist: unknown or expired session-id (RFC 4975 §10.9).
    SESSION_DOES_NOT_EXIST = 481
    #: 501 Request-method-not-understood, answered by the terminating element (§10.10).
    NOT_IMPLEMENTED = 501
    #: 506 Session-already-in-use: session bound to another connection (RFC 4975 §10.11).
    SESSION_ALREADY_IN_USE = 506

    @property
    def phrase(self) -> str:
        """A conventional comment for the response start line or Status header."""
        return _PHRASES[self]


_PHRASES: dict[Status, str] = {
    Status.OK: "OK",
    Status.BAD_REQUEST: "Bad Request",
    Status.UNAUTHORIZED: "Unauthorized",
    Status.FORBIDDEN: "Forbidden",
    Status.REQUEST_TIMEOUT: "Request Timeout",
    Status.STOP_SENDING: "Stop Sending Message",
    Status.UNSUPPORTED_MEDIA_TYPE: "Unsupported Media Type",
    Status.PARAMETER_OUT_OF_BOUNDS: "Parameter Out Of Bounds",
    Status.SESSION_DOES_NOT_EXIST: "Session Does Not Exist",
    Status.NOT_IMPLEMENTED: "Not Implemented",
    Status.SESSION_ALREADY_IN_USE: "Session Already In Use",
}
