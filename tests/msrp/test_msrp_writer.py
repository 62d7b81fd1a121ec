"""MessageWriter state machine, serializer validation and make_response."""

from __future__ import annotations

import pytest

from shared.msrp import (
    BodyData,
    EndOfMessage,
    LocalProtocolError,
    MessageWriter,
    RequestHead,
    ResponseHead,
    make_response,
    parse_path,
    parse_uri,
    serialize_end_line,
    serialize_head,
    serialize_message,
)

CLIENT = parse_uri("msrps://client.example.com:9892/c1;tcp")
RELAY_IN = parse_uri("msrps://relay.example.com:2855/r1;tcp")
BOB = parse_uri("msrp://bob.example.com:8888/b1;tcp")


def send_head(tid: str = "tid0001", has_body: bool = True, method: str = "SEND") -> RequestHead:
    return RequestHead(
        transaction_id=tid,
        method=method,
        to_path=(RELAY_IN, BOB),
        from_path=(CLIENT,),
        headers=(("Message-ID", "m1"), ("Content-Type", "text/plain")) if has_body else (),
        has_body=has_body,
    )


def test_head_with_body_ends_with_blank_line_and_end_line_gets_leading_crlf() -> None:
    writer = MessageWriter()
    head = writer.send(send_head())
    assert head.endswith(b"Content-Type: text/plain\r\n\r\n")
    assert writer.send(BodyData("tid0001", b"hi")) == b"hi"
    assert writer.send(EndOfMessage("tid0001", "+")) == b"\r\n-------tid0001+\r\n"
    assert writer.idle


def test_head_without_body_is_followed_directly_by_end_line() -> None:
    data = serialize_message(send_head(has_body=False, method="AUTH"))
    assert data.endswith(
        b"From-Path: msrps://client.example.com:9892/c1;tcp\r\n-------tid0001$\r\n"
    )


def test_body_on_head_without_body_is_refused() -> None:
    writer = MessageWriter()
    writer.send(send_head(has_body=False))
    with pytest.raises(LocalProtocolError):
        writer.send(BodyData("tid0001", b"x"))


@pytest.mark.parametrize(
    "event", [BodyData("tid0001", b"x"), EndOfMessage("tid0001")], ids=["body", "end"]
)
def test_events_without_a_head_are_refused(event: BodyData | EndOfMessage) -> None:
    with pytest.raises(LocalProtocolError):
        MessageWriter().send(event)


def test_second_head_before_end_is_refused() -> None:
    writer = MessageWriter()
    writer.send(send_head())
    with pytest.raises(LocalProtocolError):
        writer.send(send_head("tid0002"))


def test_event_for_another_transaction_is_refused() -> None:
    writer = MessageWriter()
    writer.send(send_head())
    with pytest.raises(LocalProtocolError):
        writer.send(BodyData("tid0002", b"x"))


@pytest.mark.parametrize(
    "chunks",
    [
        [b"a-------tid0001$b"],
        [b"a-------tid0001+"],
        [b"-------tid0001#"],
        [b"abc-------tid", b"0001$"],
        [b"abc-------tid0001", b"$"],
        [b"-", b"------tid0001", b"#"],
    ],
)
def test_body_containing_its_end_line_is_refused(chunks: list[bytes]) -> None:
    writer = MessageWriter()
    writer.send(send_head())
    with pytest.raises(LocalProtocolError):
        for chunk in chunks:
            writer.send(BodyData("tid0001", chunk))


def test_body_with_other_tids_or_no_flag_is_allowed() -> None:
    writer = MessageWriter()
    writer.send(send_head())
    for chunk in [b"\r\n-------tid0002$\r\n", b"-------tid0001", b"x", b"-------tid00012$"]:
        assert writer.send(BodyData("tid0001", chunk)) == chunk


def test_response_end_line_must_be_dollar() -> None:
    writer = MessageWriter()
    writer.send(make_response(send_head(), 200))
    with pytest.raises(LocalProtocolError):
        writer.send(EndOfMessage("tid0001", "+"))


@pytest.mark.parametrize(
    "head",
    [
        send_head(tid="bad"),
        send_head(method="send"),
        RequestHead("tid0001", "SEND", (), (CLIENT,)),
        RequestHead("tid0001", "SEND", (BOB,), (CLIENT,), (("To-Path", "x"),)),
        RequestHead("tid0001", "SEND", (BOB,), (CLIENT,), (("X", "a\r\nInjected: 1"),)),
        RequestHead("tid0001", "SEND", (BOB,), (CLIENT,), (("Bad Name", "v"),)),
        RequestHead("tid0001", "SEND", (BOB,), (CLIENT,), (("X", " padded"),)),
        ResponseHead("tid0001", 1000, None, (BOB,), (CLIENT,)),
        ResponseHead("tid0001", 200, "O\nK", (BOB,), (CLIENT,)),
    ],
)
def test_invalid_heads_are_refused(head: RequestHead | ResponseHead) -> None:
    with pytest.raises(LocalProtocolError):
        serialize_head(head)


def test_end_line_rejects_unknown_flag() -> None:
    with pytest.raises(LocalProtocolError):
        serialize_end_line("tid0001", "!")  # type: ignore[arg-type]


def test_send_response_is_hop_by_hop() -> None:
    request = RequestHead("tid0001", "SEND", (RELAY_IN, BOB), (CLIENT, BOB))
    response = make_response(request, 200)
    assert response.transaction_id == "tid0001"
    assert response.to_path == (CLIENT,)
    assert response.from_path == (RELAY_IN,)
    assert response.comment == "OK"


def test_non_send_response_is_end_to_end_with_full_from_path() -> None:
    from_path = parse_path(
        "msrps://inner.example.com/x1;tcp msrps://client.example.com:9892/c1;tcp"
    )
    request = RequestHead("tid0001", "AUTH", (RELAY_IN,), from_path)
    response = make_response(request, 403, "Nope")
    assert response.to_path == from_path
    assert response.from_path == (RELAY_IN,)
    assert response.comment == "Nope"


def test_make_response_accepts_explicit_responder_and_no_comment() -> None:
    request = send_head()
    response = make_response(request, 299, from_uri=BOB)
    assert response.from_path == (BOB,)
    assert response.comment is None
    assert make_response(request, 200, "").comment is None


def test_report_gets_no_response() -> None:
    with pytest.raises(LocalProtocolError):
        make_response(send_head(method="REPORT", has_body=False), 200)


def test_unchecked_head_serialization_matches_the_checked_one() -> None:
    from shared.msrp import RequestHead, ResponseHead, make_response, parse_uri
    from shared.msrp.serializer import serialize_head

    to = (parse_uri("msrp://relay.example.com:2855/s1;tcp"), parse_uri("msrps://[::1]/x;tcp"))
    frm = (parse_uri("msrp://alice.example.com:7777/a1;tcp"),)
    heads: list[RequestHead | ResponseHead] = [
        RequestHead(
            "tid12345", "SEND", to, frm, (("Message-ID", "m"), ("Content-Type", "t/p")), True
        ),
        RequestHead("tid12345", "AUTH", to, frm),
        ResponseHead("tid12345", 200, None, frm, to),
        ResponseHead("tid12345", 481, "Session does not exist", frm, to, (("X-A", "b"),)),
    ]
    heads.append(make_response(heads[0], 413))  # type: ignore[arg-type]
    for head in heads:
        assert serialize_head(head, check=False) == serialize_head(head)
