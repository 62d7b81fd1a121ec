"""MSRP URI parsing, formatting and RFC 4975 §6.1 comparison."""

from __future__ import annotations

import pytest

from shared.msrp import (
    DEFAULT_PORT,
    MsrpUri,
    RemoteProtocolError,
    format_path,
    parse_path,
    parse_uri,
)


@pytest.mark.parametrize(
    "text",
    [
        "msrp://atlanta.example.com:7654/jshA7weztas;tcp",
        "msrps://alice@intra.example.com;tcp",
        "msrps://intra.example.com:9000/jui787s2f;tcp",
        "msrp://192.0.2.1:2855/abc;tcp",
        "msrp://[2001:db8::1]:2855/abc;tcp",
        "msrp://[::1]/s;tcp;foo=bar;baz",
        "MSRP://Host.Example.COM:1/a+b=c/d;TCP",
        "msrp://user:pw@host/s;tcp",
        "msrp://host/s",
        "msrp://host",
    ],
)
def test_valid_uri_round_trips_exactly(text: str) -> None:
    assert str(parse_uri(text)) == text


def test_uri_components_are_exposed() -> None:
    uri = parse_uri("msrps://bob@[2001:DB8::1]:9000/s3ss;tcp;x=1")
    assert uri.scheme == "msrps"
    assert uri.secure
    assert uri.userinfo == "bob"
    assert uri.host == "[2001:DB8::1]"
    assert uri.host_address == "2001:DB8::1"
    assert uri.port == 9000
    assert uri.authority == "[2001:DB8::1]:9000"
    assert uri.session_id == "s3ss"
    assert uri.transport == "tcp"
    assert uri.params == ("x=1",)


def test_missing_port_uses_default_2855_for_connecting() -> None:
    uri = parse_uri("msrp://relay.example.com;tcp")
    assert uri.port is None
    assert uri.effective_port == DEFAULT_PORT == 2855
    assert not uri.secure


def test_constructed_uri_formats_canonically() -> None:
    uri = MsrpUri(scheme="msrp", host="example.com", port=2855, session_id="abc")
    assert str(uri) == "msrp://example.com:2855/abc;tcp"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "http://host/s;tcp",
        "msrp:/host/s;tcp",
        "msrp://",
        "msrp://host:0/s;tcp",
        "msrp://host:65536/s;tcp",
        "msrp://host:port/s;tcp",
        "msrp://[not-ipv6]/s;tcp",
        "msrp://[2001:db8::1::2]/s;tcp",
        "msrp://300.1.1.1/s;tcp",
        "msrp://-bad-.example.com/s;tcp",
        "msrp://host/s;",
        "msrp://host/s;t cp",
        "msrp://host/s;tcp;=x",
        "msrp://host/s p;tcp",
        "msrp://host/s;tcp\r\n",
    ],
)
def test_junk_uri_raises_400(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        parse_uri(text)
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("msrp://host.example.com:1/s;tcp", "MSRP://HOST.EXAMPLE.COM:1/s;TCP"),
        ("msrp://alice@host:1/s;tcp", "msrp://bob@host:1/s;tcp"),
        ("msrp://host:1/s;tcp;a=1", "msrp://host:1/s;tcp;b=2"),
        ("msrp://[2001:db8::1]:1/s;tcp", "msrp://[2001:0DB8:0:0:0:0:0:1]:1/s;tcp"),
        ("msrp://host.example.com.:1/s;tcp", "msrp://host.example.com:1/s;tcp"),
    ],
)
def test_uris_equal_under_section_6_1(a: str, b: str) -> None:
    assert parse_uri(a) == parse_uri(b)
    assert hash(parse_uri(a)) == hash(parse_uri(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("msrp://host:1/s;tcp", "msrps://host:1/s;tcp"),
        ("msrp://host:1/s;tcp", "msrp://host:2/s;tcp"),
        ("msrp://host/s;tcp", "msrp://host:2855/s;tcp"),  # explicit vs absent port
        ("msrp://host:1/abc;tcp", "msrp://host:1/ABC;tcp"),  # session-id is case-sensitive
        ("msrp://host:1/s;tcp", "msrp://host:1/s;udp"),
        ("msrp://host:1/s;tcp", "msrp://host:1;tcp"),
        ("msrp://[2001:db8::1]:1/s;tcp", "msrp://[2001:db8::2]:1/s;tcp"),
        ("msrp://192.0.2.1:1/s;tcp", "msrp://192.0.2.2:1/s;tcp"),
    ],
)
def test_uris_differ_under_section_6_1(a: str, b: str) -> None:
    assert parse_uri(a) != parse_uri(b)


def test_uri_is_not_equal_to_its_string() -> None:
    assert parse_uri("msrp://h/s;tcp") != "msrp://h/s;tcp"


def test_path_parses_space_separated_uris_in_order() -> None:
    text = "msrps://relay.example.com:9000/r1;tcp msrp://bob.example.com:8888/9di4;tcp"
    path = parse_path(text)
    assert [u.session_id for u in path] == ["r1", "9di4"]
    assert format_path(path) == text


@pytest.mark.parametrize("text", ["", " ", "msrp://a/s;tcp  msrp://b/s;tcp", "msrp://a/s;tcp "])
def test_bad_path_raises_400(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_path(text)
