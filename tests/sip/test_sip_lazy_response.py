"""A response the relay reads lazily is the response the full parse reads.

The relay parses the responses to its own requests with ``lazy_responses=True``: header
lines stay text, looked up in place, spliced to remove our Via, joined again to forward.
For any response — compact names, odd spacing, multi-valued and repeated Via lines,
folding, bare LFs, missing or repeated headers, bad CSeq — the lazy way must accept
exactly what the full parse accepts (the same error otherwise), read the same values,
and forward a response that parses to the same thing as the full parse-and-serialise.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.relay.sip.proxy import upstream_copy
from shared.sip.errors import RemoteProtocolError
from shared.sip.message import LazyResponse, SipResponse
from shared.sip.parser import SipStreamParser, parse_datagram

OURS = "SIP/2.0/UDP relay.example:5060;branch=z9hG4bK-ims-1.a;rport=5060;received=10.0.0.1"
THEIRS = "SIP/2.0/TCP pc33.atlanta.example;branch=z9hG4bKnashds8, SIP/2.0/UDP x.example"

NAMES = {
    "Via": ["Via", "v", "VIA", "via"],
    "From": ["From", "f"],
    "To": ["To", "t", "TO"],
    "Call-ID": ["Call-ID", "i", "call-id"],
    "CSeq": ["CSeq", "cseq"],
    "Content-Length": ["Content-Length", "l"],
    "Contact": ["Contact", "m"],
    "Record-Route": ["Record-Route"],
    "X-Odd": ["X-Odd"],
}
VALUES = {
    "Via": [
        OURS,
        f"{OURS}, {THEIRS}",
        f"{OURS} ,{THEIRS}",
        THEIRS,
        "SIP/2.0/UDP a.example;branch=z9hG4bK1 , , SIP/2.0/UDP b.example",
        " , ",
    ],
    "From": ["<sip:alice@example.com>;tag=1928", '"A, B" <sip:a@x>;tag=9'],
    "To": ["<sip:bob@example.com>;tag=a6c85cf", "sip:bob@example.com", ""],
    "Call-ID": ["a84b4c76e66710@pc33", "x"],
    "CSeq": ["314159 MESSAGE", "1 INVITE", "  2   MESSAGE  "],
    "Contact": ['"Bob, Jr" <sip:bob@192.0.2.4>;expires=60, <sip:b2@h>', "*"],
    "Record-Route": ["<sip:p1.example;lr>, <sip:p2.example;lr>"],
    "X-Odd": ["", "a:b:c", "é ü", "  padded  "],
}
#: Values the full parse refuses (drawn now and then).
BAD = {
    "Call-ID": [""],
    "CSeq": ["abc MESSAGE", "1", "1 MESSAGE extra", "\u00b2 MESSAGE", "2147483648 MESSAGE"],
    "Content-Length": ["x1", "99", "\u00b2"],
}
SEPARATORS = [": ", ":", " : ", "\t:\t", ":  "]


@st.composite
def responses(draw: st.DrawFn) -> bytes:
    status = draw(st.sampled_from(["200 OK", "180 Ringing", "404 Not Found", "202", "603 Nope"]))
    required = ["Via", "From", "To", "Call-ID", "CSeq"]
    kinds = draw(st.lists(st.sampled_from(["Via", "Contact", "Record-Route", "X-Odd"]), max_size=4))
    if draw(st.booleans()):
        kinds.append("Content-Length")
    if draw(st.integers(0, 9)) == 0:
        kinds.append(draw(st.sampled_from(required)))  # repeated: refused unless it is Via
    fields = draw(st.permutations(required + kinds))
    if draw(st.integers(0, 7)) == 0:
        missing = draw(st.sampled_from(required))
        fields = [f for f in fields if f != missing]
    body = draw(st.binary(max_size=20))
    lines = []
    for kind in fields:
        name = draw(st.sampled_from(NAMES[kind]))
        if kind in BAD and draw(st.integers(0, 9)) == 0:
            value = draw(st.sampled_from(BAD[kind]))
        elif kind == "Content-Length":
            value = draw(st.sampled_from([str(len(body)), "0", f"00{len(body)}"]))
        else:
            value = draw(st.sampled_from(VALUES[kind]))
        lines.append(f"{name}{draw(st.sampled_from(SEPARATORS))}{value}")
    if lines and draw(st.integers(0, 9)) == 0:
        lines[-1] += "\r\n  folded"  # a continuation line: the full parse's job
    if draw(st.integers(0, 14)) == 0:
        lines.append("no colon here")
    eol = "\n" if draw(st.integers(0, 14)) == 0 else "\r\n"
    head = eol.join([f"SIP/2.0 {status}", *lines])
    return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def parse_both(data: bytes) -> tuple[object, object]:
    """(full parse, lazy parse) of ``data``: each a message or (error, status, partial)."""
    return parse_both_ways(data, data, lazy=True)


def parse_both_ways(first: bytes, second: bytes, *, lazy: bool = False) -> tuple[object, object]:
    results: list[object] = []
    for data, lazily in ((first, False), (second, lazy)):
        try:
            results.append(parse_datagram(data, lazy_responses=lazily))
        except RemoteProtocolError as exc:
            partial = exc.partial
            if isinstance(partial, SipResponse):  # (what could be read: compared by content)
                partial = (partial.status, partial.reason, list(partial.headers))
            results.append((str(exc), exc.status_hint, partial))
    return results[0], results[1]


def same_response(full: SipResponse, lazy: SipResponse) -> None:
    assert (lazy.status, lazy.reason, lazy.body) == (full.status, full.reason, full.body)
    assert list(lazy.headers) == list(full.headers)


LOOKUPS = ["Via", "v", "CSeq", "Call-ID", "To", "Contact", "Content-Length", "X-Odd", "Route"]


@settings(max_examples=600, deadline=None)
@given(data=responses())
def test_lazy_parse_accepts_rejects_and_reads_as_the_full_parse(data: bytes) -> None:
    full, lazy = parse_both(data)
    if not isinstance(full, SipResponse):
        assert lazy == full  # the same error (message, status, partial message)
        return
    assert isinstance(lazy, SipResponse)
    # Lookups without parsing the lines give the full parse's answers.
    for name in LOOKUPS:
        assert lazy.get(name) == full.get(name)
        assert lazy.get_all(name) == full.get_all(name)
        if isinstance(lazy, LazyResponse):
            assert lazy.first(name) == full.headers.first(name)
    if isinstance(lazy, LazyResponse):
        assert lazy.lazy  # nothing above parsed the lines
    # Forwarded upstream: the same response as the full parse's copy, re-read.
    lazy_copy, full_copy = upstream_copy(lazy), upstream_copy(full)
    lazy_wire, full_wire = lazy_copy.to_bytes(), full_copy.to_bytes()
    again_full, again_lazy = parse_both_ways(full_wire, lazy_wire)
    if isinstance(again_full, SipResponse):  # (else: no Via left, both refused the same)
        assert isinstance(again_lazy, SipResponse)
        same_response(again_full, again_lazy)
    else:
        assert again_lazy == again_full
    # Serialised unchanged, it reads as the full parse's serialisation.
    resent_full, resent_lazy = parse_datagram(full.to_bytes()), parse_datagram(lazy.to_bytes())
    assert isinstance(resent_full, SipResponse) and isinstance(resent_lazy, SipResponse)
    same_response(resent_full, resent_lazy)
    # Once the headers are asked for, it is the full parse's message, and editable.
    same_response(full, lazy)
    lazy.headers.add("X-Added", "1")
    assert b"\r\nX-Added: 1\r\n" in lazy.to_bytes()


@settings(max_examples=200, deadline=None)
@given(data=responses(), cut=st.integers(1, 40))
def test_the_stream_parser_frames_lazy_responses_as_full_ones(data: bytes, cut: int) -> None:
    streams = []
    for lazy in (False, True):
        parser = SipStreamParser(lazy_responses=lazy)
        events: list[object] = []
        try:
            for part in (data[:cut], data[cut:], data):
                events.extend(parser.receive_data(part))
        except RemoteProtocolError as exc:
            events.append(str(exc))
        streams.append(events)
    full_events, lazy_events = streams
    assert len(full_events) == len(lazy_events)
    for full, lazy in zip(full_events, lazy_events, strict=True):
        if isinstance(full, SipResponse):
            assert isinstance(lazy, SipResponse)
            same_response(full, lazy)
        else:
            assert lazy == full


CANONICAL = (
    b"SIP/2.0 200 OK\r\n"
    b"Via: " + OURS.encode() + b"\r\n"
    b"Via: " + THEIRS.encode() + b"\r\n"
    b"From: <sip:alice@example.com>;tag=1928\r\n"
    b"To: <sip:bob@example.com>;tag=a6c85cf\r\n"
    b"Call-ID: a84b4c76e66710@pc33\r\n"
    b"CSeq: 314159 MESSAGE\r\n"
    b"Content-Length: 2\r\n\r\nhi"
)


def test_a_canonical_response_is_forwarded_byte_for_byte_as_the_full_serialiser_does() -> None:
    lazy = parse_datagram(CANONICAL, lazy_responses=True)
    full = parse_datagram(CANONICAL)
    assert isinstance(lazy, LazyResponse) and isinstance(full, SipResponse)
    assert upstream_copy(lazy).to_bytes() == upstream_copy(full).to_bytes()
    assert upstream_copy(lazy).to_bytes() == CANONICAL.replace(
        b"Via: " + OURS.encode() + b"\r\n", b""
    )
    assert lazy.lazy  # forwarding never parsed its lines


@pytest.mark.parametrize(
    ("via_lines", "expected"),
    [
        ([f"v: {OURS}, {THEIRS}"], [v.strip() for v in THEIRS.split(",")]),
        ([f"v:{OURS} , x.example", "Via: y.example"], ["x.example", "y.example"]),
        ([f"VIA : {OURS}", "v: y.example"], ["y.example"]),
    ],
)
def test_our_via_is_taken_from_compact_and_multi_valued_lines(
    via_lines: list[str], expected: list[str]
) -> None:
    head = "\r\n".join(
        [
            "SIP/2.0 486 Busy Here",
            *via_lines,
            "f: <sip:a@x>;tag=1",
            "t: <sip:b@x>;tag=2",
            "i: c1",
            "CSeq: 7 MESSAGE",
            "l: 0",
        ]
    )
    response = parse_datagram(head.encode() + b"\r\n\r\n", lazy_responses=True)
    assert isinstance(response, LazyResponse)
    assert response.get("Via") == OURS
    forwarded = parse_datagram(upstream_copy(response).to_bytes())
    assert isinstance(forwarded, SipResponse)
    assert forwarded.get_all("Via") == expected
    assert (forwarded.status, forwarded.reason) == (486, "Busy Here")


def test_a_changed_body_is_framed_by_its_own_length() -> None:
    lazy = parse_datagram(CANONICAL, lazy_responses=True)
    assert isinstance(lazy, LazyResponse)
    lazy.body = b"longer body"
    again = parse_datagram(lazy.to_bytes())
    assert again is not None and again.body == b"longer body"
    assert again.get("Content-Length") == "11"


def test_no_content_length_gets_one_when_forwarded() -> None:
    data = CANONICAL.replace(b"Content-Length: 2\r\n", b"")  # UDP: the body runs to the end
    lazy = parse_datagram(data, lazy_responses=True)
    assert isinstance(lazy, LazyResponse)
    wire = upstream_copy(lazy).to_bytes()
    assert wire.endswith(b"\r\nContent-Length: 2\r\n\r\nhi")
    events = list(SipStreamParser().receive_data(wire))  # a stream can frame it
    assert len(events) == 1 and isinstance(events[0], SipResponse)
    assert events[0].body == b"hi"
    assert events[0].get_all("Via") == [v.strip() for v in THEIRS.split(",")]


@pytest.mark.parametrize(
    "data",
    [
        CANONICAL.replace(b"Content-Length: 2", "Content-Length: \u00b2".encode()),
        CANONICAL.replace(b"CSeq: 314159", "CSeq: \u00b2".encode()),
        "MESSAGE sip:b@x SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\nFrom: <sip:a@x>;tag=1"
        "\r\nTo: <sip:b@x>\r\nCall-ID: c\r\nCSeq: 1 MESSAGE\r\nMax-Forwards: \u00b2\r\n"
        "Content-Length: 0\r\n\r\n".encode(),
    ],
)
def test_a_unicode_digit_is_a_protocol_error_not_a_crash(data: bytes) -> None:
    for lazy in (False, True):
        with pytest.raises(RemoteProtocolError):
            parse_datagram(data, lazy_responses=lazy)
