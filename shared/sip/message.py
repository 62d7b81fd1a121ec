"""SIP message objects: requests, responses and their ordered, case-insensitive headers.

Header names are normalised on the way in: compact forms (RFC 3261 §7.3.3 and
the extensions that registered one) become full names, and known names get
their canonical spelling. Values are kept as received (folding already undone
by the parser), so a message serialises back the way it came, except that
Content-Length is always recomputed from the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from shared.sip.errors import LocalProtocolError

__all__ = [
    "COMMA_LIST_HEADERS",
    "Headers",
    "SipMessage",
    "SipRequest",
    "SipResponse",
    "canonical_name",
    "split_comma_list",
]

SIP_VERSION = "SIP/2.0"

# RFC 3261 §7.3.3 plus RFC 3265 (o, u), RFC 3515 (r), RFC 3892 (b), RFC 4028 (x).
COMPACT_FORMS = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "u": "Allow-Events",
    "r": "Refer-To",
    "b": "Referred-By",
    "x": "Session-Expires",
}

_CANONICAL = {
    name.lower(): name
    for name in (
        *COMPACT_FORMS.values(),
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Authentication-Info",
        "Authorization",
        "Call-Info",
        "CSeq",
        "Date",
        "Error-Info",
        "Expires",
        "In-Reply-To",
        "Max-Forwards",
        "Min-Expires",
        "Min-SE",
        "MIME-Version",
        "Organization",
        "Path",
        "Priority",
        "Proxy-Authenticate",
        "Proxy-Authorization",
        "Proxy-Require",
        "Record-Route",
        "Reply-To",
        "Require",
        "Retry-After",
        "Route",
        "Server",
        "Service-Route",
        "Timestamp",
        "Unsupported",
        "User-Agent",
        "Warning",
        "WWW-Authenticate",
    )
}

#: Headers whose grammar is a comma-separated list (RFC 3261 §7.3.1): a line
#: with several values means the same as several lines. Authentication
#: headers are not here: their parameters are themselves comma-separated.
COMMA_LIST_HEADERS = frozenset(
    name.lower()
    for name in (
        "Accept",
        "Accept-Encoding",
        "Accept-Language",
        "Alert-Info",
        "Allow",
        "Allow-Events",
        "Call-Info",
        "Contact",
        "Content-Encoding",
        "Error-Info",
        "In-Reply-To",
        "Path",
        "Proxy-Require",
        "Record-Route",
        "Require",
        "Route",
        "Service-Route",
        "Supported",
        "Unsupported",
        "Via",
        "Warning",
    )
)


_NAME_CACHE: dict[str, tuple[str, str]] = {}  # name as given → (canonical, lower-case key)
_NAME_CACHE_MAX = 4096  # distinct spellings remembered; junk names beyond are not cached


def _name_key(name: str) -> tuple[str, str]:
    """(canonical name, lower-case lookup key) of ``name``; memoised, names repeat."""
    cached = _NAME_CACHE.get(name)
    if cached is not None:
        return cached
    lower = name.lower()
    canonical = COMPACT_FORMS.get(lower) or _CANONICAL.get(lower, name)
    result = (canonical, canonical.lower())
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = result
    return result


def canonical_name(name: str) -> str:
    """Full, canonically spelled header name (``i`` → ``Call-ID``, ``cseq`` → ``CSeq``)."""
    return _name_key(name)[0]


def split_comma_list(value: str) -> list[str]:
    """Split on commas outside quoted strings and ``<...>``; empty elements dropped."""
    if "," not in value:
        value = value.strip()
        return [value] if value else []
    parts: list[str] = []
    start = 0
    in_quotes = False
    in_angle = False
    i = 0
    n = len(value)
    while i < n:
        c = value[i]
        if in_quotes:
            if c == "\\":
                i += 1
            elif c == '"':
                in_quotes = False
        elif c == '"':
            in_quotes = True
        elif c == "<":
            in_angle = True
        elif c == ">":
            in_angle = False
        elif c == "," and not in_angle:
            parts.append(value[start:i])
            start = i + 1
        i += 1
    parts.append(value[start:])
    return [p.strip() for p in parts if p.strip()]


class Headers:
    """Ordered (name, value) pairs with case-insensitive, compact-form-aware lookup."""

    # _keys[i] is the lower-case canonical name of _items[i]: lookups compare it directly.
    __slots__ = ("_items", "_keys")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        self._keys: list[str] = []
        for n, v in items:
            canonical, key = _name_key(n)
            self._items.append((canonical, v))
            self._keys.append(key)

    @classmethod
    def with_keys(cls, items: list[tuple[str, str]], keys: Iterable[str]) -> Headers:
        """Headers from canonically named ``items`` and their lower-case names ``keys``
        (a sender's own, constant lines: no name lookups). ``items`` is taken over."""
        new = cls.__new__(cls)
        new._items = items
        new._keys = list(keys)
        return new

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        return _name_key(name)[1] in self._keys

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Headers):
            return NotImplemented
        return self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"

    def keys(self) -> list[str]:
        """The lower-case canonical name of every line, in order (do not modify it)."""
        return self._keys

    def raw(self, name: str) -> list[str]:
        """The values of every line named ``name``, unsplit."""
        key = _name_key(name)[1]
        if key not in self._keys:
            return []
        return [item[1] for k, item in zip(self._keys, self._items, strict=True) if k == key]

    def first(self, name: str) -> str | None:
        """The value of the first line named ``name``, unsplit (None: no such line)."""
        key = _name_key(name)[1]
        try:
            return self._items[self._keys.index(key)][1]
        except ValueError:
            return None

    def count(self, name: str) -> int:
        """How many lines are named ``name``."""
        return self._keys.count(_name_key(name)[1])

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` in order; comma-list headers are split into elements."""
        values = self.raw(name)
        if _name_key(name)[1] in COMMA_LIST_HEADERS:
            return [part for v in values for part in split_comma_list(v)]
        return values

    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (the topmost element for comma-list headers)."""
        key = _name_key(name)[1]
        try:
            index = self._keys.index(key)
        except ValueError:
            return default
        if key not in COMMA_LIST_HEADERS:
            return self._items[index][1]
        value = self._items[index][1]
        if "," not in value:  # the common case: one element per line
            value = value.strip()
            if value:
                return value
        values = self.get_all(name)
        return values[0] if values else default

    def extend_parsed(self, fields: list[tuple[str, str]]) -> None:
        """Append (name as received, value) lines: the parser's bulk :meth:`add`."""
        items, keys, cache = self._items, self._keys, _NAME_CACHE
        for name, value in fields:
            names = cache.get(name) or _name_key(name)
            items.append((names[0], value))
            keys.append(names[1])

    def add(self, name: str, value: str) -> None:
        canonical, key = _name_key(name)
        self._items.append((canonical, value))
        self._keys.append(key)

    def prepend(self, name: str, value: str) -> None:
        """Insert before every other header (a proxy adding its Via, §16.6 step 8)."""
        canonical, key = _name_key(name)
        self._items.insert(0, (canonical, value))
        self._keys.insert(0, key)

    def set(self, name: str, value: str) -> None:
        """Replace every ``name`` line by one, where the first one was (else at the end)."""
        canonical, key = _name_key(name)
        try:
            index = self._keys.index(key)
        except ValueError:
            self.add(name, value)
            return
        if self._keys.count(key) == 1:
            self._items[index] = (canonical, value)
            return
        self.remove(name)
        self._items.insert(index, (canonical, value))
        self._keys.insert(index, key)

    def replace_at(self, index: int, value: str) -> None:
        """Give line ``index`` (in iteration order) a new value, keeping its name."""
        self._items[index] = (self._items[index][0], value)

    def index(self, name: str) -> int | None:
        """The position of the first line named ``name`` (None: no such line)."""
        try:
            return self._keys.index(_name_key(name)[1])
        except ValueError:
            return None

    def remove(self, name: str) -> None:
        key = _name_key(name)[1]
        if key not in self._keys:
            return
        kept = [(k, item) for k, item in zip(self._keys, self._items, strict=True) if k != key]
        self._keys = [k for k, _ in kept]
        self._items = [item for _, item in kept]

    def pop_first_value(self, name: str) -> str | None:
        """Remove and return the topmost element of a header (e.g. the top Via, §16.7)."""
        key = _name_key(name)[1]
        try:
            i = self._keys.index(key)
        except ValueError:
            return None
        n, v = self._items[i]
        parts = split_comma_list(v) if key in COMMA_LIST_HEADERS else [v.strip()]
        if len(parts) <= 1:
            del self._items[i]
            del self._keys[i]
        else:
            self._items[i] = (n, ", ".join(parts[1:]))
        return parts[0] if parts else None

    def copy_without(self, name: str, drop: Callable[[str], bool]) -> Headers:
        """A copy without the ``name`` lines whose value ``drop`` accepts."""
        key = _name_key(name)[1]
        new = Headers.__new__(Headers)
        if key not in self._keys:
            new._items = list(self._items)
            new._keys = list(self._keys)
            return new
        kept = [
            (k, item)
            for k, item in zip(self._keys, self._items, strict=True)
            if k != key or not drop(item[1])
        ]
        new._keys = [k for k, _ in kept]
        new._items = [item for _, item in kept]
        return new

    def copy(self) -> Headers:
        new = Headers.__new__(Headers)
        new._items = list(self._items)
        new._keys = list(self._keys)
        return new


_GOOD_NAMES: set[str] = set()  # header names already checked (they repeat)


def _check_header(name: str, value: str) -> None:
    # Never let a caller inject extra header lines or a body (CRLF injection).
    if name not in _GOOD_NAMES:
        if not name or any(c in name for c in " \t\r\n:"):
            raise LocalProtocolError(f"invalid header name {name!r}")
        if len(_GOOD_NAMES) < _NAME_CACHE_MAX:
            _GOOD_NAMES.add(name)
    if "\r" in value or "\n" in value:
        raise LocalProtocolError(f"invalid characters in header {name!r}")


@dataclass(eq=True, kw_only=True)
class SipMessage:
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""

    def get(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)

    def get_all(self, name: str) -> list[str]:
        return self.headers.get_all(name)

    def start_line(self) -> str:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        """Serialise; Content-Length is always written (in place), computed from the body."""
        start = self.start_line()
        lines = [start]
        append = lines.append
        good = _GOOD_NAMES
        length_written = False
        for name, value in self.headers._items:
            if name == "Content-Length":
                # Keep its position; the value always comes from the body.
                if not length_written:
                    append(f"Content-Length: {len(self.body)}")
                    length_written = True
                continue
            if name not in good:
                _check_header(name, value)
            append(f"{name}: {value}")
        if not length_written:
            append(f"Content-Length: {len(self.body)}")
        head = "\r\n".join(lines)
        # One scan for line breaks injected by a start line or a value (CRLF injection):
        # the head holds exactly the separators joined in, and nothing else.
        breaks = len(lines) - 1
        if head.count("\n") != breaks or head.count("\r") != breaks:
            if "\r" in start or "\n" in start:
                raise LocalProtocolError("line break in start line")
            for name, value in self.headers._items:
                if name != "Content-Length":
                    _check_header(name, value)
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


@dataclass(eq=True, kw_only=True)
class SipRequest(SipMessage):
    method: str = ""
    uri: str = ""

    def start_line(self) -> str:
        if not self.method or " " in self.method or not self.uri or " " in self.uri:
            raise LocalProtocolError("invalid request line")
        return f"{self.method} {self.uri} {SIP_VERSION}"


@dataclass(eq=True, kw_only=True)
class SipResponse(SipMessage):
    status: int = 200
    reason: str = "OK"

    def start_line(self) -> str:
        if not 100 <= self.status <= 699:
            raise LocalProtocolError(f"invalid status code {self.status}")
        return f"{SIP_VERSION} {self.status} {self.reason}"
