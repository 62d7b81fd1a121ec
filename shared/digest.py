"""HTTP Digest authentication as used by SIP (RFC 3261 §22) and MSRP (RFC 4976 §5).

Sans-IO: no sockets, no clock. Callers pass ``now`` (wall-clock seconds, so that
nonces stay valid across a restart and between replicas sharing the secret).

The pieces:

* ``parse_challenge`` / ``Challenge.to_header`` for ``WWW-Authenticate`` and
  ``Proxy-Authenticate``; ``parse_credentials`` / ``Credentials.to_header`` for
  ``Authorization`` and ``Proxy-Authorization``. Junk raises
  :class:`DigestParseError` (a ``ValueError``); servers answer it with 400.
* ``ha1`` and ``compute_response`` for MD5 (RFC 2617) and SHA-256 (RFC 7616,
  RFC 8760 for SIP). The server stores only HA1 values, one per algorithm.
* :class:`NonceManager`: stateless HMAC-signed nonces embedding their issue
  time and bound to a connection or source address, plus bounded nonce-count
  replay tracking.
* :func:`verify`: the whole server-side check, usable by SIP (method = request
  method) and by MSRP AUTH (method ``"AUTH"``, uri = the relay's URI).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Final

from shared.record import Record

__all__ = [
    "Algorithm",
    "AuthResult",
    "Challenge",
    "Credentials",
    "DigestParseError",
    "NonceManager",
    "NonceStatus",
    "compute_response",
    "ha1",
    "parse_challenge",
    "parse_credentials",
    "verify",
]


class DigestParseError(ValueError):
    """A malformed challenge or credentials header (the server answers 400)."""


class Algorithm(StrEnum):
    """Digest algorithms we implement (RFC 7616 §3.2; RFC 8760 adds SHA-256 to SIP)."""

    MD5 = "MD5"
    SHA256 = "SHA-256"

    @classmethod
    def parse(cls, value: str | None) -> Algorithm:
        """Map an ``algorithm=`` value to an Algorithm; absent means MD5 (RFC 2617 §3.2.1)."""
        if value is None:
            return cls.MD5
        member = _ALGORITHMS.get(value) or _ALGORITHMS.get(value.lower())
        if member is None:
            raise DigestParseError(f"unsupported digest algorithm {value!r}")
        return member

    def hash_hex(self, data: str) -> str:
        new = hashlib.md5 if self is Algorithm.MD5 else hashlib.sha256
        return new(data.encode("utf-8")).hexdigest()


#: Algorithm by its name as written (the usual spelling) and in lower case.
_ALGORITHMS = {
    **{member.value.lower(): member for member in Algorithm},
    **{member.value: member for member in Algorithm},
}

# --- header syntax (RFC 7616 §3.3/§3.4, RFC 3261 §25.1 auth-param) -------------

#: The token characters of RFC 2616 §2.2 and RFC 3261 §25.1, for ``str.strip``: what it
#: leaves of a text is not token characters (the SIP header parsers use it too).
TOKEN: Final = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-.!%*_+`'~"
_VALUE: Final = TOKEN + "/:@="  # unquoted values seen in the wild
_TOKEN_CHARS: Final = frozenset(TOKEN)
_VALUE_CHARS: Final = frozenset(_VALUE)
_WS: Final = " \t\r\n"


def _parse_plain_auth_header(text: str) -> tuple[str, dict[str, str], set[str]] | None:
    """:func:`_parse_auth_header` the short way, for what clients send (a space after the
    scheme, no escapes in quoted strings, no leading commas); None for anything else, which
    the careful parser then reads (and reports). String methods, no regular expression:
    the request's Proxy-Authorization is its longest header."""
    if "\\" in text:
        return None
    scheme, space, rest = text.partition(" ")
    if not space or (scheme != "Digest" and scheme.strip(TOKEN)):  # (not token characters)
        return None
    # Outside quotes at even places, quoted values at odd ones.
    pieces = rest.split('"')
    last = len(pieces) - 1
    if last % 2:
        return None  # a quote left open
    params: dict[str, str] = {}
    quoted: set[str] = set()
    naming = _NAMING_PIECES
    for at in range(0, last + 1, 2):
        piece = pieces[at]
        if at and at < last:
            name = naming.get(piece)
            if name is not None:  # ``, name=`` before a quoted value, seen before
                if name in params:
                    return None
                params[name] = pieces[at + 1]
                quoted.add(name)
                continue
        items = piece.split(",")
        if at:
            if items[0].strip(_WS):
                return None  # a quoted value is followed by white space, then a comma
            items[0] = ""
        elif not items[0].strip(_WS):
            return None  # no parameter first
        if at < last:  # the last item names the quoted value that follows
            if at and len(items) == 1:
                return None  # no comma between a quoted value and the next name
            named = _plain_param(items.pop())
            if named is None or named[1] or named[0] in params:
                return None
            params[named[0]] = pieces[at + 1]
            quoted.add(named[0])
            if at and len(items) == 1:  # the piece held that name alone
                if len(naming) >= _PLAIN_MAX:
                    naming.clear()
                naming[piece] = named[0]
        for item in items:
            if not item.strip(_WS):
                continue  # commas in a row
            named = _plain_param(item)
            if named is None or not _plain_value(named[1]) or named[0] in params:
                return None
            params[named[0]] = named[1]
    return scheme, params, quoted


#: ``name = value`` items already read, with what :func:`_plain_param` made of them, and
#: bare values already found plain: most repeat from request to request of a client
#: (``username=``, ``algorithm=MD5``, ``qop=auth``), and strip(TOKEN) takes longer.
_PLAIN_ITEMS: dict[str, tuple[str, str]] = {}
#: The text between two quoted values that only names the next one (``, realm=``), with
#: that name in lower case: the same from request to request of a client.
_NAMING_PIECES: dict[str, str] = {}
_PLAIN_VALUES: set[str] = set()
_PLAIN_MAX: Final = 512


def _plain_param(item: str) -> tuple[str, str] | None:
    """``name = value`` as (lower-case name, value), white space around both dropped."""
    known = _PLAIN_ITEMS.get(item)
    if known is not None:
        return known
    name, equals, value = item.partition("=")
    if not equals:
        return None
    name = name.strip(_WS)
    if not name or name.strip(TOKEN):  # what strip leaves is not token characters
        return None
    if len(_PLAIN_ITEMS) >= _PLAIN_MAX:
        _PLAIN_ITEMS.clear()
    known = _PLAIN_ITEMS[item] = (name.lower(), value.strip(_WS))
    return known


def _plain_value(value: str) -> bool:
    """True for a bare value that needs no quotes (tokens, and the /:@= seen in the wild)."""
    if value in _PLAIN_VALUES:
        return True
    if not value or value.strip(_VALUE):
        return False
    if len(_PLAIN_VALUES) >= _PLAIN_MAX:
        _PLAIN_VALUES.clear()
    _PLAIN_VALUES.add(value)
    return True


def _parse_auth_header(value: str) -> tuple[str, dict[str, str], set[str]]:
    """Split ``Scheme p1=v1, p2="v 2"`` into scheme, lower-cased params, quoted names.

    Quoted strings honour backslash escapes. A repeated parameter is an error
    (RFC 7616 §3.4: each directive at most once).
    """
    text = value.strip(_WS)
    fast = _parse_plain_auth_header(text)
    if fast is not None:
        return fast
    i = 0
    n = len(text)
    while i < n and text[i] in _TOKEN_CHARS:
        i += 1
    scheme = text[:i]
    if not scheme or (i < n and text[i] not in _WS):
        raise DigestParseError("missing authentication scheme")
    params: dict[str, str] = {}
    quoted: set[str] = set()
    while True:
        while i < n and (text[i] in _WS or text[i] == ","):
            i += 1
        if i >= n:
            break
        start = i
        while i < n and text[i] in _TOKEN_CHARS:
            i += 1
        name = text[start:i].lower()
        if not name:
            raise DigestParseError(f"bad parameter name at offset {start}")
        while i < n and text[i] in _WS:
            i += 1
        if i >= n or text[i] != "=":
            raise DigestParseError(f"parameter {name!r} has no value")
        i += 1
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] == '"':
            i += 1
            chars: list[str] = []
            while True:
                if i >= n:
                    raise DigestParseError("unterminated quoted string")
                c = text[i]
                if c == "\\":
                    if i + 1 >= n:
                        raise DigestParseError("dangling escape in quoted string")
                    chars.append(text[i + 1])
                    i += 2
                elif c == '"':
                    i += 1
                    break
                else:
                    chars.append(c)
                    i += 1
            param_value = "".join(chars)
            quoted.add(name)
        else:
            start = i
            while i < n and text[i] in _VALUE_CHARS:
                i += 1
            param_value = text[start:i]
            if not param_value:
                raise DigestParseError(f"parameter {name!r} has an empty value")
        if name in params:
            raise DigestParseError(f"parameter {name!r} repeated")
        params[name] = param_value
        while i < n and text[i] in _WS:
            i += 1
        if i < n and text[i] != ",":
            raise DigestParseError(f"expected ',' at offset {i}")
    return scheme, params, quoted


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _require(params: dict[str, str], name: str) -> str:
    try:
        return params[name]
    except KeyError:
        raise DigestParseError(f"missing {name!r} parameter") from None


@dataclass(frozen=True, slots=True)
class Challenge:
    """A Digest challenge (``WWW-Authenticate`` / ``Proxy-Authenticate``)."""

    realm: str
    nonce: str
    algorithm: Algorithm = Algorithm.MD5
    qop: tuple[str, ...] = ("auth",)
    opaque: str | None = None
    stale: bool = False

    def to_header(self) -> str:
        # RFC 7616 §3.3: realm, nonce, opaque and qop are quoted; algorithm and
        # stale are tokens.
        parts = [f"realm={_quote(self.realm)}", f"nonce={_quote(self.nonce)}"]
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        parts.append(f"algorithm={self.algorithm.value}")
        if self.qop:
            parts.append(f"qop={_quote(','.join(self.qop))}")
        if self.stale:
            parts.append("stale=true")
        return "Digest " + ", ".join(parts)


def parse_challenge(value: str) -> Challenge:
    """Parse a ``WWW-Authenticate``/``Proxy-Authenticate`` value; raise DigestParseError."""
    scheme, params, _ = _parse_auth_header(value)
    if scheme.lower() != "digest":
        raise DigestParseError(f"not a Digest challenge: {scheme!r}")
    qop = tuple(q.strip() for q in params.get("qop", "").split(",") if q.strip())
    return Challenge(
        realm=_require(params, "realm"),
        nonce=_require(params, "nonce"),
        algorithm=Algorithm.parse(params.get("algorithm")),
        qop=qop,
        opaque=params.get("opaque"),
        stale=params.get("stale", "false").lower() == "true",
    )


class Credentials(Record):
    """Digest credentials (``Authorization`` / ``Proxy-Authorization``)."""

    _fields = (
        "username",
        "realm",
        "nonce",
        "uri",
        "response",
        "algorithm",
        "qop",
        "nc",
        "cnonce",
        "opaque",
        "params",
    )

    def __init__(
        self,
        username: str,
        realm: str,
        nonce: str,
        uri: str,
        response: str,
        algorithm: Algorithm = Algorithm.MD5,
        qop: str | None = None,
        nc: str | None = None,
        cnonce: str | None = None,
        opaque: str | None = None,
        params: dict[str, str] | None = None,
    ) -> None:
        self.username: Final = username
        self.realm: Final = realm
        self.nonce: Final = nonce
        self.uri: Final = uri
        self.response: Final = response
        self.algorithm: Final = algorithm
        self.qop: Final = qop
        self.nc: Final = nc
        self.cnonce: Final = cnonce
        self.opaque: Final = opaque
        #: Every parameter as received (lower-case names), for extensions; not compared.
        self.params: Final[dict[str, str]] = {} if params is None else params

    def _key(self) -> tuple[object, ...]:
        return (
            self.username,
            self.realm,
            self.nonce,
            self.uri,
            self.response,
            self.algorithm,
            self.qop,
            self.nc,
            self.cnonce,
            self.opaque,
        )

    def to_header(self) -> str:
        # RFC 7616 §3.4: qop, nc and algorithm are tokens; the rest quoted.
        parts = [
            f"username={_quote(self.username)}",
            f"realm={_quote(self.realm)}",
            f"nonce={_quote(self.nonce)}",
            f"uri={_quote(self.uri)}",
            f"response={_quote(self.response)}",
            f"algorithm={self.algorithm.value}",
        ]
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
            parts.append(f"nc={self.nc}")
            parts.append(f"cnonce={_quote(self.cnonce or '')}")
        if self.opaque is not None:
            parts.append(f"opaque={_quote(self.opaque)}")
        return "Digest " + ", ".join(parts)


_NC_LENGTH = 8  # RFC 7616 §3.4: nc is exactly 8 hex digits
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


#: The last values parsed: a proxy reads a request's credentials twice (to authenticate,
#: then to drop ours from what it forwards). Credentials are immutable.
_PARSED_MAX = 256
_parsed: dict[str, Credentials] = {}


def parse_credentials(value: str) -> Credentials:
    """Parse an ``Authorization``/``Proxy-Authorization`` value; raise DigestParseError.

    With a qop the nc and cnonce parameters are required (RFC 7616 §3.4).
    ``userhash=true`` (RFC 7616 §3.4.4) is not supported and rejected.
    """
    cached = _parsed.get(value)
    if cached is None:
        cached = _parse_credentials(value)
        if len(_parsed) >= _PARSED_MAX:
            _parsed.clear()
        _parsed[value] = cached
    return cached


def _parse_credentials(value: str) -> Credentials:
    scheme, params, _ = _parse_auth_header(value)
    if scheme.lower() != "digest":
        raise DigestParseError(f"not Digest credentials: {scheme!r}")
    if params.get("userhash", "false").lower() == "true":
        raise DigestParseError("userhash is not supported")
    qop = params.get("qop")
    nc = params.get("nc")
    cnonce = params.get("cnonce")
    if qop is not None:
        qop = qop.lower()
        if qop not in ("auth", "auth-int"):
            raise DigestParseError(f"unknown qop {qop!r}")
        if nc is None or cnonce is None:
            raise DigestParseError("qop given without nc and cnonce")
        if len(nc) != _NC_LENGTH or not _HEX_DIGITS.issuperset(nc):
            raise DigestParseError(f"bad nonce count {nc!r}")
    return Credentials(
        username=_require(params, "username"),
        realm=_require(params, "realm"),
        nonce=_require(params, "nonce"),
        uri=_require(params, "uri"),
        response=_require(params, "response"),
        algorithm=Algorithm.parse(params.get("algorithm")),
        qop=qop,
        nc=nc,
        cnonce=cnonce,
        opaque=params.get("opaque"),
        params=params,
    )


# --- hashes (RFC 7616 §3.4.1 to §3.4.3) ---------------------------------------------


def ha1(algorithm: Algorithm | str, username: str, realm: str, password: str) -> str:
    """H(username ":" realm ":" password) as lower-case hex; what the server stores."""
    return Algorithm(algorithm).hash_hex(f"{username}:{realm}:{password}")


_HA2_MAX = 1024
_ha2_memo: dict[tuple[Algorithm, str, str], str] = {}


def _ha2(alg: Algorithm, method: str, uri: str) -> str:
    """H(method ":" uri), remembered: a client sends the same method to the same URI
    again and again (REGISTER to the registrar, MESSAGE to its buddies)."""
    key = (alg, method, uri)
    ha2 = _ha2_memo.get(key)
    if ha2 is None:
        ha2 = alg.hash_hex(f"{method}:{uri}")
        if len(_ha2_memo) >= _HA2_MAX:
            _ha2_memo.clear()
        _ha2_memo[key] = ha2
    return ha2


def compute_response(
    algorithm: Algorithm | str,
    ha1_hex: str,
    method: str,
    uri: str,
    nonce: str,
    *,
    qop: str | None = None,
    nc: str | None = None,
    cnonce: str | None = None,
) -> str:
    """The request-digest for qop=auth, or RFC 2069 style when ``qop`` is None.

    qop=auth-int needs the body hash and is not supported (ValueError).
    """
    alg = algorithm if type(algorithm) is Algorithm else Algorithm(algorithm)
    if qop is not None and qop != "auth":
        raise ValueError(f"unsupported qop {qop!r}")
    ha2 = _ha2(alg, method, uri)
    if qop is None:
        return alg.hash_hex(f"{ha1_hex}:{nonce}:{ha2}")
    if nc is None or cnonce is None:
        raise ValueError("qop=auth needs nc and cnonce")
    return alg.hash_hex(f"{ha1_hex}:{nonce}:{nc}:{cnonce}:{qop}:{ha2}")


# --- nonces ------------------------------------------------------------------------


class NonceStatus(Enum):
    VALID = "valid"
    #: Ours and untampered but too old: re-challenge with stale=true (RFC 7616 §3.3).
    STALE = "stale"
    #: Not ours, tampered, or issued for another binding (connection / address).
    INVALID = "invalid"


_TIMESTAMP = struct.Struct(">d")
_MAC_BYTES = 16  # truncated HMAC-SHA-256: 128 bits is plenty against forgery


class NonceManager:
    """Stateless, HMAC-signed nonces: ``base64url(issued_at || mac(issued_at, binding))``.

    The signature covers the issue time and a caller-chosen *binding* (a
    connection id for TCP/TLS, the source address for UDP), so a nonce sniffed
    on one flow is useless on another, and validation needs no server state.

    Nonce-count replay protection is optional state: :meth:`check_nc` remembers
    the last nc seen per nonce, at most ``max_tracked`` nonces (oldest evicted).
    An evicted nonce is forgotten, i.e. accepted once more at any nc; its
    lifetime still bounds the damage.
    """

    def __init__(
        self,
        secret: bytes,
        *,
        lifetime: float = 300.0,  # seconds; SIP clients re-REGISTER well within this
        max_tracked: int = 10_000,  # nonces whose last nonce-count we remember
    ) -> None:
        if len(secret) < 16:
            raise ValueError("nonce secret must be at least 16 bytes")
        self._secret = secret
        self.lifetime = lifetime
        self._max_tracked = max_tracked
        self._last_nc: OrderedDict[str, int] = OrderedDict()
        self._verified: dict[tuple[str, str], float] = {}  # (nonce, binding) → issued

    def _mac(self, stamp: bytes, binding: str) -> bytes:
        msg = stamp + b"\x00" + binding.encode("utf-8", "surrogateescape")
        return hmac.new(self._secret, msg, hashlib.sha256).digest()[:_MAC_BYTES]

    def make_nonce(self, now: float, binding: str) -> str:
        stamp = _TIMESTAMP.pack(now)
        raw = stamp + self._mac(stamp, binding)
        return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")

    def check_nonce(self, nonce: str, now: float, binding: str) -> NonceStatus:
        # A client reuses its nonce for every request until it goes stale: remember the
        # ones whose signature was already checked (for that binding) with their issue time.
        issued = self._verified.get((nonce, binding))
        if issued is not None:
            return self._age_status(issued, now)
        status = self._check_signature(nonce, now, binding)
        if status is not NonceStatus.INVALID:
            if len(self._verified) >= self._max_tracked:
                self._verified.clear()
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
            (self._verified[(nonce, binding)],) = _TIMESTAMP.unpack(raw[: _TIMESTAMP.size])
        return status

    def _check_signature(self, nonce: str, now: float, binding: str) -> NonceStatus:
        if len(nonce) > 64:
            return NonceStatus.INVALID
        try:
            raw = base64.urlsafe_b64decode(nonce + "=" * (-len(nonce) % 4))
        except (binascii.Error, ValueError):
            return NonceStatus.INVALID
        if len(raw) != _TIMESTAMP.size + _MAC_BYTES:
            return NonceStatus.INVALID
        stamp, mac = raw[: _TIMESTAMP.size], raw[_TIMESTAMP.size :]
        if not hmac.compare_digest(mac, self._mac(stamp, binding)):
            return NonceStatus.INVALID
        (issued,) = _TIMESTAMP.unpack(stamp)
        return self._age_status(issued, now)

    def _age_status(self, issued: float, now: float) -> NonceStatus:
        # A nonce from the future comes from a replica with a skewed clock: it
        # is still ours (signed), so it only expires, never turns invalid.
        if now - issued > self.lifetime:
            return NonceStatus.STALE
        return NonceStatus.VALID

    def check_nc(self, nonce: str, nc: str) -> bool:
        """Record nonce-count ``nc`` for ``nonce``; False if it is not above the last one."""
        try:
            count = int(nc, 16)
        except ValueError:
            return False
        last = self._last_nc.get(nonce)
        if last is not None and count <= last:
            return False
        self._last_nc[nonce] = count
        self._last_nc.move_to_end(nonce)
        while len(self._last_nc) > self._max_tracked:
            self._last_nc.popitem(last=False)
        return True

    def challenge(
        self,
        now: float,
        binding: str,
        realm: str,
        *,
        algorithm: Algorithm = Algorithm.SHA256,
        stale: bool = False,
    ) -> Challenge:
        """A fresh qop=auth challenge for ``realm``."""
        return Challenge(
            realm=realm,
            nonce=self.make_nonce(now, binding),
            algorithm=algorithm,
            qop=("auth",),
            stale=stale,
        )


# --- server-side verification --------------------------------------------------------


class AuthResult(Enum):
    """Outcome of :func:`verify`; only OK admits the request."""

    OK = "ok"
    #: Expired nonce with an otherwise valid response: challenge with stale=true.
    STALE_NONCE = "stale-nonce"
    BAD_NONCE = "bad-nonce"
    REPLAYED = "replayed"
    WRONG_REALM = "wrong-realm"
    WRONG_URI = "wrong-uri"
    UNKNOWN_USER = "unknown-user"
    BAD_RESPONSE = "bad-response"

    @property
    def ok(self) -> bool:
        return self is AuthResult.OK


#: The nonce count recorded for a use without qop: no later use of that nonce is accepted.
NO_QOP_NC = "ffffffff"


def verify(
    credentials: Credentials,
    *,
    method: str,
    ha1_hex: str | None,
    nonces: NonceManager,
    now: float,
    binding: str,
    realm: str,
    uri: str | None = None,
) -> AuthResult:
    """Check ``credentials`` against the stored HA1 for their user and algorithm.

    The caller looks the HA1 up itself (asynchronously, from the users table)
    for ``credentials.username`` and ``credentials.algorithm`` and passes None
    for an unknown user. For SIP, ``method`` is the request method and ``uri``
    may be left None (the digest covers ``credentials.uri``); for MSRP AUTH
    (RFC 4976 §5) ``method`` is ``"AUTH"`` and ``uri`` the relay URI the
    credentials must name.

    The response is checked before the nonce's age so that STALE_NONCE is only
    reported to a client that knows the password (RFC 7616 §3.3, stale).
    Credentials without ``qop`` (RFC 2069, MD5 only) are accepted once per nonce.
    """
    if credentials.realm != realm:
        return AuthResult.WRONG_REALM
    if uri is not None and credentials.uri != uri:
        return AuthResult.WRONG_URI
    if credentials.qop not in (None, "auth"):
        return AuthResult.BAD_RESPONSE
    # RFC 2069 (no qop) exists only for old MD5 clients.
    if credentials.qop is None and credentials.algorithm is not Algorithm.MD5:
        return AuthResult.BAD_RESPONSE
    status = nonces.check_nonce(credentials.nonce, now, binding)
    if status is NonceStatus.INVALID:
        return AuthResult.BAD_NONCE
    if ha1_hex is None:
        return AuthResult.UNKNOWN_USER
    expected = compute_response(
        credentials.algorithm,
        ha1_hex,
        method,
        credentials.uri,
        credentials.nonce,
        qop=credentials.qop,
        nc=credentials.nc,
        cnonce=credentials.cnonce,
    )
    if not hmac.compare_digest(expected.encode("ascii"), credentials.response.lower().encode()):
        return AuthResult.BAD_RESPONSE
    if status is NonceStatus.STALE:
        return AuthResult.STALE_NONCE
    if credentials.nc is not None and not nonces.check_nc(credentials.nonce, credentials.nc):
        return AuthResult.REPLAYED
    if credentials.qop is None and not nonces.check_nc(credentials.nonce, NO_QOP_NC):
        # RFC 2069 credentials carry no nonce count: their nonce is good for one use only
        # (counted as the highest nc), so a captured header cannot be replayed.
        return AuthResult.REPLAYED
    return AuthResult.OK
