"""MsrpParser behaviour beyond the RFC vectors: body framing edge cases,
streaming without buffering, limits and error handling."""

from __future__ import annotations

import pytest

from shared.msrp import (
    BodyData,
    EndOfMessage,
    Event,
    LocalProtocolError,
    MsrpParser,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
)

TO = "msrp://b.example.com:2855/s2;tcp"
FRM = "msrp://a.example.com:2855/s1;tcp"


def request(
    tid: str = "tid0001",
    body: bytes | None = None,
    flag: str = "$",
    extra: str = "",
    method: str = "SEND",
) -> bytes:
    head = f"MSRP {tid} {method}\r\nTo-Path: {TO}\r\nFrom-Path: {FRM}\r\n{extra}"
    if body is None:
        return f"{head}-------{tid}{flag}\r\n".encode()
    head += "Content-Type: text/plain\r\n\r\n"
    return head.encode() + body + f"\r\n-------{tid}{flag}\r\n".encode()


def feed(data: bytes, parser: MsrpParser | None = None, step: int = 0) -> list[Event]:
    parser = parser or MsrpParser()
    events: list[Event] = []
    chunks = [data] if step == 0 else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        parser.receive_data(chunk)
        events.extend(parser.events())
    return events


def body_of(events: list[Event]) -> bytes:
    return b"".join(e.data for e in events if isinstance(e, BodyData))


def error_for(data: bytes, **limits: int) -> RemoteProtocolError:
    parser = MsrpParser(**limits)
    with pytest.raises(RemoteProtocolError) as info:
        parser.receive_data(data)
        list(parser.events())
    return info.value


# -- body framing ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\r\n",
        b"\r\n-------",
        b"\r\n-------tid000",
        b"\r\n-------tid0001",
        b"\r\n-------tid00012$\r\n",
        b"\r\n-------tid0001x\r\n",
        b"\r\n-------tid0001$x",
        b"\r\n-------tid0001$\r",
        b"\r\n-------other$\r\nmore",
        b"-------tid0001",
        b"\r\r\n\r\n-------tid0001\r\n-------tid0001",
    ],
)
@pytest.mark.parametrize("step", [0, 1, 3])
def test_body_with_end_line_lookalikes_is_delivered_intact(body: bytes, step: int) -> None:
    events = feed(request(body=body), step=step)
    assert body_of(events) == body
    assert events[-1] == EndOfMessage("tid0001", "$")


@pytest.mark.parametrize("flag", ["$", "+", "#"])
def test_every_continuation_flag_is_reported(flag: str) -> None:
    events = feed(request(body=b"x", flag=flag))
    assert events[-1] == EndOfMessage("tid0001", flag)  # type: ignore[arg-type]


def test_empty_body_gives_head_with_body_flag_and_no_body_data() -> None:
    events = feed(request(body=b""))
    assert isinstance(events[0], RequestHead) and events[0].has_body
    assert not any(isinstance(e, BodyData) for e in events)


def test_message_without_body_has_end_line_right_after_headers() -> None:
    events = feed(request(extra="Message-ID: m1\r\n"))
    assert isinstance(events[0], RequestHead) and not events[0].has_body
    assert events[1] == EndOfMessage("tid0001", "$")


def test_messages_back_to_back_and_trailing_data_are_parsed() -> None:
    parser = MsrpParser()
    data = request("aaaa1", b"one") + request("bbbb2") + b"MSRP cccc3 SE"
    events = feed(data, parser)
    ends = [e for e in events if isinstance(e, EndOfMessage)]
    assert [e.transaction_id for e in ends] == ["aaaa1", "bbbb2"]
    assert not parser.at_message_boundary
    rest = request("cccc3", b"three")[len(b"MSRP cccc3 SE") :]
    events = feed(rest, parser)
    assert body_of(events) == b"three"
    assert parser.at_message_boundary


def test_unknown_method_is_an_event() -> None:
    events = feed(request(method="NICKNAME"))
    assert isinstance(events[0], RequestHead) and events[0].method == "NICKNAME"


def test_response_without_comment_parses() -> None:
    data = f"MSRP tid0001 481\r\nTo-Path: {FRM}\r\nFrom-Path: {TO}\r\n-------tid0001$\r\n"
    head = feed(data.encode())[0]
    assert isinstance(head, ResponseHead)
    assert (head.status, head.comment) == (481, None)


def test_header_names_are_matched_case_insensitively_and_kept_as_written() -> None:
    data = (
        f"MSRP tid0001 SEND\r\nto-path: {TO}\r\nFROM-PATH: {FRM}\r\n"
        "message-id: m1\r\n-------tid0001$\r\n"
    )
    head = feed(data.encode())[0]
    assert isinstance(head, RequestHead)
    assert head.message_id == "m1"
    assert head.headers == (("message-id", "m1"),)


# -- streaming ---------------------------------------------------------------


def test_large_body_streams_out_before_end_line_and_buffer_stays_small() -> None:
    tid = "bigtid01"
    body = bytes(range(256)) * 4096  # 1 MiB
    head, tail = request(tid, body).split(body)
    parser = MsrpParser()
    parser.receive_data(head)
    assert isinstance(parser.next_event(), RequestHead)
    received = 0
    max_held = 0
    for i in range(0, len(body), 4096):
        parser.receive_data(body[i : i + 4096])
        for event in parser.events():
            assert isinstance(event, BodyData)
            received += len(event.data)
        max_held = max(max_held, parser.buffered_bytes)
    # Everything but a possible end-line prefix came out before the end-line.
    assert received >= len(body) - len(b"\r\n-------" + tid.encode())
    assert max_held <= len(b"\r\n-------" + tid.encode() + b"$\r\n")
    parser.receive_data(tail)
    events = list(parser.events())
    assert events[-1] == EndOfMessage(tid, "$")
    assert received + len(body_of(events)) == len(body)


def test_body_bytes_fed_one_at_a_time_are_held_only_at_possible_end_line() -> None:
    parser = MsrpParser()
    parser.receive_data(request(body=b"")[: -len(b"\r\n-------tid0001$\r\n")])
    list(parser.events())
    for byte in b"abc\r\n---":
        parser.receive_data(bytes([byte]))
        list(parser.events())
    assert parser.buffered_bytes == len(b"\r\n---")
    parser.receive_data(b"x")
    assert body_of(list(parser.events())) == b"\r\n---x"
    assert parser.buffered_bytes == 0


# -- errors ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "tid"),
    [
        (b"HTTP/1.1 200 OK\r\n", None),
        (b"MSRP x SEND\r\n", None),
        (b"MSRP abc SEND\r\n", None),  # ident is 4..32 chars (RFC 4975 §9)
        (b"MSRP " + b"a" * 33 + b" SEND\r\n", None),
        (b"MSRP tid0001 send\r\n", "tid0001"),
        (b"MSRP tid0001 20\r\n", "tid0001"),
        (b"MSRP tid0001\r\n", "tid0001"),
        (b"\r\n", None),
        (f"MSRP tid0001 SEND\r\nFrom-Path: {FRM}\r\nTo-Path: {TO}\r\n".encode(), "tid0001"),
        (f"MSRP tid0001 SEND\r\nTo-Path: {TO}\r\nMessage-ID: 1\r\n".encode(), "tid0001"),
        (b"MSRP tid0001 SEND\r\n-------tid0001$\r\n", "tid0001"),
        (f"MSRP tid0001 SEND\r\nTo-Path: {TO}\r\n-------tid0001$\r\n".encode(), "tid0001"),
        (request(extra=f"To-Path: {TO}\r\n"), "tid0001"),
        (request(extra="Bad Header: x\r\n"), "tid0001"),
        (request(extra="NoColon\r\n"), "tid0001"),
        (request(extra="X: a\x01b\r\n"), "tid0001"),
        (b"MSRP tid0001 SEND\r\nTo-Path: http://x/;tcp\r\n", "tid0001"),
        (f"MSRP tid0001 SEND\r\nTo-Path: {TO}  {TO}\r\n".encode(), "tid0001"),
        (request().replace(b"-------tid0001$", b"-------tid0002$"), "tid0001"),
        (request().replace(b"-------tid0001$", b"-------tid0001!"), "tid0001"),
        (f"MSRP tid0001 200 OK\r\nTo-Path: {TO}\r\nFrom-Path: {FRM}\r\n\r\n".encode(), "tid0001"),
    ],
)
def test_malformed_input_raises_400_with_tid_when_readable(data: bytes, tid: str | None) -> None:
    err = error_for(data)
    assert err.status_hint == 400
    assert err.transaction_id == tid


def test_bad_utf8_header_value_is_rejected() -> None:
    err = error_for(request().replace(b"-------", b"X: \xff\xfe\r\n-------"))
    assert err.status_hint == 400
    assert "UTF-8" in err.message


def test_utf8_header_values_and_comments_are_decoded() -> None:
    head = feed(request(extra="Subject: héllo ☃\r\n"))[0]
    assert isinstance(head, RequestHead)
    assert head.get_header("subject") == "héllo ☃"


def test_events_before_an_error_are_delivered_first() -> None:
    parser = MsrpParser()
    parser.receive_data(request("good0001") + b"GARBAGE\r\n")
    events = []
    with pytest.raises(RemoteProtocolError):
        while (event := parser.next_event()) is not None:
            events.append(event)
    assert events[-1] == EndOfMessage("good0001", "$")


def test_parser_stays_failed_after_an_error() -> None:
    parser = MsrpParser()
    parser.receive_data(b"junk\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.next_event()
    with pytest.raises(RemoteProtocolError):
        parser.next_event()
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(request())
    assert parser.failed


def test_eof_mid_message_is_an_error_with_tid() -> None:
    parser = MsrpParser()
    parser.receive_data(request(body=b"abc")[:-5])
    list(parser.events())
    parser.receive_eof()
    with pytest.raises(RemoteProtocolError) as info:
        parser.next_event()
    assert info.value.transaction_id == "tid0001"


def test_eof_between_messages_is_clean() -> None:
    parser = MsrpParser()
    parser.receive_data(request())
    list(parser.events())
    parser.receive_eof()
    assert parser.next_event() is None
    with pytest.raises(LocalProtocolError):
        parser.receive_data(b"x")


# -- limits ------------------------------------------------------------------


def test_start_line_over_limit_is_rejected_without_waiting_for_crlf() -> None:
    err = error_for(b"MSRP tid0001 200 " + b"x" * 200, max_start_line=100)
    assert (err.status_hint, err.transaction_id) == (400, "tid0001")


def test_start_line_at_limit_is_accepted() -> None:
    comment = "x" * (100 - len("MSRP tid0001 200 "))
    data = f"MSRP tid0001 200 {comment}\r\nTo-Path: {TO}\r\nFrom-Path: {FRM}\r\n-------tid0001$\r\n"
    head = feed(data.encode(), MsrpParser(max_start_line=100))[0]
    assert isinstance(head, ResponseHead) and head.comment == comment


def test_header_line_over_limit_is_rejected_with_400() -> None:
    err = error_for(request(extra="X-Long: " + "y" * 300 + "\r\n"), max_header_line=200)
    assert (err.status_hint, err.transaction_id) == (400, "tid0001")


def test_header_line_over_limit_is_rejected_before_its_end_arrives() -> None:
    parser = MsrpParser(max_header_line=200)
    data = request(extra="X-Long: " + "y" * 300 + "\r\n")
    with pytest.raises(RemoteProtocolError):
        parser.receive_data(data[: data.index(b"X-Long") + 250])
        list(parser.events())


def test_too_many_headers_are_rejected_with_400() -> None:
    extra = "".join(f"X-{i}: v\r\n" for i in range(10))
    err = error_for(request(extra=extra), max_headers=11)
    assert (err.status_hint, err.transaction_id) == (400, "tid0001")
    assert feed(request(extra=extra), MsrpParser(max_headers=12))


def test_header_section_over_byte_limit_is_rejected_with_400() -> None:
    extra = "".join(f"X-{i}: {'v' * 50}\r\n" for i in range(10))
    err = error_for(request(extra=extra), max_header_bytes=400)
    assert (err.status_hint, err.transaction_id) == (400, "tid0001")
