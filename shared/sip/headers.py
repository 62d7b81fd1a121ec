"""Structured SIP header values: name-addr, Via, Contact, CSeq; building responses.

Parsers take one header *value* (one element of a comma list; use
``message.get_all(name)`` to get the elements) and raise ``ValueError`` on junk.
They accept the linear whitespace RFC 3261 §25.1 allows around ``/ ; = :``.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, TypeVar

from shared.digest import TOKEN
from shared.record import Record
from shared.sip.errors import LocalProtocolError
from shared.sip.message import Headers, SipMessage, SipRequest, SipResponse
from shared.sip.status import reason_phrase
from shared.sip.uri import SipUri, TelUri, parse_uri

__all__ = [
    "CSeq",
    "Contact",
    "NameAddr",
    "Params",
    "Via",
    "format_params",
    "from_tag",
    "get_tag",
    "make_response",
    "parse_contact",
    "parse_cseq",
    "parse_name_addr",
    "parse_params",
    "parse_via",
    "to_tag",
]

#: Header parameters in order: (name, value or None for a valueless one).
#: Quoted values are stored unquoted.
Params = tuple[tuple[str, str | None], ...]

_T = TypeVar("_T")

#: Parsed values by text: a request's top Via, From and To are parsed several times on its
#: way through (matching, stamping, routing). The results are immutable; junk is not kept.
#: Small: what a memo holds outlives the garbage collector's young generation, which then
#: walks it again and again; with 2,048 entries it held most of a 2,500 MESSAGE/s relay's
#: young objects, and each collection stopped the relay for 15-30 ms.
_MEMO_MAX = 256
_via_memo: dict[str, Via] = {}
_name_addr_memo: dict[str, NameAddr] = {}


def _remember(memo: dict[str, _T], value: str, result: _T) -> _T:
    if len(memo) >= _MEMO_MAX:
        memo.clear()  # values rarely repeat after their request is done: no LRU needed
    memo[value] = result
    return result


#: One or more token characters (``shared.digest.TOKEN``), as a regular expression.
_TOKEN = f"[{re.escape(TOKEN)}]+"
_TOKEN_RE = re.compile(_TOKEN)
#: A host name or IPv4 address (what a plain Via's sent-by host is).
_HOST_CHARS: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-."


def _is_token(text: str) -> bool:
    """``text`` is a token (RFC 3261 §25.1); letters and digits alone are checked first:
    string methods, because the regular expression engine costs far more per character."""
    if text.isascii() and text.isalnum():
        return True
    return bool(text) and not text.strip(TOKEN)


# A param value that needs no quotes: token, or host (IPv6 reference, IPv4, name).
_BARE_VALUE_RE = re.compile(r"[A-Za-z0-9.!%*_+`'~\-]+|\[[0-9A-Fa-f:.]+\]")
_WS = " \t"


def _unquote(text: str, i: int) -> tuple[str, int]:
    """Read a quoted-string starting at ``text[i] == '"'``; return (value, index after)."""
    out: list[str] = []
    i += 1
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append(text[i + 1])
            i += 2
        elif c == '"':
            return "".join(out), i + 1
        else:
            out.append(c)
            i += 1
    raise ValueError("unterminated quoted string")


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def parse_params(text: str) -> Params:
    """Parse ``;name[=value]`` pairs with optional LWS; ``text`` must start with ';' or be blank."""
    params: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _WS:
            i += 1
        if i >= n:
            return tuple(params)
        if text[i] != ";":
            raise ValueError(f"expected ';' in parameters at {text[i:]!r}")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        m = _TOKEN_RE.match(text, i)
        if m is None:
            raise ValueError("empty parameter name")
        name = m.group()
        i = m.end()
        while i < n and text[i] in _WS:
            i += 1
        value: str | None = None
        if i < n and text[i] == "=":
            i += 1
            while i < n and text[i] in _WS:
                i += 1
            if i < n and text[i] == '"':
                value, i = _unquote(text, i)
            else:
                start = i
                while i < n and text[i] not in ' \t;,"':
                    i += 1
                value = text[start:i]
                if not value:
                    raise ValueError(f"parameter {name!r} has an empty value")
        params.append((name, value))


def format_params(params: Params) -> str:
    out = []
    for name, value in params:
        if value is None:
            out.append(f";{name}")
        elif name.startswith("+") or not _BARE_VALUE_RE.fullmatch(value):
            # RFC 3840 §9: feature-parameter values are always quoted strings.
            out.append(f";{name}={_quote(value)}")
        else:
            out.append(f";{name}={value}")
    return "".join(out)


def _param(params: Params, name: str) -> str | None:
    key = name.lower()
    for n, v in params:
        if n.lower() == key:
            return v
    return None


def _has_param(params: Params, name: str) -> bool:
    key = name.lower()
    return any(n.lower() == key for n, _ in params)


# --- name-addr / addr-spec (RFC 3261 §20.10, §25.1) ----------------------------------


class NameAddr(Record):
    """``"Display" <uri>;params`` as used by From, To, Contact, Route, Refer-To..."""

    _fields = ("uri", "display_name", "params")

    def __init__(self, uri: str, display_name: str | None = None, params: Params = ()) -> None:
        self.uri: Final = uri
        self.display_name: Final = display_name
        self.params: Final = params

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def tag(self) -> str | None:
        return self.param("tag")

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple((n, v) for n, v in self.params if n.lower() != name.lower())
        return NameAddr(self.uri, self.display_name, (*kept, (name, value)))

    def parsed_uri(self) -> SipUri | TelUri:
        return parse_uri(self.uri)

    def __str__(self) -> str:
        # Always the name-addr form: safe whatever the URI contains (§20.10).
        name = "" if self.display_name is None else _quote(self.display_name) + " "
        return f"{name}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(value: str) -> NameAddr:
    cached = _name_addr_memo.get(value)
    if cached is not None:
        return cached
    return _remember(_name_addr_memo, value, _parse_name_addr(value))


def _parse_name_addr(value: str) -> NameAddr:
    # The usual From/To/Route shape first: ``<uri>`` (no blank, quote or angle bracket in
    # it) and ``;token`` or ``;token=token`` parameters, read with string methods exactly
    # as _parse_name_addr_general reads them; anything else is left to that.
    text = value.strip(" \t")
    close = text.find(">")
    if text[:1] == "<" and close > 1:
        uri = text[1:close]
        if "<" not in uri and '"' not in uri and " " not in uri and "\t" not in uri:
            params = _plain_params(text[close + 1 :])
            if params is not None:
                return NameAddr(uri, None, params)
    return _parse_name_addr_general(value)


def _plain_params(text: str) -> Params | None:
    """``;token[=token]...`` (or nothing) as Params; None for any other text."""
    if not text:
        return ()
    if text[0] != ";":
        return None
    params: list[tuple[str, str | None]] = []
    for item in text[1:].split(";"):
        name, equals, value = item.partition("=")
        if not _is_token(name):
            return None
        if not equals:
            params.append((name, None))
        elif _is_token(value):
            params.append((name, value))
        else:
            return None
    return tuple(params)


def _parse_name_addr_general(value: str) -> NameAddr:
    text = value.strip(" \t")
    lt = _find_unquoted(text, "<")
    if lt < 0:
        # addr-spec: parameters after the URI belong to the header (§20.10).
        semi = text.find(";")
        uri = (text if semi < 0 else text[:semi]).strip(" \t")
        rest = "" if semi < 0 else text[semi:]
        if not uri or any(c in uri for c in ' \t<>"'):
            raise ValueError(f"invalid addr-spec {uri!r}")
        return NameAddr(uri, None, parse_params(rest))
    head = text[:lt].strip(" \t")
    display: str | None
    if head.startswith('"'):
        display, end = _unquote(head, 0)
        if head[end:].strip(" \t"):
            raise ValueError("junk after quoted display name")
    elif head:
        if not all(_TOKEN_RE.fullmatch(word) for word in head.split()):
            raise ValueError(f"invalid display name {head!r}")
        display = " ".join(head.split())
    else:
        display = None
    gt = text.find(">", lt)
    if gt < 0:
        raise ValueError("unterminated <uri>")
    uri = text[lt + 1 : gt].strip(" \t")
    if not uri or any(c in uri for c in " \t<"):
        raise ValueError(f"invalid URI in name-addr {uri!r}")
    return NameAddr(uri, display, parse_params(text[gt + 1 :]))


def _find_unquoted(text: str, char: str) -> int:
    in_quotes = False
    i = 0
    while i < len(text):
        c = text[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == char:
            return i
        i += 1
    return -1


def get_tag(value: str | None) -> str | None:
    """The ``tag`` parameter of a From/To value, or None (also for junk)."""
    if value is None:
        return None
    try:
        return parse_name_addr(value).tag
    except ValueError:
        return None


def from_tag(message: SipMessage) -> str | None:
    return get_tag(message.get("From"))


def to_tag(message: SipMessage) -> str | None:
    return get_tag(message.get("To"))


# --- Contact (§20.10; RFC 5626 +sip.instance, reg-id) ---------------------------------


@dataclass(frozen=True, slots=True)
class Contact:
    """One Contact element, or the wildcard ``*`` (REGISTER removing all bindings)."""

    address: NameAddr | None  # None for "*"

    @property
    def is_star(self) -> bool:
        return self.address is None

    @property
    def params(self) -> Params:
        return () if self.address is None else self.address.params

    @property
    def q(self) -> float | None:
        value = _param(self.params, "q")
        if value is None:
            return None
        try:
            q = float(value)
        except ValueError:
            return None
        return q if 0.0 <= q <= 1.0 else None

    @property
    def expires(self) -> int | None:
        value = _param(self.params, "expires")
        return int(value) if value is not None and value.isdigit() else None

    @property
    def instance(self) -> str | None:
        """The ``+sip.instance`` value without its ``<>`` (RFC 5626 §4.1)."""
        value = _param(self.params, "+sip.instance")
        if value is None:
            return None
        return value[1:-1] if value.startswith("<") and value.endswith(">") else value

    @property
    def reg_id(self) -> int | None:
        value = _param(self.params, "reg-id")
        return int(value) if value is not None and value.isdigit() else None

    def __str__(self) -> str:
        return "*" if self.address is None else str(self.address)


def parse_contact(value: str) -> Contact:
    if value.strip(" \t") == "*":
        return Contact(None)
    return Contact(parse_name_addr(value))


# --- Via (§20.42, RFC 3581 rport) ----------------------------------------------------

_VIA_RE = re.compile(
    rf"\s*({_TOKEN})\s*/\s*({_TOKEN})\s*/\s*({_TOKEN})\s+"  # sent-protocol
    r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"  # sent-by host
    r"(?:\s*:\s*(\d{1,5}))?"  # sent-by port
    r"\s*(;.*)?",
    re.DOTALL,
)


class Via(Record):
    _fields = ("transport", "host", "port", "params", "protocol")

    def __init__(
        self,
        transport: str,
        host: str,
        port: int | None = None,
        params: Params = (),
        protocol: str = "SIP/2.0",
    ) -> None:
        self.transport: Final = transport  # upper-case: UDP, TCP, TLS, WS, WSS, SCTP
        self.host: Final = host
        self.port: Final = port
        self.params: Final = params
        self.protocol: Final = protocol

    def param(self, name: str) -> str | None:
        return _param(self.params, name)

    @property
    def branch(self) -> str | None:
        return self.param("branch")

    @property
    def received(self) -> str | None:
        return self.param("received")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def has_rport(self) -> bool:
        """True when the client asked for symmetric response routing (RFC 3581)."""
        return _has_param(self.params, "rport")

    @property
    def rport(self) -> int | None:
        value = self.param("rport")
        return int(value) if value is not None and value.isdigit() else None

    def with_param(self, name: str, value: str | None) -> Via:
        kept = tuple((n, v) for n, v in self.params if n.lower() != name.lower())
        return Via(self.transport, self.host, self.port, (*kept, (name, value)), self.protocol)

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{self.protocol}/{self.transport} {self.host}{port}{format_params(self.params)}"


#: Source addresses already found to need no quotes in a Via parameter (they repeat).
_BARE_HOSTS: set[str] = set()


def stamp_rport(value: str, host: str, port: int) -> str | None:
    """``value`` (a Via asking for rport) with ``rport=port;received=host`` (RFC 3581 §4),
    exactly as ``str(parse_via(value).with_param("rport", ...).with_param("received", ...))``
    would print it; None when ``value`` is not that plain (the caller takes the long way).

    Plain is what str(Via) prints and nearly every UA sends: ``SIP/2.0/``, an upper-case
    transport, one space, a host name or IPv4 address, an optional port of up to five
    digits, ``;token=token`` parameters (none named with a ``+``, whose value str(Via)
    would quote, nor rport or received) and a valueless ``;rport`` at the end.
    """
    if not value.startswith("SIP/2.0/") or not value.endswith(";rport") or ":" in host:
        return None
    if host not in _BARE_HOSTS:
        if not _BARE_VALUE_RE.fullmatch(host):
            return None
        if len(_BARE_HOSTS) >= _MEMO_MAX:
            _BARE_HOSTS.clear()
        _BARE_HOSTS.add(host)
    transport, space, sent_by = value[8:-6].partition(" ")
    if not (space and transport.isascii() and transport.isalpha() and transport.isupper()):
        return None
    host_port, semicolon, raw_params = sent_by.partition(";")
    via_host, colon, via_port = host_port.partition(":")
    if not via_host or not via_host.isascii() or via_host.strip(_HOST_CHARS):
        return None
    port_number: int | None = None
    if colon:
        if not (0 < len(via_port) <= 5 and via_port.isascii() and via_port.isdigit()):
            return None
        port_number = int(via_port)
        if port_number > 65535:
            return None
    params: list[tuple[str, str | None]] = []
    if semicolon:
        for item in raw_params.split(";"):
            name, equals, param_value = item.partition("=")
            if not equals or name[:1] == "+" or not _is_token(name) or not _is_token(param_value):
                return None
            if name.lower() in ("rport", "received"):
                return None
            params.append((name, param_value))
    rport = str(port)
    stamped = f"{value[:-6]};rport={rport};received={host}"
    params.append(("rport", rport))
    params.append(("received", host))
    via = Via(transport, via_host, port_number, tuple(params))
    _remember(_via_memo, stamped, via)
    return stamped


def parse_via(value: str) -> Via:
    cached = _via_memo.get(value)
    if cached is not None:
        return cached
    return _remember(_via_memo, value, _parse_via(value))


def _parse_via(value: str) -> Via:
    m = _VIA_RE.fullmatch(value)
    if m is None:
        raise ValueError(f"invalid Via {value!r}")
    name, version, transport, host, port, params = m.groups()
    port_number = int(port) if port is not None else None
    if port_number is not None and port_number > 65535:
        raise ValueError(f"Via port out of range: {port}")
    return Via(
        transport=transport.upper(),
        host=host,
        port=port_number,
        params=parse_params(params or ""),
        protocol=f"{name.upper()}/{version}",
    )


# --- CSeq (§20.16) -------------------------------------------------------------------

_CSEQ_MAX = 2**31  # §8.1.1.5: the sequence number MUST be less than 2**31


class CSeq(Record):
    _fields = ("seq", "method")

    def __init__(self, seq: int, method: str) -> None:
        self.seq: Final = seq
        self.method: Final = method

    def __str__(self) -> str:
        return f"{self.seq} {self.method}"


def parse_cseq(value: str) -> CSeq:
    parts = value.split()
    if len(parts) != 2 or not parts[0].isdigit() or len(parts[0]) > 12:
        raise ValueError(f"invalid CSeq {value!r}")
    seq = int(parts[0])
    if seq >= _CSEQ_MAX or not _is_token(parts[1]):
        raise ValueError(f"invalid CSeq {value!r}")
    return CSeq(seq, parts[1])


# --- responses (§8.2.6) ----------------------------------------------------------------

RESPONSE_COPIED_HEADERS = ("Via", "From", "To", "Call-ID", "CSeq")
_COPIED_KEYS = tuple(name.lower() for name in RESPONSE_COPIED_HEADERS)


def make_response(
    request: SipRequest,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
) -> SipResponse:
    """A response to ``request`` per RFC 3261 §8.2.6.2.

    Copies every Via (in order), From, Call-ID and CSeq, and To, adding a
    To-tag unless the request has one or the status is 100 (when ``to_tag``
    is None a random tag is made). ``headers`` are appended;
    Content-Length is computed from ``body``. Raises LocalProtocolError if
    the request lacks one of the headers a response needs.
    """
    copied: dict[str, list[tuple[str, str]]] = {key: [] for key in _COPIED_KEYS}
    for key, item in zip(request.headers.keys(), request.headers, strict=True):
        lines = copied.get(key)
        if lines is not None:
            lines.append(item)
    out = Headers()
    for key, name in zip(_COPIED_KEYS, RESPONSE_COPIED_HEADERS, strict=True):
        lines = copied[key]
        if not lines:
            raise LocalProtocolError(f"cannot answer a request without {name}")
        for _, value in lines:
            if key == "to" and status > 100 and get_tag(value) is None:
                value = f"{value};tag={to_tag or secrets.token_hex(8)}"
            out.add(name, value)
    for name, value in headers:
        out.add(name, value)
    return SipResponse(
        status=status,
        reason=reason if reason is not None else reason_phrase(status),
        headers=out,
        body=body,
    )
