"""MSRP URIs (RFC 4975 §6, §9) and their comparison rules (RFC 4975 §6.1).

Syntax (RFC 4975 §9)::

    MSRP-URI    = msrp-scheme "://" authority ["/" session-id] ";" transport
                  *( ";" URI-parameter )
    msrp-scheme = "msrp" / "msrps"
    session-id  = 1*( unreserved / "+" / "=" / "/" )
    transport   = "tcp" / 1*ALPHANUM
    URI-parameter = token ["=" token]

A parsed :class:`MsrpUri` keeps every component exactly as written, so
``str(parse_uri(s)) == s`` for any valid *s*: a relay that rewrites paths
re-emits URIs byte for byte.  Equality and hashing follow §6.1 instead of
string identity.  The transport parameter is accepted as optional on receive
(as Kamailio and msrprelay do) even though the grammar requires it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from functools import lru_cache

from .errors import RemoteProtocolError

__all__ = ["DEFAULT_PORT", "MsrpUri", "format_path", "parse_path", "parse_uri"]

#: IANA-registered MSRP port (RFC 4975 §15.4), used when a URI has no port.
DEFAULT_PORT = 2855

_URI_RE = re.compile(
    r"""
    (?P<scheme>[A-Za-z]+)://
    (?:(?P<userinfo>[A-Za-z0-9\-._~!$&'()*+,;=:%]*)@)?
    (?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9\-.]+)
    (?::(?P<port>[0-9]{1,5}))?
    (?:/(?P<session_id>[A-Za-z0-9\-._~+=/%]+))?
    (?:;(?P<params>.*))?
    """,
    re.VERBOSE | re.ASCII,
)
_TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
_PARAM_RE = re.compile(rf"{_TOKEN}(?:={_TOKEN})?", re.ASCII)
_TRANSPORT_RE = re.compile(r"[A-Za-z0-9]+", re.ASCII)
_IPV4_RE = re.compile(r"[0-9]+(?:\.[0-9]+){3}", re.ASCII)
_HOSTNAME_RE = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.?",
    re.ASCII,
)

_HostKey = ipaddress.IPv4Address | ipaddress.IPv6Address | str


@dataclass(frozen=True, slots=True, eq=False)
class MsrpUri:
    """One MSRP URI; components are stored as written on the wire.

    ``host`` keeps the brackets of an IPv6 literal (``"[2001:db8::1]"``).
    ``params`` holds the URI parameters after the transport, as written
    (``("foo=bar", "baz")``).
    """

    scheme: str
    host: str
    port: int | None = None
    session_id: str | None = None
    transport: str | None = "tcp"
    userinfo: str | None = None
    params: tuple[str, ...] = ()
    #: The text as parsed (set by :func:`parse_uri` only), so forwarding re-emits it
    #: without rebuilding it. A copy made with ``dataclasses.replace`` must pass ``text=None``.
    text: str | None = field(default=None, repr=False)
    #: comparison_key(), computed on first use (relays compare and hash the same URIs with
    #: every message). Not a constructor argument; ``dataclasses.replace`` resets it.
    _key: tuple[str, _HostKey, int | None, str | None, str | None] | None = field(
        default=None, init=False, repr=False
    )
    _hash: int | None = field(default=None, init=False, repr=False)

    # -- derived views -------------------------------------------------------

    @property
    def secure(self) -> bool:
        """True for ``msrps:`` URIs, which must be reached over TLS (RFC 4975 §6)."""
        return self.scheme.lower() == "msrps"

    @property
    def effective_port(self) -> int:
        """The port to connect to: the explicit one or the default 2855."""
        return DEFAULT_PORT if self.port is None else self.port

    @property
    def host_address(self) -> str:
        """The host without IPv6 brackets, suitable for a socket address."""
        if self.host.startswith("["):
            return self.host[1:-1]
        return self.host

    @property
    def authority(self) -> str:
        """``host[:port]`` as written (userinfo excluded)."""
        return self.host if self.port is None else f"{self.host}:{self.port}"

    # -- RFC 4975 §6.1 comparison -------------------------------------------

    def comparison_key(self) -> tuple[str, _HostKey, int | None, str | None, str | None]:
        """The parts §6.1 compares, normalised.

        - scheme and host case-insensitively, IP literals as addresses;
        - the port exactly: an explicit port never equals an absent one;
        - the session-id case-sensitively;
        - the transport case-insensitively;
        - userinfo and other URI parameters are ignored.
        """
        key = self._key
        if key is None:
            key = (
                self.scheme.lower(),
                _host_key(self.host),
                self.port,
                self.session_id,
                None if self.transport is None else self.transport.lower(),
            )
            object.__setattr__(self, "_key", key)
        return key

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MsrpUri):
            return NotImplemented
        return self.comparison_key() == other.comparison_key()

    def __hash__(self) -> int:
        value = self._hash
        if value is None:
            value = hash(self.comparison_key())
            object.__setattr__(self, "_hash", value)
        return value

    def __str__(self) -> str:
        if self.text is not None:
            return self.text
        parts = [self.scheme, "://"]
        if self.userinfo is not None:
            parts += [self.userinfo, "@"]
        parts.append(self.authority)
        if self.session_id is not None:
            parts += ["/", self.session_id]
        if self.transport is not None:
            parts += [";", self.transport]
        for param in self.params:
            parts += [";", param]
        return "".join(parts)


@lru_cache(maxsize=4096)
def _host_key(host: str) -> _HostKey:
    if host.startswith("["):
        return ipaddress.IPv6Address(host[1:-1])
    if _IPV4_RE.fullmatch(host):
        return ipaddress.IPv4Address(host)
    return host.lower().rstrip(".")


def _invalid(value: str, why: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"invalid MSRP URI {value[:200]!r}: {why}", status_hint=400)


@lru_cache(maxsize=8192)
def parse_uri(value: str) -> MsrpUri:
    """Parse one MSRP URI; raise :class:`RemoteProtocolError` (400) on junk.

    Results are cached: the same paths come back with every chunk of a session.
    """
    match = _URI_RE.fullmatch(value)
    if match is None:
        raise _invalid(value, "syntax")
    scheme = match["scheme"]
    if scheme.lower() not in ("msrp", "msrps"):
        raise _invalid(value, "scheme is not msrp or msrps")
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise _invalid(value, "bad IPv6 literal") from None
    elif _IPV4_RE.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _invalid(value, "bad IPv4 address") from None
    elif not _HOSTNAME_RE.fullmatch(host):
        raise _invalid(value, "bad host name")
    port: int | None = None
    if match["port"] is not None:
        port = int(match["port"])
        if not 1 <= port <= 65535:
            raise _invalid(value, "port out of range")
    transport: str | None = None
    params: tuple[str, ...] = ()
    if match["params"] is not None:
        transport, *rest = match["params"].split(";")
        if not _TRANSPORT_RE.fullmatch(transport):
            raise _invalid(value, "bad transport")
        for param in rest:
            if not _PARAM_RE.fullmatch(param):
                raise _invalid(value, "bad URI parameter")
        params = tuple(rest)
    return MsrpUri(
        scheme=scheme,
        host=host,
        port=port,
        session_id=match["session_id"],
        transport=transport,
        userinfo=match["userinfo"],
        params=params,
        text=value,
    )


@lru_cache(maxsize=8192)
def parse_path(value: str) -> tuple[MsrpUri, ...]:
    """Parse a To-Path / From-Path / Use-Path value: URIs separated by single spaces."""
    if not value:
        raise RemoteProtocolError("empty path", status_hint=400)
    return tuple(parse_uri(item) for item in value.split(" "))


def format_path(path: tuple[MsrpUri, ...]) -> str:
    """Inverse of :func:`parse_path`."""
    if len(path) == 1:
        return path[0].text or str(path[0])
    return " ".join([uri.text or str(uri) for uri in path])
