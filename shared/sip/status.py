"""SIP status codes (RFC 3261 §21 and the extensions we use) with their reason phrases."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["StatusCode", "reason_phrase"]


class StatusCode(IntEnum):
    #: §21.1.1: the request is being worked on; stops INVITE retransmissions.
    TRYING = 100
    #: §21.1.2: the UA is alerting the user.
    RINGING = 180
    #: §21.2.1: the request succeeded.
    OK = 200
    #: RFC 3265 / RFC 6665: accepted for later processing (msilo stores a MESSAGE).
    ACCEPTED = 202
    #: §21.4.1: malformed syntax.
    BAD_REQUEST = 400
    #: §21.4.2: user authentication required (WWW-Authenticate, from UAS/registrar).
    UNAUTHORIZED = 401
    #: §21.4.4: understood but refused; authorization will not help.
    FORBIDDEN = 403
    #: §21.4.5: the user does not exist at the domain in the Request-URI.
    NOT_FOUND = 404
    #: §21.4.6: method known but not allowed for this address (Allow header follows).
    METHOD_NOT_ALLOWED = 405
    #: §21.4.8: proxy authentication required (Proxy-Authenticate).
    PROXY_AUTHENTICATION_REQUIRED = 407
    #: §21.4.9: no final response in time (Timer B/F fired).
    REQUEST_TIMEOUT = 408
    #: §21.4.11: the body is larger than the server will process.
    REQUEST_ENTITY_TOO_LARGE = 413
    #: §21.4.13: the body's format (Content-Type/Encoding) is not supported.
    UNSUPPORTED_MEDIA_TYPE = 415
    #: §21.4.14: the Request-URI scheme is unknown.
    UNSUPPORTED_URI_SCHEME = 416
    #: §21.4.15: a Require/Proxy-Require extension is not supported (Unsupported follows).
    BAD_EXTENSION = 420
    #: §21.4.17: registration expiry too short (Min-Expires follows).
    INTERVAL_TOO_BRIEF = 423
    #: §21.4.18: the callee is currently unreachable (e.g. not registered).
    TEMPORARILY_UNAVAILABLE = 480
    #: §21.4.19: no dialog or transaction matches the request.
    CALL_TRANSACTION_DOES_NOT_EXIST = 481
    #: §21.4.20: a loop was detected (our Via is already in the request).
    LOOP_DETECTED = 482
    #: §21.4.21: Max-Forwards reached zero.
    TOO_MANY_HOPS = 483
    #: §21.4.24: the callee is busy.
    BUSY_HERE = 486
    #: §21.4.25: the request was cancelled by CANCEL.
    REQUEST_TERMINATED = 487
    #: §21.5.1: unexpected condition in the server.
    SERVER_INTERNAL_ERROR = 500
    #: §21.5.2: the method is not implemented by this server.
    NOT_IMPLEMENTED = 501
    #: §21.5.4: temporary overload or maintenance (Retry-After may follow).
    SERVICE_UNAVAILABLE = 503
    #: §21.5.5: a downstream server did not answer in time.
    SERVER_TIMEOUT = 504
    #: §21.5.6: the SIP version is not supported.
    VERSION_NOT_SUPPORTED = 505
    #: §21.5.7: the message is too large for the server to process.
    MESSAGE_TOO_LARGE = 513

    @property
    def phrase(self) -> str:
        return _PHRASES[self]


_PHRASES: dict[int, str] = {
    100: "Trying",
    180: "Ringing",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    423: "Interval Too Brief",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    486: "Busy Here",
    487: "Request Terminated",
    500: "Server Internal Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
}

_CLASS_PHRASES = {1: "Trying", 2: "OK", 3: "Redirect", 4: "Client Error", 5: "Server Error"}


def reason_phrase(code: int) -> str:
    """The RFC phrase for ``code``, or a generic one for its class (§21: 6xx Global Failure)."""
    if code in _PHRASES:
        return _PHRASES[code]
    return _CLASS_PHRASES.get(code // 100, "Global Failure")
