"""A request head read the short way (names known from their sequence) is the request the
careful parse reads, and one the careful parse refuses is refused alike.

For any head — compact and odd-cased names, odd spacing, repeated and missing headers, bad
CSeq, Max-Forwards or Call-ID, folding, bare LFs, lines without a colon, too many or too
long lines — parsing with the short way must give the same message (method, URI, header
lines, body) or the same error (text, status, partial message) as parsing without it.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shared.sip.parser as parser
from shared.sip.errors import RemoteProtocolError
from shared.sip.message import SipRequest
from shared.sip.parser import SipStreamParser, parse_datagram

NAMES = {
    "Via": ["Via", "v", "VIA"],
    "Max-Forwards": ["Max-Forwards", "max-forwards"],
    "From": ["From", "f"],
    "To": ["To", "t"],
    "Call-ID": ["Call-ID", "i", "call-ID"],
    "CSeq": ["CSeq", "cseq"],
    "Content-Length": ["Content-Length", "l"],
    "Proxy-Authorization": ["Proxy-Authorization"],
    "Route": ["Route"],
    "X-Odd": ["X-Odd"],
}
VALUES = {
    "Via": [
        "SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport",
        "SIP/2.0/UDP a.example;branch=z9hG4bK1, SIP/2.0/TCP b.example",
    ],
    "Max-Forwards": ["70", "0", "255"],
    "From": ["<sip:alice@example.com>;tag=1928", '"A, B" <sip:a@x>;tag=9'],
    "To": ["<sip:bob@example.com>", "sip:bob@example.com"],
    "Call-ID": ["a84b4c76e66710@pc33", "x"],
    "CSeq": ["314159 {method}", "  2   {method}  "],
    "Proxy-Authorization": ['Digest username="alice", realm="example.com", nonce="n"'],
    "Route": ["<sip:p1.example;lr>, <sip:p2.example;lr>"],
    "X-Odd": ["", "a:b:c", "é ü", "  padded  "],
}
#: Values the careful parse refuses (drawn now and then).
BAD = {
    "Max-Forwards": ["256", "x", "\u00b2", "-1", ""],
    "Call-ID": [""],
    "CSeq": ["abc {method}", "1", "1 {method} extra", "\u00b2 {method}", "1 OPTIONS"],
    "Content-Length": ["x1", "99", "\u00b2"],
}
REQUIRED = ["Via", "Max-Forwards", "From", "To", "Call-ID", "CSeq"]
SEPARATORS = [": ", ":", " : ", "\t:\t", ":  "]


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    method = draw(st.sampled_from(["MESSAGE", "INVITE", "REGISTER", "FOO"]))
    kinds = draw(
        st.lists(st.sampled_from(["Via", "Proxy-Authorization", "Route", "X-Odd"]), max_size=4)
    )
    if draw(st.booleans()):
        kinds.append("Content-Length")
    if draw(st.integers(0, 9)) == 0:
        kinds.append(draw(st.sampled_from(REQUIRED)))  # repeated: refused unless it is Via
    fields = draw(st.permutations(REQUIRED + kinds))
    if draw(st.integers(0, 7)) == 0:
        missing = draw(st.sampled_from(REQUIRED))
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
        lines.append(f"{name}{draw(st.sampled_from(SEPARATORS))}{value.format(method=method)}")
    if lines and draw(st.integers(0, 9)) == 0:
        lines[-1] += "\r\n  folded"  # a continuation line: the careful parse's job
    if draw(st.integers(0, 14)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), "no colon here")
    if draw(st.integers(0, 14)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), "Bad Name: 1")
    eol = "\n" if draw(st.integers(0, 14)) == 0 else "\r\n"
    start = draw(
        st.sampled_from(
            [f"{method} sip:bob@example.com SIP/2.0", f"{method}  sip:bob@example.com SIP/2.0"]
        )
    )
    head = eol.join([start, *lines])
    return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


def parse(data: bytes, *, short: bool, **limits: int) -> object:
    """The parse of ``data`` with or without the short way: a request, or the error."""
    saved = parser._parse_request_fields
    if not short:
        parser._parse_request_fields = lambda *args: False  # type: ignore[assignment]
    try:
        return described(parse_datagram(data, **limits))
    except RemoteProtocolError as exc:
        return (str(exc), exc.status_hint, described(exc.partial))
    finally:
        parser._parse_request_fields = saved


def described(message: object) -> object:
    if isinstance(message, SipRequest):
        return (message.method, message.uri, list(message.headers), message.body)
    return message


@pytest.mark.interpreted  # it swaps a function the compiled build calls directly
@settings(max_examples=800, deadline=None)
@given(data=requests(), limits=st.sampled_from([{}, {"max_headers": 7}, {"max_line_length": 40}]))
def test_the_short_way_accepts_rejects_and_reads_as_the_careful_parse(
    data: bytes, limits: dict[str, int]
) -> None:
    assert parse(data, short=True, **limits) == parse(data, short=False, **limits)


@pytest.mark.interpreted  # it swaps a function the compiled build calls directly
@settings(max_examples=200, deadline=None)
@given(data=requests(), cut=st.integers(0, 400))
def test_the_stream_parser_frames_requests_as_the_careful_parse(data: bytes, cut: int) -> None:
    if b"Content-Length" not in data and b"\nl" not in data:
        return  # (a stream needs Content-Length; the datagram test covers the rest)
    results = []
    for short in (True, False):
        saved = parser._parse_request_fields
        if not short:
            parser._parse_request_fields = lambda *args: False  # type: ignore[assignment]
        try:
            stream = SipStreamParser()
            events: list[object] = []
            try:
                events += [described(e) for e in stream.receive_data(data[:cut])]
                events += [described(e) for e in stream.receive_data(data[cut:])]
            except RemoteProtocolError as exc:
                events.append((str(exc), exc.status_hint))
            results.append(events)
        finally:
            parser._parse_request_fields = saved
    assert results[0] == results[1]


@pytest.mark.interpreted
def test_what_clients_send_takes_the_short_way(monkeypatch: pytest.MonkeyPatch) -> None:
    data = (
        b"MESSAGE sip:bob@example.com SIP/2.0\r\n"
        b"Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:alice@example.com>;tag=1\r\n"
        b"To: <sip:bob@example.com>\r\nCall-ID: c1\r\nCSeq: 1 MESSAGE\r\n"
        b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
    )
    taken: list[bool] = []
    short = parser._parse_request_fields

    def spy(*args: object) -> bool:
        taken.append(short(*args))  # type: ignore[arg-type]
        return taken[-1]

    monkeypatch.setattr(parser, "_parse_request_fields", spy)
    request = parse_datagram(data)
    assert taken == [True]
    assert isinstance(request, SipRequest)
    assert request.get("CSeq") == "1 MESSAGE" and request.body == b"hi"
    request.headers.set("Max-Forwards", "69")  # its headers are its own to change
    assert parse_datagram(data).get("Max-Forwards") == "70"  # type: ignore[union-attr]
