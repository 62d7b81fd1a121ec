"""Header containers and structured values: compact forms, lists, name-addr, Via, Contact."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.sip.errors import LocalProtocolError
from shared.sip.headers import (
    CSeq,
    NameAddr,
    Via,
    from_tag,
    make_response,
    parse_contact,
    parse_cseq,
    parse_name_addr,
    parse_params,
    parse_via,
    to_tag,
)
from shared.sip.message import Headers, SipRequest, SipResponse, split_comma_list
from shared.sip.parser import parse_datagram
from shared.sip.status import StatusCode, reason_phrase
from shared.sip.uri import SipUri


@pytest.mark.parametrize(
    ("compact", "full"),
    [
        ("i", "Call-ID"),
        ("m", "Contact"),
        ("e", "Content-Encoding"),
        ("l", "Content-Length"),
        ("c", "Content-Type"),
        ("f", "From"),
        ("s", "Subject"),
        ("k", "Supported"),
        ("t", "To"),
        ("v", "Via"),
        ("o", "Event"),
        ("u", "Allow-Events"),
        ("r", "Refer-To"),
        ("b", "Referred-By"),
        ("x", "Session-Expires"),
    ],
)
def test_compact_forms_map_to_full_names(compact: str, full: str) -> None:
    headers = Headers([(compact.upper(), "value")])
    assert list(headers) == [(full, "value")]
    assert headers.get(full.lower()) == "value"
    assert headers.get(compact) == "value"


def test_headers_case_insensitive_and_ordered() -> None:
    headers = Headers([("call-id", "abc"), ("X-Foo", "1"), ("x-foo", "2"), ("cseq", "1 A")])
    assert list(headers) == [("Call-ID", "abc"), ("X-Foo", "1"), ("x-foo", "2"), ("CSeq", "1 A")]
    assert headers.get_all("X-FOO") == ["1", "2"]
    assert "CALL-ID" in headers and "i" in headers and "Route" not in headers
    headers.set("x-foo", "3")
    assert list(headers)[1:] == [("x-foo", "3"), ("CSeq", "1 A")]
    headers.remove("X-Foo")
    assert headers.get("x-foo") is None and len(headers) == 2


def test_multi_value_headers_split_outside_quotes_and_brackets() -> None:
    headers = Headers(
        [
            ("Contact", '"Doe, John" <sip:j@x;a=1,2>;q=0.5, <sip:k@y>'),
            ("Contact", "sip:l@z"),
            ("Allow", "INVITE, ACK ,MESSAGE"),
            ("Subject", "a, b"),
            ("WWW-Authenticate", 'Digest realm="r", nonce="n"'),
        ]
    )
    assert headers.get_all("m") == ['"Doe, John" <sip:j@x;a=1,2>;q=0.5', "<sip:k@y>", "sip:l@z"]
    assert headers.get_all("Allow") == ["INVITE", "ACK", "MESSAGE"]
    assert headers.get_all("Subject") == ["a, b"]
    assert headers.get_all("WWW-Authenticate") == ['Digest realm="r", nonce="n"']
    assert split_comma_list('"a\\", b", c') == ['"a\\", b"', "c"]


def test_pop_first_value_removes_the_top_via() -> None:
    headers = Headers([("Via", "SIP/2.0/UDP a, SIP/2.0/UDP b"), ("Via", "SIP/2.0/TCP c")])
    assert headers.pop_first_value("v") == "SIP/2.0/UDP a"
    assert headers.get_all("Via") == ["SIP/2.0/UDP b", "SIP/2.0/TCP c"]
    assert headers.pop_first_value("Via") == "SIP/2.0/UDP b"
    assert headers.pop_first_value("Via") == "SIP/2.0/TCP c"
    assert headers.pop_first_value("Via") is None


def test_serialization_refuses_header_injection() -> None:
    request = SipRequest(
        method="MESSAGE", uri="sip:a@b", headers=Headers([("Subject", "x\r\nVia: y")])
    )
    with pytest.raises(LocalProtocolError):
        request.to_bytes()
    with pytest.raises(LocalProtocolError):
        SipResponse(status=99, reason="x").to_bytes()


@pytest.mark.parametrize(
    ("uri", "name", "value"),
    [
        ("sip:a@b", "Subject", "x\rVia: y"),  # a bare CR
        ("sip:a@b", "Subject", "x\nVia: y"),  # a bare LF
        ("sip:a@b", "Sub\rject", "x"),
        ("sip:a@b", "Sub:ject", "x"),
        ("sip:a@b\r\nVia:y", "Subject", "x"),
        ("sip:a@b\n", "Subject", "x"),
    ],
)
def test_serialization_refuses_any_line_break_it_did_not_write(
    uri: str, name: str, value: str
) -> None:
    headers = Headers([("Call-ID", "c"), (name, value), ("CSeq", "1 MESSAGE")])
    with pytest.raises(LocalProtocolError):
        SipRequest(method="MESSAGE", uri=uri, headers=headers, body=b"a\r\nb").to_bytes()
    # A body may hold anything; a Content-Length value is never written as given.
    ok = Headers([("Call-ID", "c"), ("Content-Length", "9\r\nX: y")])
    data = SipRequest(method="MESSAGE", uri="sip:a@b", headers=ok, body=b"a\r\nb").to_bytes()
    assert data.endswith(b"Content-Length: 4\r\n\r\na\r\nb")


def test_serialization_sets_content_length_from_body() -> None:
    body = "héllo".encode()
    request = SipRequest(
        method="MESSAGE",
        uri="sip:bob@example.com",
        headers=Headers([("l", "999"), ("Content-Type", "text/plain")]),
        body=body,
    )
    assert request.to_bytes() == (
        b"MESSAGE sip:bob@example.com SIP/2.0\r\nContent-Length: 6\r\n"
        b"Content-Type: text/plain\r\n\r\n" + body
    )


@pytest.mark.parametrize(
    ("text", "display", "uri", "params"),
    [
        (
            '"Alice" <sip:alice@example.com>;tag=abc',
            "Alice",
            "sip:alice@example.com",
            (("tag", "abc"),),
        ),
        ("sip:bob@x;tag=1", None, "sip:bob@x", (("tag", "1"),)),
        ("<sip:bob@x;lr>", None, "sip:bob@x;lr", ()),
        ("Bob  Smith <sip:bob@x>", "Bob Smith", "sip:bob@x", ()),
        (
            '"A \\"q\\" <b>" <sip:a@b> ; x ; y = "v 1"',
            'A "q" <b>',
            "sip:a@b",
            (("x", None), ("y", "v 1")),
        ),
        ("<tel:+123>", None, "tel:+123", ()),
    ],
)
def test_parse_name_addr(
    text: str, display: str | None, uri: str, params: tuple[tuple[str, str | None], ...]
) -> None:
    na = parse_name_addr(text)
    assert (na.display_name, na.uri, na.params) == (display, uri, params)
    assert parse_name_addr(str(na)) == na


@pytest.mark.parametrize(
    "junk",
    [
        "Bell, Alexander <sip:a.g.bell@example.com>;tag=43",  # RFC 4475 §3.1.2.15 baddn
        '"unterminated <sip:a@b>',  # §3.1.2.6 quotbal
        "<sip:a@b",
        "<>",
        "sip:a@b;tag",
        "sip:a@b;=1",
        "sip:a@b;tag=",
        "",
    ],
)
def test_parse_name_addr_rejects_junk(junk: str) -> None:
    if junk == "sip:a@b;tag":  # a valueless parameter is fine
        assert parse_name_addr(junk).params == (("tag", None),)
        return
    with pytest.raises(ValueError):
        parse_name_addr(junk)


def test_name_addr_uri_and_tags() -> None:
    na = NameAddr("sip:alice@example.com").with_param("tag", "t1")
    assert str(na) == "<sip:alice@example.com>;tag=t1"
    uri = na.parsed_uri()
    assert isinstance(uri, SipUri) and uri.user == "alice"


def test_via_parse_rport_received_maddr() -> None:
    via = parse_via(
        "SIP/2.0/udp [2001:db8::1]:5070;branch=z9hG4bK1;rport;received=192.0.2.9;maddr=x"
    )
    assert (via.protocol, via.transport, via.host, via.port) == (
        "SIP/2.0",
        "UDP",
        "[2001:db8::1]",
        5070,
    )
    assert via.branch == "z9hG4bK1" and via.has_rport and via.rport is None
    assert via.received == "192.0.2.9" and via.maddr == "x"
    filled = via.with_param("rport", "5071")
    assert filled.rport == 5071 and filled.has_rport
    assert str(filled) == (
        "SIP/2.0/UDP [2001:db8::1]:5070;branch=z9hG4bK1;received=192.0.2.9;maddr=x;rport=5071"
    )
    assert parse_via(str(filled)) == filled
    plain = Via("TLS", "example.com")
    assert not plain.has_rport and plain.branch is None


@pytest.mark.parametrize(
    "junk", ["", "SIP/2.0 host", "SIP/2.0/UDP", "SIP/2.0/UDP host:99999", "SIP/2.0/UDP ho st"]
)
def test_via_rejects_junk(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_via(junk)


def test_contact_params() -> None:
    contact = parse_contact(
        "<sip:alice@192.0.2.1:5060;ob>;q=0.7;expires=3600;reg-id=1;"
        '+sip.instance="<urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF>"'
    )
    assert contact.q == 0.7 and contact.expires == 3600 and contact.reg_id == 1
    assert contact.instance == "urn:uuid:00000000-0000-1000-8000-AABBCCDDEEFF"
    assert parse_contact(str(contact)) == contact
    assert '+sip.instance="<urn:uuid:' in str(contact)
    star = parse_contact(" * ")
    assert star.is_star and str(star) == "*" and star.expires is None
    assert parse_contact("<sip:a@b>;q=2").q is None


def test_cseq() -> None:
    assert parse_cseq("0009\t INVITE") == CSeq(9, "INVITE")
    assert str(CSeq(1, "REGISTER")) == "1 REGISTER"
    for junk in ("", "1", "x INVITE", "1 INVITE extra", "2147483648 INVITE", "-1 ACK"):
        with pytest.raises(ValueError):
            parse_cseq(junk)


def test_parse_params_lws() -> None:
    assert parse_params(' ; a = 1 ;b;  c="x;y"') == (("a", "1"), ("b", None), ("c", "x;y"))


REQUEST = (
    b"MESSAGE sip:bob@biloxi.com SIP/2.0\r\n"
    b"Via: SIP/2.0/TCP proxy.example.com;branch=z9hG4bKp1\r\n"
    b"v: SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKa1;rport=5060;received=192.0.2.1\r\n"
    b"Max-Forwards: 69\r\n"
    b"To: Bob <sip:bob@biloxi.com>\r\n"
    b"From: Alice <sip:alice@atlanta.com>;tag=1928301774\r\n"
    b"Call-ID: a84b4c76e66710\r\n"
    b"CSeq: 1 MESSAGE\r\n"
    b"Content-Type: text/plain\r\n"
    b"Content-Length: 2\r\n\r\nhi"
)


def test_make_response_copies_rfc3261_8_2_6_headers() -> None:
    request = parse_datagram(REQUEST)
    assert isinstance(request, SipRequest)
    response = make_response(
        request, StatusCode.ACCEPTED, to_tag="xyz", headers=[("Server", "imstack")]
    )
    assert (response.status, response.reason) == (202, "Accepted")
    assert [n for n, _ in response.headers] == [
        "Via",
        "Via",
        "From",
        "To",
        "Call-ID",
        "CSeq",
        "Server",
    ]
    assert response.get_all("Via") == request.get_all("Via")
    assert to_tag(response) == "xyz" and from_tag(response) == "1928301774"
    assert response.body == b""
    assert b"\r\nContent-Length: 0\r\n\r\n" in response.to_bytes()
    trying = make_response(request, 100)
    assert to_tag(trying) is None and trying.reason == "Trying"
    generated = make_response(request, 200)
    assert to_tag(generated)


def test_make_response_keeps_existing_to_tag() -> None:
    request = parse_datagram(
        REQUEST.replace(b"<sip:bob@biloxi.com>", b"<sip:bob@biloxi.com>;tag=old")
    )
    assert isinstance(request, SipRequest)
    assert to_tag(make_response(request, 200, to_tag="new")) == "old"


def test_make_response_needs_the_copied_headers() -> None:
    with pytest.raises(LocalProtocolError):
        make_response(SipRequest(method="MESSAGE", uri="sip:a@b"), 400)


def test_status_codes() -> None:
    assert int(StatusCode.NOT_FOUND) == 404 and StatusCode.NOT_FOUND.phrase == "Not Found"
    assert reason_phrase(513) == "Message Too Large"
    assert reason_phrase(499) == "Client Error" and reason_phrase(699) == "Global Failure"
    for code in (100, 180, 200, 202, 400, 401, 403, 404, 405, 407, 408, 413, 415, 420, 423,
                 480, 481, 482, 483, 486, 487, 500, 501, 503, 504, 513):  # fmt: skip
        assert StatusCode(code).phrase


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(' \t;=,<>"\\:/@*.[]abcz019+-'), max_size=40))
def test_fuzz_structured_parsers_raise_only_value_error(text: str) -> None:
    for parse in (parse_name_addr, parse_contact, parse_via, parse_cseq, parse_params):
        with contextlib.suppress(ValueError):
            parse(text)
