"""RFC 4975 / RFC 4976 examples as test vectors: parsed whole, byte by byte and
in random slices, serialized back byte for byte."""

from __future__ import annotations

import random

import pytest

from shared.msrp import (
    BodyData,
    EndOfMessage,
    Event,
    MessageWriter,
    MsrpParser,
    RequestHead,
    ResponseHead,
    StatusHeader,
    make_response,
    parse_uri,
    serialize_message,
)


def crlf(text: str) -> bytes:
    return text.replace("\n", "\r\n").encode("utf-8")


# RFC 4975 §4 / §7.1.1: a SEND with a body (Byte-Range as printed in the RFC).
SEND = crlf(
    "MSRP a786hjs2 SEND\n"
    "To-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\n"
    "From-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\n"
    "Message-ID: 87652491\n"
    "Byte-Range: 1-25/25\n"
    "Content-Type: text/plain\n"
    "\n"
    "Hey Bob, are you there?\n"
    "-------a786hjs2$\n"
)

# RFC 4975 §4: the hop-by-hop 200 for it.
SEND_200 = crlf(
    "MSRP a786hjs2 200 OK\n"
    "To-Path: msrp://atlanta.example.com:7654/jshA7weztas;tcp\n"
    "From-Path: msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp\n"
    "-------a786hjs2$\n"
)

# RFC 4975 §7.1.2-style REPORT: no body, Status header.
REPORT = crlf(
    "MSRP dkei38sd REPORT\n"
    "To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp\n"
    "From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp\n"
    "Message-ID: 12339sdqwer\n"
    "Byte-Range: 1-106/106\n"
    "Status: 000 200 OK\n"
    "-------dkei38sd$\n"
)

# RFC 4975 §7.1.1: one message in two chunks, '+' then '$'.
CHUNKED = crlf(
    "MSRP dkei38sd SEND\n"
    "To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp\n"
    "From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp\n"
    "Message-ID: 4564dpWd\n"
    "Byte-Range: 1-*/8\n"
    "Content-Type: text/plain\n"
    "\n"
    "abcd\n"
    "-------dkei38sd+\n"
    "MSRP dkei38ia SEND\n"
    "To-Path: msrp://alicepc.example.com:7777/iau39soe2843z;tcp\n"
    "From-Path: msrp://bob.example.com:8888/9di4eae923wzd;tcp\n"
    "Message-ID: 4564dpWd\n"
    "Byte-Range: 5-8/8\n"
    "Content-Type: text/plain\n"
    "\n"
    "EFGH\n"
    "-------dkei38ia$\n"
)

# RFC 4976 §5.1: AUTH, 401 challenge, AUTH with credentials, 200 with Use-Path.
AUTH_FLOW = crlf(
    "MSRP 49fh AUTH\n"
    "To-Path: msrps://alice@intra.example.com;tcp\n"
    "From-Path: msrps://alice.example.com:9892/98cjs;tcp\n"
    "-------49fh$\n"
    "MSRP 49fh 401 Unauthorized\n"
    "To-Path: msrps://alice.example.com:9892/98cjs;tcp\n"
    "From-Path: msrps://alice@intra.example.com;tcp\n"
    'WWW-Authenticate: Digest realm="intra.example.com", qop="auth", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"\n'
    "-------49fh$\n"
    "MSRP 49fi AUTH\n"
    "To-Path: msrps://alice@intra.example.com;tcp\n"
    "From-Path: msrps://alice.example.com:9892/98cjs;tcp\n"
    'Authorization: Digest username="Alice", realm="intra.example.com", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop=auth, nc=00000001, '
    'cnonce="0a4f113b", response="6629fae49393a05397450978507c4ef1"\n'
    "-------49fi$\n"
    "MSRP 49fi 200 OK\n"
    "To-Path: msrps://alice.example.com:9892/98cjs;tcp\n"
    "From-Path: msrps://alice@intra.example.com;tcp\n"
    "Use-Path: msrps://intra.example.com:9000/jui787s2f;tcp\n"
    "Expires: 900\n"
    "-------49fi$\n"
)

VECTORS = {
    "send": SEND,
    "send-200": SEND_200,
    "report": REPORT,
    "chunked": CHUNKED,
    "auth-flow": AUTH_FLOW,
    "all-back-to-back": SEND + SEND_200 + REPORT + CHUNKED + AUTH_FLOW,
}


def parse(data: bytes, sizes: list[int] | None = None) -> list[Event]:
    parser = MsrpParser()
    events: list[Event] = []
    pos = 0
    for size in sizes or [len(data)]:
        parser.receive_data(data[pos : pos + size])
        pos += size
        events.extend(parser.events())
    parser.receive_data(data[pos:])
    events.extend(parser.events())
    assert parser.at_message_boundary
    return events


def merge_body(events: list[Event]) -> list[Event]:
    """Join consecutive BodyData events so different splits compare equal."""
    out: list[Event] = []
    for event in events:
        prev = out[-1] if out else None
        if isinstance(event, BodyData) and isinstance(prev, BodyData):
            out[-1] = BodyData(prev.transaction_id, prev.data + event.data)
        else:
            out.append(event)
    return out


def write(events: list[Event]) -> bytes:
    writer = MessageWriter()
    return b"".join(writer.send(event) for event in events)


@pytest.mark.parametrize("name", VECTORS)
def test_vector_parses_identically_whole_and_byte_by_byte(name: str) -> None:
    data = VECTORS[name]
    whole = merge_body(parse(data))
    assert merge_body(parse(data, [1] * len(data))) == whole


@pytest.mark.parametrize("name", VECTORS)
@pytest.mark.parametrize("seed", range(20))
def test_vector_parses_identically_in_random_slices(name: str, seed: int) -> None:
    data = VECTORS[name]
    rng = random.Random(seed)
    sizes = [rng.randint(0, 40) for _ in range(len(data))]
    assert merge_body(parse(data, sizes)) == merge_body(parse(data))


@pytest.mark.parametrize("name", VECTORS)
def test_vector_serializes_back_byte_for_byte(name: str) -> None:
    data = VECTORS[name]
    assert write(parse(data)) == data
    assert write(parse(data, [1] * len(data))) == data


def test_send_example_yields_head_body_and_end() -> None:
    head, body, end = merge_body(parse(SEND))
    assert isinstance(head, RequestHead)
    assert head.transaction_id == "a786hjs2"
    assert head.method == "SEND"
    assert head.has_body
    assert head.to_path == (parse_uri("msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp"),)
    assert head.from_path[0].session_id == "jshA7weztas"
    assert head.message_id == "87652491"
    assert head.content_type == "text/plain"
    assert head.get_header("byte-range") == "1-25/25"
    assert head.headers == (
        ("Message-ID", "87652491"),
        ("Byte-Range", "1-25/25"),
        ("Content-Type", "text/plain"),
    )
    assert body == BodyData("a786hjs2", b"Hey Bob, are you there?")
    assert end == EndOfMessage("a786hjs2", "$")


def test_send_example_is_rebuilt_from_events() -> None:
    head = RequestHead(
        transaction_id="a786hjs2",
        method="SEND",
        to_path=(parse_uri("msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp"),),
        from_path=(parse_uri("msrp://atlanta.example.com:7654/jshA7weztas;tcp"),),
        headers=(
            ("Message-ID", "87652491"),
            ("Byte-Range", "1-25/25"),
            ("Content-Type", "text/plain"),
        ),
        has_body=True,
    )
    assert serialize_message(head, b"Hey Bob, are you there?") == SEND


def test_make_response_to_send_example_gives_rfc_200() -> None:
    head = parse(SEND)[0]
    assert isinstance(head, RequestHead)
    response = make_response(head, 200)
    assert serialize_message(response) == SEND_200


def test_response_example_has_no_body() -> None:
    events = parse(SEND_200)
    assert events == [
        ResponseHead(
            "a786hjs2",
            200,
            "OK",
            (parse_uri("msrp://atlanta.example.com:7654/jshA7weztas;tcp"),),
            (parse_uri("msrp://biloxi.example.com:12763/kjhd37s2s20w2a;tcp"),),
        ),
        EndOfMessage("a786hjs2", "$"),
    ]


def test_report_example_exposes_status_header() -> None:
    head, end = parse(REPORT)
    assert isinstance(head, RequestHead)
    assert head.method == "REPORT"
    assert not head.has_body
    assert head.status_header == StatusHeader(200, "OK")
    assert end == EndOfMessage("dkei38sd", "$")


def test_chunked_example_yields_plus_then_dollar() -> None:
    events = merge_body(parse(CHUNKED))
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert ends == [EndOfMessage("dkei38sd", "+"), EndOfMessage("dkei38ia", "$")]
    bodies = [e.data for e in events if isinstance(e, BodyData)]
    assert bodies == [b"abcd", b"EFGH"]
    heads = [e for e in events if isinstance(e, RequestHead)]
    assert [str(h.byte_range) for h in heads] == ["1-*/8", "5-8/8"]
    assert {h.message_id for h in heads} == {"4564dpWd"}


def test_auth_flow_example_parses_challenge_and_use_path() -> None:
    events = parse(AUTH_FLOW)
    heads = [e for e in events if isinstance(e, RequestHead | ResponseHead)]
    assert [type(h).__name__ for h in heads] == [
        "RequestHead",
        "ResponseHead",
        "RequestHead",
        "ResponseHead",
    ]
    auth, challenge, auth2, ok = heads
    assert isinstance(auth, RequestHead) and auth.method == "AUTH"
    assert auth.to_path[0].session_id is None
    assert auth.to_path[0].userinfo == "alice"
    assert isinstance(challenge, ResponseHead) and challenge.status == 401
    www = challenge.get_header("WWW-Authenticate")
    assert www is not None and www.startswith("Digest realm=")
    assert isinstance(auth2, RequestHead)
    assert auth2.get_header("authorization") is not None
    assert isinstance(ok, ResponseHead) and ok.status == 200
    assert ok.use_path == (parse_uri("msrps://intra.example.com:9000/jui787s2f;tcp"),)
    assert ok.expires == 900


def test_make_response_to_auth_is_end_to_end_and_matches_rfc_401() -> None:
    auth = parse(AUTH_FLOW)[0]
    assert isinstance(auth, RequestHead)
    www = 'Digest realm="intra.example.com", qop="auth", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093"'
    response = make_response(auth, 401, headers=(("WWW-Authenticate", www),))
    expected = AUTH_FLOW.split(b"MSRP 49fi AUTH")[0].split(b"-------49fh$\r\n", 1)[1]
    assert serialize_message(response) == expected
