"""Sans-IO MSRP (RFC 4975, RFC 4976) protocol core: bytes in, events out."""

from .errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from .events import (
    BodyData,
    Continuation,
    EndOfMessage,
    Event,
    Headers,
    RequestHead,
    ResponseHead,
    WholeMessage,
)
from .headers import ByteRange, StatusHeader
from .ids import is_valid_ident, new_message_id, new_session_id, new_transaction_id
from .parser import MsrpParser
from .serializer import (
    MessageWriter,
    make_response,
    serialize_end_line,
    serialize_head,
    serialize_message,
)
from .status import Status
from .uri import DEFAULT_PORT, MsrpUri, format_path, parse_path, parse_uri

__all__ = [
    "DEFAULT_PORT",
    "BodyData",
    "ByteRange",
    "Continuation",
    "EndOfMessage",
    "Event",
    "Headers",
    "LocalProtocolError",
    "MessageWriter",
    "MsrpParser",
    "MsrpUri",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestHead",
    "ResponseHead",
    "Status",
    "StatusHeader",
    "WholeMessage",
    "format_path",
    "is_valid_ident",
    "make_response",
    "new_message_id",
    "new_session_id",
    "new_transaction_id",
    "parse_path",
    "parse_uri",
    "serialize_end_line",
    "serialize_head",
    "serialize_message",
]
