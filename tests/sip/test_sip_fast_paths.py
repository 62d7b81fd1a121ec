"""The short ways the hot path takes give exactly what the careful ways give.

The parser reads plain CRLF heads without unfolding, the transport stamps a plain Via's
rport/received by text, From/To values of the usual shape are read by string methods, and
Digest credentials without escapes are split on their quotes and commas; anything unusual
goes the careful way. A client must not be able to tell.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shared.digest as digest
import shared.sip.headers as headers
from shared.sip.errors import RemoteProtocolError
from shared.sip.headers import _parse_via, parse_via, stamp_rport
from shared.sip.message import Headers
from shared.sip.parser import _HEAD_END_RE, parse_datagram

TOKEN = st.text(alphabet="abcXYZ019-._!%*+`'~", min_size=1, max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    transport=st.sampled_from(["UDP", "TCP", "TLS", "udp", "Tcp"]),
    host=st.sampled_from(["127.0.0.1", "pc33.atlanta.com", "Host-1.example", "[::1]", "a_b"]),
    port=st.one_of(st.none(), st.integers(0, 99999)),
    params=st.lists(st.tuples(TOKEN, st.one_of(st.none(), TOKEN)), max_size=3),
    tail=st.sampled_from([";rport", ";rport=5", "; rport", ";RPORT", ";rport;received=1.2.3.4"]),
    source=st.sampled_from(["127.0.0.1", "192.0.2.7", "::1"]),
)
def test_a_plain_via_is_stamped_as_the_parsed_one_would_be(
    transport: str,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
    tail: str,
    source: str,
) -> None:
    text = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    value = f"SIP/2.0/{transport} {host}{'' if port is None else f':{port}'}{text}{tail}"
    stamped = stamp_rport(value, source, 5062)
    try:
        via = _parse_via(value)
    except ValueError:
        assert stamped is None  # junk is left to the careful parser, which refuses it
        return
    if stamped is None:
        return  # not plain: the transport takes the long way
    expected = via.with_param("rport", "5062").with_param("received", source)
    assert stamped == str(expected)
    assert parse_via(stamped) == _parse_via(stamped) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (  # baresip
            "SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKa9c1e3f2b5d0;rport",
            "SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bKa9c1e3f2b5d0;rport=5062;received=192.0.2.7",
        ),
        (  # linphone: the branch before rport, a host name, no port
            "SIP/2.0/TCP pc33.atlanta.example;branch=z9hG4bK.Xy-12_3;rport",
            "SIP/2.0/TCP pc33.atlanta.example;branch=z9hG4bK.Xy-12_3;rport=5062;received=192.0.2.7",
        ),
    ],
)
def test_what_clients_send_in_a_via_is_stamped_the_short_way(value: str, expected: str) -> None:
    stamped = stamp_rport(value, "192.0.2.7", 5062)
    assert stamped == expected
    assert parse_via(stamped) == _parse_via(stamped)


@pytest.mark.parametrize(
    "value",
    [
        "SIP/2.0/UDP 127.0.0.1:40001;branch=z9hG4bK1;rport=1",  # rport already there
        "SIP/2.0/UDP 127.0.0.1:40001;+sip.x=1;rport",  # a feature value str(Via) quotes
        "SIP/2.0/UDP [::1]:40001;branch=z9hG4bK1;rport",  # an IPv6 reference
        "SIP/2.0/udp 127.0.0.1;branch=z9hG4bK1;rport",  # a lower-case transport
        "SIP/2.0/UDP 127.0.0.1:123456;branch=z9hG4bK1;rport",  # six digits of port
        "SIP/2.0/UDP 127.0.0.1;branch;rport",  # a valueless parameter
    ],
)
def test_a_via_of_another_shape_is_left_to_the_careful_parser(value: str) -> None:
    assert stamp_rport(value, "192.0.2.7", 5062) is None


HEADS = [
    "MESSAGE sip:bob@example.test SIP/2.0",
    "Via: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1;rport",
    "Max-Forwards: 70",
    "From: <sip:alice@example.test>;tag=1",
    "To: <sip:bob@example.test>",
    "Call-ID: abc",
    "CSeq: 1 MESSAGE",
    "Content-Length: 2",
]


@settings(max_examples=300, deadline=None)
@given(
    ends=st.lists(st.sampled_from(["\r\n", "\n", "\r\n", "\r\n"]), min_size=8, max_size=8),
    fold=st.sampled_from(["", "\r\n ", "\r\n\t", "\n "]),
    junk=st.sampled_from(["", "X-Bad\r: 1", "Subject: a\rb", "Subject:\tx", "Bad Name: 1"]),
    blank=st.sampled_from(["\r\n", "\n", "\r\n\r\n"]),
)
def test_every_line_end_parses_as_the_careful_parser_reads_it(
    ends: list[str], fold: str, junk: str, blank: str
) -> None:
    lines = [*HEADS[:4], f"Subject: one{fold}two", *([junk] if junk else []), *HEADS[4:]]
    head = "".join(line + end for line, end in zip(lines, ends + ["\r\n"] * 2, strict=False))
    data = (head + blank + "hi").encode()
    careful = data.replace(b"\r\n", b"\n")  # the same message, bare LFs: the careful way
    try:
        fast = parse_datagram(data)
    except RemoteProtocolError as exc:
        fast_error: str | None = str(exc)
    else:
        fast_error = None
    try:
        slow = parse_datagram(careful)
    except RemoteProtocolError as exc:
        slow_error: str | None = str(exc)
    else:
        slow_error = None
    if "\r" in data.decode().replace("\r\n", ""):
        return  # a bare CR is refused however it is read; the LF copy is another message
    assert (fast_error is None) == (slow_error is None), (fast_error, slow_error)
    if fast_error is None:
        assert fast is not None and slow is not None
        assert (fast.method, fast.uri, fast.headers) == (slow.method, slow.uri, slow.headers)
        # The body starts after the first empty line, however the lines end (§7.5).
        end = _HEAD_END_RE.search(data)
        assert end is not None and fast.body == data[end.end() :][:2]


def _careful(value: str) -> tuple[str, dict[str, str], set[str]] | str:
    plain = digest._parse_plain_auth_header
    digest._parse_plain_auth_header = lambda _text: None  # type: ignore[assignment]
    try:
        return digest._parse_auth_header(value)
    except digest.DigestParseError:
        return "error"
    finally:
        digest._parse_plain_auth_header = plain  # type: ignore[assignment]


PIECES = ['username="a"', "realm=x", 'nonce="n o"', "nc=00000001", 'uri="sip:b@c"', 'x="a\\"b"']


@pytest.mark.interpreted  # it swaps a function the compiled build calls directly
@settings(max_examples=500, deadline=None)
@given(
    pieces=st.lists(
        st.one_of(st.sampled_from(PIECES), st.text(alphabet='a=", \t\\/:@', max_size=6)),
        max_size=6,
    ),
    separator=st.sampled_from([", ", ",", " , ", ",, ", " "]),
)
def test_credentials_split_the_short_way_equal_the_careful_split(
    pieces: list[str], separator: str
) -> None:
    value = "Digest " + separator.join(pieces)
    plain = digest._parse_plain_auth_header(value.strip(" \t\r\n"))
    if plain is not None:
        assert plain == _careful(value)


@pytest.mark.interpreted  # it swaps a function the compiled build calls directly
@pytest.mark.parametrize(
    "value",
    [
        'Digest username="alice", realm="example.test", nonce="AbC-_", uri="sip:x@y", '
        'response="0a1b", algorithm=MD5, qop=auth, nc=0000000a, cnonce="z"',
        "Digest realm=example.test,username=alice",
    ],
)
def test_what_clients_send_takes_the_short_way(value: str) -> None:
    assert digest._parse_plain_auth_header(value) == _careful(value)


@settings(max_examples=200, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(["Via", "v", "Proxy-Authorization", "proxy-authorization", "To"]),
            st.sampled_from(["ours", "theirs", "x"]),
        ),
        max_size=8,
    )
)
def test_copy_without_equals_rebuilding_the_headers_without_the_dropped_lines(
    lines: list[tuple[str, str]],
) -> None:
    headers = Headers(lines)
    copied = headers.copy_without("Proxy-Authorization", lambda value: value == "ours")
    rebuilt = Headers(
        (name, value)
        for name, value in headers
        if not (name == "Proxy-Authorization" and value == "ours")
    )
    assert copied == rebuilt
    assert copied.keys() == rebuilt.keys()
    copied.add("Via", "new")  # a copy: the original is untouched
    assert headers == Headers(lines)


@settings(max_examples=500, deadline=None)
@given(
    lines=st.lists(
        st.tuples(
            st.sampled_from(
                ["Via", "v", "Proxy-Authorization", "Max-Forwards", "max-forwards", "To"]
            ),
            st.sampled_from(["ours", "theirs", "70"]),
        ),
        max_size=8,
    ),
    top=st.lists(
        st.tuples(st.sampled_from(["Via", "Record-Route", "v"]), TOKEN), min_size=1, max_size=3
    ),
    hops=st.one_of(st.none(), st.sampled_from(["69", "0"])),
)
def test_a_forwarded_copy_is_what_dropping_setting_and_prepending_make(
    lines: list[tuple[str, str]], top: list[tuple[str, str]], hops: str | None
) -> None:
    headers = Headers(lines)
    forwarded = headers.forwarded(
        top,
        drop="Proxy-Authorization",
        drop_if=lambda value: value == "ours",
        replace="Max-Forwards",
        value=hops,
    )
    expected = headers.copy_without("Proxy-Authorization", lambda value: value == "ours")
    if hops is not None:
        expected.set("Max-Forwards", hops)
    for name, value in reversed(top):
        expected.prepend(name, value)
    assert forwarded == expected
    assert forwarded.keys() == expected.keys()
    forwarded.add("Via", "new")  # a copy: the original is untouched
    assert headers == Headers(lines)


@settings(max_examples=500, deadline=None)
@given(
    display=st.sampled_from(["", '"A, B" ', "Bob ", '"" ']),
    uri=st.sampled_from(["sip:alice@example.test", "sip:[::1]:5060;lr", "tel:+1", "", "a b"]),
    params=st.lists(st.tuples(TOKEN, st.one_of(st.none(), TOKEN)), max_size=3),
    junk=st.sampled_from(["", " ", ";", ";=x", '; tag="q"', ">", ";a=", "\t"]),
    angle=st.booleans(),
)
def test_a_plain_name_addr_is_read_as_the_careful_parser_reads_it(
    display: str, uri: str, params: list[tuple[str, str | None]], junk: str, angle: bool
) -> None:
    text = "".join(f";{n}" if v is None else f";{n}={v}" for n, v in params)
    value = f"{display}<{uri}>{text}{junk}" if angle else f"{uri}{text}{junk}"
    results = []
    for parse in (headers._parse_name_addr, headers._parse_name_addr_general):
        try:
            results.append(parse(value))
        except ValueError as exc:
            results.append(str(exc))
    assert results[0] == results[1]
