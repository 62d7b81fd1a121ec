"""Hypothesis properties: serialize∘parse identity, fuzzing, streaming bound."""

from __future__ import annotations

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from shared.msrp import (
    BodyData,
    Continuation,
    EndOfMessage,
    Event,
    MessageWriter,
    MsrpParser,
    MsrpUri,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def text(alphabet: str, min_size: int, max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(alphabet), min_size=min_size, max_size=max_size)


# ident = ALPHANUM 3*31ident-char (RFC 4975 §9)
tids = st.builds(str.__add__, text(ALNUM, 1, 1), text(ALNUM + ".-+%=", 3, 31))
hosts = st.one_of(
    st.sampled_from(["example.com", "RELAY.example.org", "[2001:db8::1]", "[::1]", "192.0.2.7"]),
    st.builds("{}.{}".format, text("abcxyz", 1, 8), st.sampled_from(["com", "net", "example"])),
)
uris = st.builds(
    MsrpUri,
    scheme=st.sampled_from(["msrp", "msrps", "MSRP"]),
    host=hosts,
    port=st.one_of(st.none(), st.integers(1, 65535)),
    session_id=st.one_of(st.none(), text(ALNUM + "-._~+=/", 1, 20)),
    transport=st.sampled_from(["tcp", "TCP", None]),
    userinfo=st.one_of(st.none(), text("abc123.", 1, 8)),
    params=st.lists(st.sampled_from(["foo", "a=b", "x=1"]), max_size=2).map(tuple),
).filter(lambda u: u.transport is not None or not u.params)
paths = st.lists(uris, min_size=1, max_size=3).map(tuple)
header_names = st.builds(str.__add__, text("XYabc", 1, 1), text(ALNUM + "-", 0, 15)).filter(
    lambda n: n.lower() not in ("to-path", "from-path")
)
header_values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\x7f"), max_size=40
).filter(lambda v: v == v.strip(" \t"))
headers = st.lists(st.tuples(header_names, header_values), max_size=6).map(tuple)
methods = st.one_of(st.sampled_from(["SEND", "REPORT", "AUTH", "NICKNAME"]), text("ABCXYZ", 1, 10))
flags: st.SearchStrategy[Continuation] = st.sampled_from(["$", "+", "#"])


@st.composite
def bodies(draw: st.DrawFn, tid: str) -> bytes:
    """Binary bodies seeded with end-line look-alikes for *tid*."""
    tricky = [
        b"\r\n",
        b"\r\n-------",
        b"-------",
        b"\r\n-------" + tid.encode()[: draw(st.integers(0, len(tid)))],
        b"\r\n-------" + tid.encode() + b"x",
        b"\r\n-------" + tid.encode() + b"\r\n",
    ]
    parts = draw(st.lists(st.one_of(st.binary(max_size=30), st.sampled_from(tricky)), max_size=8))
    body = b"".join(parts)
    marker = b"-------" + tid.encode()
    assume(not any(marker + f in body for f in (b"$", b"+", b"#")))
    return body


@st.composite
def messages(draw: st.DrawFn, body_only: bool = False) -> list[Event]:
    tid = draw(tids)
    if not body_only and draw(st.booleans()):
        comment = draw(st.one_of(st.none(), header_values.filter(bool)))
        head: Event = ResponseHead(
            tid, draw(st.integers(0, 999)), comment, draw(paths), draw(paths), draw(headers)
        )
        return [head, EndOfMessage(tid, "$")]
    has_body = body_only or draw(st.booleans())
    method = draw(methods)
    head = RequestHead(tid, method, draw(paths), draw(paths), draw(headers), has_body)
    body = draw(bodies(tid)) if has_body else b""
    events: list[Event] = [head]
    if body:
        events.append(BodyData(tid, body))
    return [*events, EndOfMessage(tid, draw(flags))]


def write(events: list[Event]) -> bytes:
    writer = MessageWriter()
    return b"".join(writer.send(event) for event in events)


def cut_points(data: bytes | bytearray, cuts: list[int]) -> list[int]:
    """Sorted split offsets inside *data*, ending at its length."""
    return [*sorted(c % (len(data) + 1) for c in cuts), len(data)]


def parse_split(data: bytes, cuts: list[int]) -> list[Event]:
    parser = MsrpParser()
    events: list[Event] = []
    pos = 0
    for cut in cut_points(data, cuts):
        parser.receive_data(data[pos:cut])
        pos = max(pos, cut)
        events.extend(parser.events())
    assert parser.at_message_boundary
    return events


def merge_body(events: list[Event]) -> list[Event]:
    out: list[Event] = []
    for event in events:
        prev = out[-1] if out else None
        if isinstance(event, BodyData) and isinstance(prev, BodyData):
            out[-1] = BodyData(prev.transaction_id, prev.data + event.data)
        else:
            out.append(event)
    return out


@FAST
@given(st.lists(messages(), min_size=1, max_size=3), st.lists(st.integers(0, 10_000), max_size=8))
def test_parse_inverts_serialize_for_any_split(msgs: list[list[Event]], cuts: list[int]) -> None:
    events = [event for msg in msgs for event in msg]
    data = write(events)
    parsed = merge_body(parse_split(data, cuts))
    assert parsed == events
    assert write(parsed) == data


@settings(max_examples=40, deadline=None)
@given(messages())
def test_parse_inverts_serialize_byte_by_byte(msg: list[Event]) -> None:
    data = write(msg)
    assert merge_body(parse_split(data, list(range(len(data))))) == msg


@settings(max_examples=80, deadline=None)
@given(messages(body_only=True), st.lists(st.integers(0, 10_000), max_size=10))
def test_body_hold_back_never_exceeds_end_line_length(msg: list[Event], cuts: list[int]) -> None:
    head = msg[0]
    assert isinstance(head, RequestHead) and head.has_body
    data = write(msg)
    limit = len(b"\r\n-------" + head.transaction_id.encode() + b"$\r\n")
    parser = MsrpParser()
    pos = 0
    in_body = False
    for cut in cut_points(data, cuts):
        parser.receive_data(data[pos:cut])
        pos = max(pos, cut)
        for event in parser.events():
            in_body = isinstance(event, RequestHead | BodyData)
        if in_body:
            assert parser.buffered_bytes < limit


def assert_only_remote_errors(data: bytes, cuts: list[int]) -> None:
    parser = MsrpParser(max_start_line=200, max_header_line=200, max_headers=8)
    pos = 0
    try:
        for cut in cut_points(data, cuts):
            parser.receive_data(data[pos:cut])
            pos = max(pos, cut)
            list(parser.events())
    except RemoteProtocolError as err:
        assert err.status_hint == 400
        assert err.transaction_id is None or 4 <= len(err.transaction_id) <= 32
        # The parser stays failed.
        try:
            parser.receive_data(b"MSRP abcd SEND\r\n")
        except RemoteProtocolError:
            pass
        else:
            raise AssertionError("parser accepted data after an error") from None


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
def test_random_bytes_give_events_or_remote_protocol_error(data: bytes, cuts: list[int]) -> None:
    assert_only_remote_errors(data, cuts)


@settings(max_examples=250, deadline=None)
@given(
    messages(),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), min_size=1, max_size=4),
    st.lists(st.integers(0, 10_000), max_size=6),
)
def test_mutated_messages_give_events_or_remote_protocol_error(
    msg: list[Event], edits: list[tuple[int, bytes]], cuts: list[int]
) -> None:
    data = bytearray(write(msg))
    for pos, replacement in edits:
        pos %= len(data) + 1
        data[pos : pos + len(replacement) or pos + 1] = replacement
    assert_only_remote_errors(bytes(data), cuts)


@FAST
@given(st.integers(0, 12), st.integers(2, 12))
def test_header_count_limit_is_enforced_with_400(extra: int, limit: int) -> None:
    tid = "tid0001"
    head = RequestHead(
        tid,
        "SEND",
        (MsrpUri("msrp", "a.example"),),
        (MsrpUri("msrp", "b.example"),),
        tuple((f"X-{i}", "v") for i in range(extra)),
    )
    data = write([head, EndOfMessage(tid)])
    parser = MsrpParser(max_headers=limit)
    parser.receive_data(data)
    if extra + 2 > limit:
        try:
            list(parser.events())
        except RemoteProtocolError as err:
            assert (err.status_hint, err.transaction_id) == (400, tid)
        else:
            raise AssertionError("limit not enforced")
    else:
        assert list(parser.events()) == [head, EndOfMessage(tid)]
