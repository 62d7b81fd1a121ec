"""The parser's whole-message fast path against its incremental reader.

``MsrpParser(fast_path=False)`` runs everything through the incremental reader; the default
parses wholly buffered messages in one pass; ``whole_messages=True`` (the relay's choice) also
delivers each of those as one ``WholeMessage``. For any input and any split into reads the
three must be indistinguishable: the same events (body slices included; a WholeMessage
counts as the events it stands for) after every read, the same buffered bytes and
message-boundary state, the same error with the same status and transaction-id.
"""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.msrp import (
    BodyData,
    EndOfMessage,
    Event,
    MsrpParser,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    WholeMessage,
)
from tests.msrp.test_msrp_properties import cut_points, messages, write

MANY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@dataclass
class Limits:
    max_start_line: int = 8192
    max_header_line: int = 4096
    max_headers: int = 32
    max_header_bytes: int = 16384


limits = st.one_of(
    st.just(Limits()),
    st.builds(
        Limits,
        max_start_line=st.integers(10, 120),
        max_header_line=st.integers(10, 200),
        max_headers=st.integers(1, 8),
        max_header_bytes=st.integers(10, 400),
    ),
)


@dataclass
class Read:
    """What a caller can observe after one ``receive_data``."""

    events: list[Event]
    error: tuple[str, int, str | None] | None
    buffered: int
    boundary: bool


def drain(parser: MsrpParser, events: list[Event]) -> None:
    for event in parser.events():
        events.extend(event.expand() if isinstance(event, WholeMessage) else [event])


def observe(data: bytes, cuts: list[int], mode: str, lim: Limits, eof: bool) -> list[Read]:
    parser = MsrpParser(
        max_start_line=lim.max_start_line,
        max_header_line=lim.max_header_line,
        max_headers=lim.max_headers,
        max_header_bytes=lim.max_header_bytes,
        fast_path=mode != "incremental",
        whole_messages=mode == "whole",
    )
    reads: list[Read] = []
    pos = 0
    for cut in cut_points(data, cuts):
        events: list[Event] = []
        error = None
        try:
            parser.receive_data(data[pos:cut])
            drain(parser, events)
        except RemoteProtocolError as err:
            error = (str(err), err.status_hint, err.transaction_id)
        pos = max(pos, cut)
        reads.append(Read(events, error, parser.buffered_bytes, parser.at_message_boundary))
        if error is not None:
            return reads
    if eof:
        events = []
        error = None
        parser.receive_eof()
        try:
            drain(parser, events)
        except RemoteProtocolError as err:
            error = (str(err), err.status_hint, err.transaction_id)
        reads.append(Read(events, error, parser.buffered_bytes, parser.at_message_boundary))
    return reads


def assert_same(data: bytes, cuts: list[int], lim: Limits, eof: bool = False) -> list[Read]:
    incremental = observe(data, cuts, "incremental", lim, eof)
    assert observe(data, cuts, "fast", lim, eof) == incremental
    assert observe(data, cuts, "whole", lim, eof) == incremental
    return incremental


cuts_strategy = st.lists(st.integers(0, 10_000), max_size=8)


@MANY
@given(st.lists(messages(), min_size=1, max_size=4), cuts_strategy, limits, st.booleans())
def test_well_formed_streams_parse_the_same(
    msgs: list[list[Event]], cuts: list[int], lim: Limits, eof: bool
) -> None:
    assert_same(write([event for msg in msgs for event in msg]), cuts, lim, eof)


@MANY
@given(
    st.lists(messages(), min_size=1, max_size=3),
    st.lists(st.tuples(st.integers(0, 10_000), st.binary(max_size=3)), min_size=1, max_size=4),
    cuts_strategy,
    limits,
)
def test_mutated_streams_parse_and_fail_the_same(
    msgs: list[list[Event]], edits: list[tuple[int, bytes]], cuts: list[int], lim: Limits
) -> None:
    data = bytearray(write([event for msg in msgs for event in msg]))
    for pos, replacement in edits:
        pos %= len(data) + 1
        data[pos : pos + len(replacement) or pos + 1] = replacement
    assert_same(bytes(data), cuts, lim, eof=True)


# Fragments that steer random input towards the grammar's corners.
PIECES = [
    b"MSRP ",
    b"abcd",
    b"tid0001",
    b" SEND",
    b" 200",
    b" 200 OK",
    b"\r\n",
    b"\r\n\r\n",
    b"To-Path: msrp://a.example:1/s;tcp",
    b"From-Path: msrp://b.example;tcp",
    b"to-path: msrp://c.example;tcp",
    b"X: y",
    b"-------",
    b"-------abcd",
    b"-------tid0001",
    b"$",
    b"+",
    b"#",
    b"\xff",
    b"\x00",
    b"\t",
]


@MANY
@given(
    st.lists(st.one_of(st.sampled_from(PIECES), st.binary(max_size=4)), max_size=30),
    cuts_strategy,
    limits,
)
def test_fragment_soup_parses_and_fails_the_same(
    parts: list[bytes], cuts: list[int], lim: Limits
) -> None:
    assert_same(b"".join(parts), cuts, lim, eof=True)


@st.composite
def lookalike_streams(draw: st.DrawFn) -> bytes:
    """SENDs whose bodies hold near-misses of their end-line: a flag without its CRLF, a
    CR alone, another tid, a prefix of the tid. The writer refuses some of these (the
    sender must not put ``-------tid<flag>`` in a body), but a parser must read them."""
    out = []
    for n in range(draw(st.integers(1, 3))):
        tid = draw(st.sampled_from(["abcd", "tid0001", "tid00011"]))
        flag = draw(st.sampled_from([b"$", b"+", b"#"]))
        near = [
            b"\r\n-------" + tid.encode() + flag + tail
            for tail in (b"x", b"\r", b"\rx", b"\n", b"" + flag)
        ] + [
            b"\r\n-------" + tid.encode()[:-1] + flag + b"\r\n",
            b"\r\n-------" + tid.encode() + b"0" + flag + b"\r\n",
            b"-------" + tid.encode() + flag + b"\r\n",
            b"\r\n\r\n",
        ]
        body = b"".join(
            draw(st.lists(st.one_of(st.sampled_from(near), st.binary(max_size=6)), max_size=5))
        )
        out.append(
            f"MSRP {tid} SEND\r\nTo-Path: msrp://r.example/s;tcp\r\n"
            f"From-Path: msrp://a.example/c{n};tcp\r\n\r\n".encode()
            + body
            + f"\r\n-------{tid}".encode()
            + flag
            + b"\r\n"
        )
    return b"".join(out)


@MANY
@given(lookalike_streams(), cuts_strategy, st.booleans())
def test_end_line_lookalikes_in_bodies_parse_the_same(
    data: bytes, cuts: list[int], eof: bool
) -> None:
    assert_same(data, cuts, Limits(), eof)


def test_whole_messages_in_one_read_come_out_in_one_pass() -> None:
    """The common case the fast path exists for: several small SENDs and a response in one
    read, each head, body and end-line delivered, nothing left buffered."""
    stream = b"".join(
        b"MSRP t%04d SEND\r\nTo-Path: msrp://r.example:2855/s1;tcp msrp://b.example:9/c;tcp\r\n"
        b"From-Path: msrp://a.example:8/c;tcp\r\nMessage-ID: m%d\r\n"
        b"Content-Type: text/plain\r\n\r\nhello %d\r\n-------t%04d$\r\n" % (i, i, i, i)
        for i in range(3)
    ) + (
        b"MSRP r0001 200 OK\r\nTo-Path: msrp://r.example:2855/s1;tcp\r\n"
        b"From-Path: msrp://b.example:9/c;tcp\r\n-------r0001$\r\n"
    )
    reads = assert_same(stream, [], Limits())
    events = reads[-1].events
    assert [type(e).__name__ for e in events] == [
        *["RequestHead", "BodyData", "EndOfMessage"] * 3,
        "ResponseHead",
        "EndOfMessage",
    ]
    assert events[1] == BodyData("t0000", b"hello 0")
    head = events[3]
    assert isinstance(head, RequestHead) and head.get_header("message-id") == "m1"
    response = events[9]
    assert isinstance(response, ResponseHead) and (response.status, response.comment) == (
        200,
        "OK",
    )
    assert events[-1] == EndOfMessage("r0001", "$")
    assert reads[-1].buffered == 0 and reads[-1].boundary


def test_a_body_longer_than_the_read_streams_and_holds_back_only_the_end_line() -> None:
    """A head that arrives with the start of a long body: the head and the body so far come
    out at once, the rest streams, and no more than a possible end-line start is held."""
    head = (
        b"MSRP big1 SEND\r\nTo-Path: msrp://r.example/s;tcp\r\nFrom-Path: msrp://a.example/c;tcp"
        b"\r\nMessage-ID: m\r\nContent-Type: application/octet-stream\r\n\r\n"
    )
    body = b"z" * 100_000
    stream = head + body + b"\r\n-------big1$\r\n"
    reads = assert_same(stream, list(range(len(head) + 10, len(stream), 16_384)), Limits())
    first = reads[0]
    assert isinstance(first.events[0], RequestHead) and first.events[0].has_body
    assert first.events[1] == BodyData("big1", b"z" * 10)
    assert all(read.buffered < len(b"\r\n-------big1$\r\n") for read in reads)
    assert b"".join(e.data for r in reads for e in r.events if isinstance(e, BodyData)) == body
    assert reads[-1].events[-1] == EndOfMessage("big1", "$")


def test_an_error_after_good_messages_in_the_same_read_keeps_them_first() -> None:
    good = (
        b"MSRP good1 SEND\r\nTo-Path: msrp://r.example/s;tcp\r\nFrom-Path: msrp://a.example/c;tcp"
        b"\r\n-------good1$\r\n"
    )
    bad = b"MSRP bad01 SEND\r\nFrom-Path: msrp://a.example/c;tcp\r\n-------bad01$\r\n"
    (read,) = assert_same(good + bad, [], Limits())
    assert [type(e).__name__ for e in read.events] == ["RequestHead", "EndOfMessage"]
    assert read.error is not None and read.error[1:] == (400, "bad01")


def test_whole_messages_come_as_one_event_each_and_a_long_body_still_streams() -> None:
    send = (
        b"MSRP w001 SEND\r\nTo-Path: msrp://r.example/s;tcp\r\nFrom-Path: msrp://a.example/c;tcp"
        b"\r\nMessage-ID: m\r\nContent-Type: text/plain\r\n\r\nhi\r\n-------w001+\r\n"
    )
    ok = (
        b"MSRP w002 200 OK\r\nTo-Path: msrp://r.example/s;tcp\r\n"
        b"From-Path: msrp://a.example/c;tcp\r\n-------w002$\r\n"
    )
    long_head = send.replace(b"w001", b"w003").split(b"hi")[0]
    parser = MsrpParser(whole_messages=True)
    parser.receive_data(send + ok + long_head + b"part one")
    first, second, third, fourth = parser.events()
    assert isinstance(first, WholeMessage) and first.body == b"hi" and first.continuation == "+"
    assert isinstance(first.head, RequestHead) and first.head.get_header("Message-ID") == "m"
    assert isinstance(second, WholeMessage) and second.body == b""
    assert isinstance(second.head, ResponseHead) and second.head.status == 200
    assert isinstance(third, RequestHead) and third.transaction_id == "w003"
    assert fourth == BodyData("w003", b"part one")
    parser.receive_data(b" and two\r\n-------w003$\r\n")
    assert list(parser.events()) == [BodyData("w003", b" and two"), EndOfMessage("w003", "$")]
    assert parser.at_message_boundary
