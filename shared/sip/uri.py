"""SIP, SIPS (RFC 3261 §19.1) and tel (RFC 3966) URIs: parsing, printing, comparison.

Components are stored percent-decoded (``%61lice`` is user ``alice``) and
re-escaped by ``__str__`` only where the grammar requires it. Dataclass
equality is structural; RFC 3261 §19.1.4 equivalence is
:meth:`SipUri.equivalent_to` (it is not transitive, so it is not ``__eq__``).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

__all__ = [
    "SipUri",
    "TelUri",
    "UnsupportedUriScheme",
    "UriError",
    "parse_sip_uri",
    "parse_uri",
]


class UriError(ValueError):
    """A URI that does not follow its scheme's grammar (answer 400)."""


class UnsupportedUriScheme(UriError):
    """A URI whose scheme we do not handle (answer 416, RFC 3261 §8.2.2.1)."""


# RFC 3261 §25.1 character classes (besides alphanumerics and escapes).
_UNRESERVED = "-_.!~*'()"
_USER_SAFE = _UNRESERVED + "&=+$,;?/"
_PASSWORD_SAFE = _UNRESERVED + "&=+$,"
_PARAM_SAFE = _UNRESERVED + "[]/:&+$"
_HEADER_SAFE = _UNRESERVED + "[]/?:+$"


def _class_re(safe: str, *, allow_empty: bool = False) -> re.Pattern[str]:
    count = "*" if allow_empty else "+"
    return re.compile(rf"(?:[A-Za-z0-9{re.escape(safe)}]|%[0-9A-Fa-f]{{2}}){count}")


_USER_RE = _class_re(_USER_SAFE)
_PASSWORD_RE = _class_re(_PASSWORD_SAFE, allow_empty=True)
_PARAM_RE = _class_re(_PARAM_SAFE)
_HNAME_RE = _class_re(_HEADER_SAFE)
_HVALUE_RE = _class_re(_HEADER_SAFE, allow_empty=True)
_HOSTNAME_RE = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?\.)*[A-Za-z0-9\-]+\.?")
_IPV4ISH_RE = re.compile(r"[0-9.]+")


def _decode(text: str) -> str:
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _encode(text: str, safe: str) -> str:
    out: list[str] = []
    for ch in text:
        if ch.isascii() and (ch.isalnum() or ch in safe):
            out.append(ch)
        else:
            out.extend(f"%{b:02X}" for b in ch.encode("utf-8", "surrogateescape"))
    return "".join(out)


def _parse_host(text: str) -> str:
    if text.startswith("["):
        if not text.endswith("]"):
            raise UriError(f"unterminated IPv6 reference {text!r}")
        try:
            ipaddress.IPv6Address(text[1:-1])
        except ValueError:
            raise UriError(f"invalid IPv6 address {text!r}") from None
        return text
    if _IPV4ISH_RE.fullmatch(text):
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise UriError(f"invalid IPv4 address {text!r}") from None
        return text
    if not _HOSTNAME_RE.fullmatch(text):
        raise UriError(f"invalid host {text!r}")
    return text


def _host_key(host: str) -> str:
    if host.startswith("["):
        return "[" + ipaddress.IPv6Address(host[1:-1]).compressed + "]"
    return host.lower().rstrip(".")


def _parse_uri_params(text: str) -> tuple[tuple[str, str | None], ...]:
    params: list[tuple[str, str | None]] = []
    if not text:
        return ()
    for item in text.split(";"):
        name, eq, value = item.partition("=")
        if not _PARAM_RE.fullmatch(name) or (eq and not _PARAM_RE.fullmatch(value)):
            raise UriError(f"invalid URI parameter {item!r}")
        params.append((_decode(name), _decode(value) if eq else None))
    return tuple(params)


def _lookup(params: tuple[tuple[str, str | None], ...], name: str) -> str | None:
    key = name.lower()
    for n, v in params:
        if n.lower() == key:
            return v
    return None


# §19.1.4: these parameters must match when present in either URI.
_STRICT_PARAMS = frozenset({"user", "ttl", "method", "maddr", "transport"})


@dataclass(frozen=True, slots=True)
class SipUri:
    scheme: str  # "sip" or "sips", lower-case
    host: str  # as written; IPv6 references keep their brackets
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: tuple[tuple[str, str | None], ...] = ()
    headers: tuple[tuple[str, str], ...] = ()

    def param(self, name: str) -> str | None:
        return _lookup(self.params, name)

    def has_param(self, name: str) -> bool:
        return any(n.lower() == name.lower() for n, _ in self.params)

    @property
    def transport(self) -> str | None:
        value = self.param("transport")
        return value.lower() if value is not None else None

    @property
    def lr(self) -> bool:
        """Loose routing flag (§19.1.1): the URI is of an RFC 3261 proxy."""
        return self.has_param("lr")

    @property
    def maddr(self) -> str | None:
        return self.param("maddr")

    @property
    def aor(self) -> str:
        """``scheme:user@host`` lower-cased host, no port/params: a location-table key."""
        user = "" if self.user is None else _encode(self.user, _USER_SAFE) + "@"
        return f"{self.scheme}:{user}{_host_key(self.host)}"

    def __str__(self) -> str:
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(_encode(self.user, _USER_SAFE))
            if self.password is not None:
                out.append(":" + _encode(self.password, _PASSWORD_SAFE))
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out.append(f":{self.port}")
        for name, value in self.params:
            out.append(";" + _encode(name, _PARAM_SAFE))
            if value is not None:
                out.append("=" + _encode(value, _PARAM_SAFE))
        if self.headers:
            out.append("?")
            out.append(
                "&".join(
                    f"{_encode(n, _HEADER_SAFE)}={_encode(v, _HEADER_SAFE)}"
                    for n, v in self.headers
                )
            )
        return "".join(out)

    def equivalent_to(self, other: SipUri) -> bool:
        """RFC 3261 §19.1.4 URI comparison."""
        if self.scheme != other.scheme:
            return False
        # Userinfo is compared case-sensitively, everything else not.
        if self.user != other.user or self.password != other.password:
            return False
        if _host_key(self.host) != _host_key(other.host) or self.port != other.port:
            return False
        mine = {n.lower(): v for n, v in self.params}
        theirs = {n.lower(): v for n, v in other.params}
        for name in mine.keys() | theirs.keys():
            if name in mine and name in theirs:
                a, b = mine[name], theirs[name]
                if (a is None) != (b is None) or (a or "").lower() != (b or "").lower():
                    return False
            elif name in _STRICT_PARAMS:
                return False
        # Header components are never ignored and their order does not matter.
        return sorted((n.lower(), v.lower()) for n, v in self.headers) == sorted(
            (n.lower(), v.lower()) for n, v in other.headers
        )


@dataclass(frozen=True, slots=True)
class TelUri:
    """A tel URI (RFC 3966); ``number`` keeps its visual separators."""

    number: str
    params: tuple[tuple[str, str | None], ...] = ()

    scheme = "tel"

    def param(self, name: str) -> str | None:
        return _lookup(self.params, name)

    @property
    def is_global(self) -> bool:
        return self.number.startswith("+")

    def __str__(self) -> str:
        params = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in self.params)
        return f"tel:{self.number}{params}"

    def equivalent_to(self, other: TelUri) -> bool:
        """RFC 3966 §4: numbers without visual separators, parameters in any order."""

        def digits(number: str) -> str:
            return re.sub(r"[\-.()]", "", number).lower()

        def params(p: tuple[tuple[str, str | None], ...]) -> list[tuple[str, str]]:
            return sorted((n.lower(), (v or "").lower()) for n, v in p)

        return digits(self.number) == digits(other.number) and params(self.params) == params(
            other.params
        )


_TEL_RE = re.compile(r"\+?[0-9A-Fa-f*#.()\-]+")


def _parse_tel(rest: str) -> TelUri:
    number, _, params = rest.partition(";")
    if not _TEL_RE.fullmatch(number) or not any(c.isalnum() or c in "*#" for c in number):
        raise UriError(f"invalid telephone number {number!r}")
    return TelUri(number, _parse_uri_params(params))


_MEMO_MAX = 256  # small, as shared.sip.headers' memos (the garbage collector walks them)
_memo: dict[str, SipUri | TelUri] = {}


def parse_uri(text: str) -> SipUri | TelUri:
    """Parse a sip:, sips: or tel: URI; raise UriError / UnsupportedUriScheme.

    Results are remembered by text (they are immutable): a request's Request-URI, From
    and To are parsed several times on the way through the relay."""
    cached = _memo.get(text)
    if cached is not None:
        return cached
    uri = _parse_uri(text)
    if len(_memo) >= _MEMO_MAX:
        _memo.clear()
    _memo[text] = uri
    return uri


def _parse_uri(text: str) -> SipUri | TelUri:
    scheme, colon, rest = text.strip().partition(":")
    if not colon or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+\-.]*", scheme):
        raise UriError(f"not a URI: {text!r}")
    scheme = scheme.lower()
    if scheme == "tel":
        return _parse_tel(rest)
    if scheme not in ("sip", "sips"):
        raise UnsupportedUriScheme(f"unsupported URI scheme {scheme!r}")
    user = password = None
    at = rest.find("@")
    if at >= 0 and _USER_RE.match(rest[:at]):
        userinfo, rest = rest[:at], rest[at + 1 :]
        raw_user, has_pw, raw_pw = userinfo.partition(":")
        if not _USER_RE.fullmatch(raw_user) or (has_pw and not _PASSWORD_RE.fullmatch(raw_pw)):
            raise UriError(f"invalid userinfo in {text!r}")
        user = _decode(raw_user)
        password = _decode(raw_pw) if has_pw else None
    rest, has_headers, raw_headers = rest.partition("?")
    hostport, has_params, raw_params = rest.partition(";")
    if hostport.startswith("["):
        end = hostport.find("]")
        host_text, port_text = hostport[: end + 1], hostport[end + 1 :]
        if end < 0 or (port_text and not port_text.startswith(":")):
            raise UriError(f"invalid host in {text!r}")
        port_text = port_text[1:] if port_text else ""
        has_port = bool(hostport[end + 1 :])
    else:
        host_text, has_port_sep, port_text = hostport.partition(":")
        has_port = bool(has_port_sep)
    host = _parse_host(host_text)
    port: int | None = None
    if has_port:
        if not port_text.isdigit() or len(port_text) > 5 or int(port_text) > 65535:
            raise UriError(f"invalid port in {text!r}")
        port = int(port_text)
    if has_params and not raw_params:
        raise UriError(f"empty parameter in {text!r}")
    params = _parse_uri_params(raw_params)
    headers: list[tuple[str, str]] = []
    if has_headers:
        for item in raw_headers.split("&"):
            name, eq, value = item.partition("=")
            if not eq or not _HNAME_RE.fullmatch(name) or not _HVALUE_RE.fullmatch(value):
                raise UriError(f"invalid URI header {item!r}")
            headers.append((_decode(name), _decode(value)))
    return SipUri(scheme, host, user, password, port, params, tuple(headers))


def parse_sip_uri(text: str) -> SipUri:
    """Like :func:`parse_uri` but only sip: and sips: (tel: raises UnsupportedUriScheme)."""
    uri = parse_uri(text)
    if not isinstance(uri, SipUri):
        raise UnsupportedUriScheme(f"not a SIP URI: {text!r}")
    return uri
