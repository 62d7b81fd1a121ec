"""Typed values of the MSRP header fields that carry structure.

RFC 4975 §9::

    Byte-Range  = "Byte-Range:" SP range-start "-" range-end "/" total
    range-start = 1*DIGIT
    range-end   = 1*DIGIT / "*"
    total       = 1*DIGIT / "*"

    Status      = "Status:" SP namespace SP status-code [SP text-reason]
    namespace   = 3(DIGIT)   ; "000" for all codes defined in RFC 4975
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import RemoteProtocolError

__all__ = ["ByteRange", "StatusHeader"]

_BYTE_RANGE_RE = re.compile(r"([0-9]{1,19})-([0-9]{1,19}|\*)/([0-9]{1,19}|\*)", re.ASCII)
_STATUS_RE = re.compile(r"([0-9]{3}) ([0-9]{3})(?: (.*))?", re.ASCII | re.DOTALL)


@dataclass(frozen=True, slots=True)
class ByteRange:
    """``Byte-Range: start-end/total``; ``None`` stands for ``*``.

    Positions are 1-based and inclusive (RFC 4975 §7.1.1).  A chunk with an
    empty body has ``end == start - 1``; that is accepted.  When the header is
    absent the receiver assumes ``1-*/*`` (:meth:`default`).
    """

    start: int
    end: int | None = None
    total: int | None = None

    @classmethod
    def default(cls) -> ByteRange:
        """The value assumed when a SEND carries no Byte-Range (``1-*/*``)."""
        return cls(1, None, None)

    @classmethod
    def parse(cls, value: str) -> ByteRange:
        """Parse a header value; raise :class:`RemoteProtocolError` (400) on junk."""
        match = _BYTE_RANGE_RE.fullmatch(value)
        if match is None:
            raise RemoteProtocolError(f"invalid Byte-Range {value[:100]!r}", status_hint=400)
        start = int(match[1])
        end = None if match[2] == "*" else int(match[2])
        total = None if match[3] == "*" else int(match[3])
        if start < 1:
            raise RemoteProtocolError("Byte-Range start must be >= 1", status_hint=400)
        if end is not None and end < start - 1:
            raise RemoteProtocolError("Byte-Range end before start", status_hint=400)
        if end is not None and total is not None and end > total:
            raise RemoteProtocolError("Byte-Range end beyond total", status_hint=400)
        return cls(start, end, total)

    def __str__(self) -> str:
        end = "*" if self.end is None else str(self.end)
        total = "*" if self.total is None else str(self.total)
        return f"{self.start}-{end}/{total}"


@dataclass(frozen=True, slots=True)
class StatusHeader:
    """``Status: 000 408 Request Timeout`` as carried by REPORT requests."""

    code: int
    reason: str | None = None
    namespace: str = "000"

    @classmethod
    def parse(cls, value: str) -> StatusHeader:
        """Parse a header value; raise :class:`RemoteProtocolError` (400) on junk."""
        match = _STATUS_RE.fullmatch(value)
        if match is None:
            raise RemoteProtocolError(f"invalid Status {value[:100]!r}", status_hint=400)
        return cls(code=int(match[2]), reason=match[3], namespace=match[1])

    def __str__(self) -> str:
        text = f"{self.namespace} {self.code:03d}"
        return text if self.reason is None else f"{text} {self.reason}"
