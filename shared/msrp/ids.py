"""Random identifiers: transaction ids, session ids and Message-IDs.

RFC 4975 §7.1 requires at least 64 bits of randomness in a transaction id and
§14.1 asks for unguessable session-ids (about 80 bits or more).  All ids here
are hex text of bytes from :mod:`secrets` (the OS CSPRNG, one call per id), so
every char carries 4 bits.
"""

from __future__ import annotations

import re
import secrets

__all__ = [
    "is_valid_ident",
    "new_message_id",
    "new_session_id",
    "new_transaction_id",
]

#: 20 chars = 80 bits: above the 64 bits RFC 4975 §7.1 asks for.
TRANSACTION_ID_LENGTH = 20
#: 30 chars = 120 bits: above the ~80 bits RFC 4975 §14.1 recommends.
SESSION_ID_LENGTH = 30
#: Message-IDs only need to be unique per sender; 20 chars = 80 bits.
MESSAGE_ID_LENGTH = 20

# RFC 4975 §9: ident = ALPHANUM 3*31ident-char
#              ident-char = ALPHANUM / "." / "-" / "+" / "%" / "="
IDENT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.\-+%=]{3,31}")


def _random_alnum(length: int) -> str:
    """``length`` (even) hex characters of CSPRNG output."""
    return secrets.token_hex(length // 2)


def new_transaction_id() -> str:
    """Return a fresh transaction id (a valid RFC 4975 ``ident``)."""
    return _random_alnum(TRANSACTION_ID_LENGTH)


def new_session_id() -> str:
    """Return a fresh, unguessable session-id for an MSRP URI path."""
    return _random_alnum(SESSION_ID_LENGTH)


def new_message_id() -> str:
    """Return a fresh Message-ID value (a valid RFC 4975 ``ident``)."""
    return _random_alnum(MESSAGE_ID_LENGTH)


def is_valid_ident(value: str) -> bool:
    """True if *value* matches the RFC 4975 ``ident`` production (4..32 chars)."""
    return IDENT_RE.fullmatch(value) is not None
