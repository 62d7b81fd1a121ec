"""SIP message objects: requests, responses and their ordered, case-insensitive headers.

Header names are normalised on the way in: compact forms (RFC 3261 §7.3.3 and
the extensions that registered one) become full names, and known names get
their canonical spelling. Values are kept as received (folding already undone
by the parser), so a message serialises back the way it came, except that
Content-Length is always recomputed from the body.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from shared.sip.errors import LocalProtocolError

__all__ = [
    "COMMA_LIST_HEADERS",
    "Headers",
    "LazyResponse",
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


def _position(keys: list[str], key: str) -> int:
    """Where ``key`` first is in ``keys`` (-1: absent). Not ``keys.index``: on a miss, and
    headers are looked up that a request usually lacks (Proxy-Require, P-Asserted-Identity),
    that raises a ValueError whose message it formats, which costs more than the scan."""
    for index, k in enumerate(keys):
        if k == key:
            return index
    return -1


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
    _items: list[tuple[str, str]]
    _keys: list[str]

    def __init__(
        self, items: Iterable[tuple[str, str]] = (), keys: list[str] | None = None
    ) -> None:
        if keys is not None:  # with_keys: canonical names, their keys given, taken over
            self._items = items if isinstance(items, list) else list(items)
            self._keys = keys
            return
        self._items = []
        self._keys = []
        for n, v in items:
            canonical, key = _name_key(n)
            self._items.append((canonical, v))
            self._keys.append(key)

    @classmethod
    def with_keys(cls, items: list[tuple[str, str]], keys: Iterable[str]) -> Headers:
        """Headers from canonically named ``items`` and their lower-case names ``keys``
        (a sender's own, constant lines: no name lookups). ``items`` is taken over."""
        return cls(items, list(keys))

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
        keys = self._keys
        count = keys.count(key)
        if count <= 1:  # the usual case, without a pass over every line in Python
            return [self._items[keys.index(key)][1]] if count else []
        return [item[1] for k, item in zip(keys, self._items, strict=True) if k == key]

    def first(self, name: str) -> str | None:
        """The value of the first line named ``name``, unsplit (None: no such line)."""
        index = _position(self._keys, _name_key(name)[1])
        return self._items[index][1] if index >= 0 else None

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
        index = _position(self._keys, key)
        if index < 0:
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
        index = _position(self._keys, key)
        if index < 0:
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
        index = _position(self._keys, _name_key(name)[1])
        return index if index >= 0 else None

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
        i = _position(self._keys, key)
        if i < 0:
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
        if key not in self._keys:
            return Headers(list(self._items), list(self._keys))
        kept = [
            (k, item)
            for k, item in zip(self._keys, self._items, strict=True)
            if k != key or not drop(item[1])
        ]
        return Headers([item for _, item in kept], [k for k, _ in kept])

    def forwarded(
        self,
        top: Iterable[tuple[str, str]],
        *,
        drop: str,
        drop_if: Callable[[str], bool],
        replace: str,
        value: str | None,
    ) -> Headers:
        """A copy, in one pass, as a proxy forwards it: the ``top`` lines above every other
        (in that order), without the ``drop`` lines whose value ``drop_if`` accepts, and
        (unless ``value`` is None) every ``replace`` line replaced by one line of ``value``
        where the first one was, or at the end. What :meth:`copy_without`, then
        :meth:`set`, then :meth:`prepend` of each ``top`` line from the last would make."""
        drop_key = _name_key(drop)[1]
        replace_name, replace_key = _name_key(replace)
        replacement = (replace_name, value) if value is not None else None
        if replacement is None:
            replace_key = ""  # (no line is replaced)
        items: list[tuple[str, str]] = []
        keys: list[str] = []
        for name, line_value in top:
            canonical, key = _name_key(name)
            items.append((canonical, line_value))
            keys.append(key)
        replaced = False
        for key, item in zip(self._keys, self._items, strict=True):
            if key == drop_key and drop_if(item[1]):
                continue
            if key == replace_key and replacement is not None:
                if replaced:
                    continue
                item = replacement
                replaced = True
            items.append(item)
            keys.append(key)
        if replacement is not None and not replaced:
            items.append(replacement)
            keys.append(replace_key)
        return Headers.with_keys(items, keys)

    def copy(self) -> Headers:
        return Headers(list(self._items), list(self._keys))


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


class SipMessage:
    """Headers and body; :class:`SipRequest` and :class:`SipResponse` add the start line.
    Messages compare equal when of the same class with the same fields."""

    # ``headers`` is a property (over ``_headers``) in every class, not a field that
    # LazyResponse alone turns into one: compiled code (shared/compiled.py) reads a field
    # directly, past a subclass's property.
    def __init__(self, *, headers: Headers | None = None, body: bytes = b"") -> None:
        self._headers: Headers = Headers() if headers is None else headers
        self.body = body

    @property
    def headers(self) -> Headers:
        return self._headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value

    def _fields(self) -> tuple[object, ...]:
        return (self.headers, self.body)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, SipMessage)
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # mutable, as the dataclass it was

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._fields()!r}"

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
        # Line breaks injected by a start line or a value (CRLF injection): the lines joined
        # without separators must hold none (two searches cost less than counting them in
        # the head).
        bare = "".join(lines)
        if "\r" in bare or "\n" in bare:
            if "\r" in start or "\n" in start:
                raise LocalProtocolError("line break in start line")
            for name, value in self.headers._items:
                if name != "Content-Length":
                    _check_header(name, value)
        return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + self.body


class SipRequest(SipMessage):
    def __init__(
        self, *, method: str = "", uri: str = "", headers: Headers | None = None, body: bytes = b""
    ) -> None:
        super().__init__(headers=headers, body=body)
        self.method = method
        self.uri = uri

    def _fields(self) -> tuple[object, ...]:
        return (self.method, self.uri, self.headers, self.body)

    def start_line(self) -> str:
        if not self.method or " " in self.method or not self.uri or " " in self.uri:
            raise LocalProtocolError("invalid request line")
        return f"{self.method} {self.uri} {SIP_VERSION}"


class SipResponse(SipMessage):
    def __init__(
        self,
        *,
        status: int = 200,
        reason: str = "OK",
        headers: Headers | None = None,
        body: bytes = b"",
    ) -> None:
        super().__init__(headers=headers, body=body)
        self.status = status
        self.reason = reason

    def _fields(self) -> tuple[object, ...]:
        return (self.status, self.reason, self.headers, self.body)

    def start_line(self) -> str:
        if not 100 <= self.status <= 699:
            raise LocalProtocolError(f"invalid status code {self.status}")
        return f"{SIP_VERSION} {self.status} {self.reason}"


class LazyResponse(SipResponse):
    """A received response whose header lines stay text until something needs them.

    A relay reads few things of the responses to the requests it sent: the status, the top
    Via and CSeq (transaction matching, RFC 3261 §17.1.3), and forwards the rest upstream
    unchanged but for its own Via (§16.7 step 3). :func:`shared.sip.parser.parse_datagram`
    (``lazy_responses=True``) builds one only for a response that the full parse accepts,
    so nothing is lost by not parsing every line: :meth:`first`, :meth:`get` and
    :meth:`get_all` read the lines in place, :meth:`without_top_via` splices the Via out,
    and :meth:`to_bytes` joins the lines again instead of re-serialising each header.

    Reading :attr:`headers` parses every line (the same names and values as the full
    parse) and from then on the object is an ordinary :class:`SipResponse`: the headers
    may be changed, so the lines are forgotten and ``to_bytes`` serialises them.
    """

    def __init__(
        self,
        *,
        status: int,
        reason: str,
        lines: list[str],
        keys: list[str],
        body: bytes = b"",
        content_length: int | None = None,
    ) -> None:
        # Not SipResponse's __init__: the headers stay unparsed (``_headers`` unset).
        self.status = status
        self.reason = reason
        self.body = body
        #: The Content-Length value as received (None: none), for the framing.
        self.content_length = content_length
        #: Header lines as received (``name: value``, validated, no CR/LF) and the
        #: lower-case canonical name of each; None once ``headers`` was parsed.
        self._lines: list[str] | None = lines
        self._keys = keys

    @property
    def headers(self) -> Headers:
        lines = self._lines
        if lines is not None:
            headers = Headers()
            headers.extend_parsed(
                [
                    (name.rstrip(" \t"), value.strip(" \t"))
                    for name, _, value in (line.partition(":") for line in lines)
                ]
            )
            self._headers = headers
            self._lines = None
        return self._headers

    @headers.setter
    def headers(self, value: Headers) -> None:
        self._headers = value
        self._lines = None

    @property
    def lazy(self) -> bool:
        """True while the header lines are still unparsed text."""
        return self._lines is not None

    def _values(self, key: str) -> list[str]:
        lines = self._lines or []
        return [
            lines[i].partition(":")[2].strip(" \t") for i, k in enumerate(self._keys) if k == key
        ]

    def first(self, name: str) -> str | None:
        """As ``headers.first(name)``: the first line's value, unsplit (None: no such line)."""
        lines = self._lines
        if lines is None:
            return self.headers.first(name)
        index = _position(self._keys, _name_key(name)[1])
        if index < 0:
            return None
        return lines[index].partition(":")[2].strip(" \t")

    def get(self, name: str, default: str | None = None) -> str | None:
        if self._lines is None:
            return self.headers.get(name, default)
        key = _name_key(name)[1]
        value = self.first(name)
        if value is None:
            return default
        if key not in COMMA_LIST_HEADERS:
            return value
        if "," not in value and value:
            return value
        values = self.get_all(name)
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        if self._lines is None:
            return self.headers.get_all(name)
        key = _name_key(name)[1]
        values = self._values(key)
        if key in COMMA_LIST_HEADERS:
            return [part for v in values for part in split_comma_list(v)]
        return values

    def without_top_via(self) -> SipResponse:
        """This response as a proxy forwards it upstream: its top Via value removed
        (§16.7 step 3), every other line as it was."""
        lines = self._lines
        if lines is None:
            headers = self.headers.copy()
            headers.pop_first_value("Via")
            return SipResponse(
                status=self.status, reason=self.reason, headers=headers, body=self.body
            )
        keys = list(self._keys)
        lines = list(lines)
        try:
            index = keys.index("via")
        except ValueError:
            pass
        else:
            name, _, value = lines[index].partition(":")
            parts = split_comma_list(value.strip(" \t"))
            if len(parts) <= 1:
                del lines[index]
                del keys[index]
            else:
                lines[index] = name.rstrip(" \t") + ": " + ", ".join(parts[1:])
        return LazyResponse(
            status=self.status,
            reason=self.reason,
            lines=lines,
            keys=keys,
            body=self.body,
            content_length=self.content_length,
        )

    def to_bytes(self) -> bytes:
        lines = self._lines
        body = self.body
        if lines is not None:
            start = self.start_line()
            if "\r" not in start and "\n" not in start:
                index = _position(self._keys, "content-length")
                if index < 0:
                    head = "\r\n".join([start, *lines, f"Content-Length: {len(body)}"])
                    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
                value = lines[index].partition(":")[2].strip(" \t")
                if value == str(len(body)):  # (else rewritten, as the full way does)
                    head = "\r\n".join([start, *lines])
                    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
        return super().to_bytes()  # (parses the lines first: the general serialisation)
