"""SIP/SIPS/tel URIs: parsing, printing, RFC 3261 §19.1.4 comparison."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.sip.uri import (
    SipUri,
    TelUri,
    UnsupportedUriScheme,
    UriError,
    parse_sip_uri,
    parse_uri,
)


def test_parse_all_components() -> None:
    uri = parse_sip_uri(
        "sips:alice:secret@Atlanta.com:5061;transport=tcp;lr;maddr=239.255.255.1?subject=project%20x&priority=urgent"
    )
    assert uri.scheme == "sips"
    assert (uri.user, uri.password) == ("alice", "secret")
    assert (uri.host, uri.port) == ("Atlanta.com", 5061)
    assert uri.transport == "tcp" and uri.lr and uri.maddr == "239.255.255.1"
    assert uri.headers == (("subject", "project x"), ("priority", "urgent"))


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("sip:bob@192.0.2.4", "192.0.2.4", None),
        ("sip:bob@[2001:db8::10]:5070", "[2001:db8::10]", 5070),
        ("sip:[::1]", "[::1]", None),
        ("sip:example.com.:5060", "example.com.", 5060),
    ],
)
def test_hosts(text: str, host: str, port: int | None) -> None:
    uri = parse_sip_uri(text)
    assert (uri.host, uri.port) == (host, port)
    assert str(uri) == text


def test_user_may_contain_semicolons_and_escapes() -> None:
    # RFC 4475 §3.1.1.? (semiuri): a ';' in the user part is not a parameter.
    uri = parse_sip_uri("sip:user;par=u%40example.net@example.com")
    assert uri.user == "user;par=u@example.net"
    assert uri.host == "example.com" and uri.params == ()
    assert str(uri) == "sip:user;par=u%40example.net@example.com"


def test_percent_decoding_and_reencoding() -> None:
    uri = parse_sip_uri("sip:%61lice@atlanta.com")
    assert uri.user == "alice"
    assert str(uri) == "sip:alice@atlanta.com"
    assert str(SipUri("sip", "example.com", user="a b")) == "sip:a%20b@example.com"


def test_tel_uri() -> None:
    uri = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(uri, TelUri) and uri.is_global
    assert uri.param("phone-context") == "example.com"
    assert str(uri) == "tel:+1-201-555-0123;phone-context=example.com"
    assert uri.equivalent_to(TelUri("+1.201.555.0123", (("Phone-Context", "Example.COM"),)))


@pytest.mark.parametrize(
    "text",
    [
        "sip:",
        "sip:@example.com",
        "sip:bob@",
        "sip:bob@exa mple.com",
        "sip:bob@example.com:99999",
        "sip:bob@example.com:5x",
        "sip:bob@[::g]",
        "sip:bob@999.1.1.1",
        "sip:bob@example.com;",
        "sip:bob@example.com?subject",
        "sip:bob@example.com;a b=c",
        "sip:bo%ZZb@example.com",
        "notauri",
        "tel:",
        "tel:abc-xyz",
    ],
)
def test_invalid_uris(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_unknown_scheme_is_416_material() -> None:
    with pytest.raises(UnsupportedUriScheme):
        parse_uri("unknownscheme:foo@example.com")
    with pytest.raises(UnsupportedUriScheme):
        parse_sip_uri("tel:+12015550123")


def test_aor_key() -> None:
    assert parse_sip_uri("sip:Bob@BILOXI.com:5060;transport=tcp").aor == "sip:Bob@biloxi.com"


# RFC 3261 §19.1.4, the lists of equivalent and non-equivalent URIs.
EQUIVALENT = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
    ("sip:bob@[2001:db8:0::1]", "sip:bob@[2001:DB8::1]"),
]

NOT_EQUIVALENT = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
    ("sip:bob@biloxi.com", "sips:bob@biloxi.com"),
    ("sip:biloxi.com", "sip:bob@biloxi.com"),
    ("sip:bob@biloxi.com", "sip:bob:pw@biloxi.com"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;maddr=192.0.2.1"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;user=phone"),
    ("sip:bob@biloxi.com;lr", "sip:bob@biloxi.com;lr=on"),
]


@pytest.mark.parametrize(("a", "b"), EQUIVALENT)
def test_rfc3261_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_sip_uri(a), parse_sip_uri(b)
    assert ua.equivalent_to(ub) and ub.equivalent_to(ua)


@pytest.mark.parametrize(("a", "b"), NOT_EQUIVALENT)
def test_rfc3261_non_equivalent_uris(a: str, b: str) -> None:
    ua, ub = parse_sip_uri(a), parse_sip_uri(b)
    assert not ua.equivalent_to(ub) and not ub.equivalent_to(ua)


_user = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=10)
_token = st.from_regex(r"[a-z][a-z0-9\-]{0,8}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    user=st.none() | _user.filter(bool),
    host=st.sampled_from(["example.com", "192.0.2.1", "[2001:db8::1]"]),
    port=st.none() | st.integers(min_value=0, max_value=65535),
    params=st.lists(st.tuples(_token, st.none() | _user.filter(bool)), max_size=3),
    headers=st.lists(st.tuples(_token, _user), max_size=2),
)
def test_print_parse_round_trip(
    user: str | None,
    host: str,
    port: int | None,
    params: list[tuple[str, str | None]],
    headers: list[tuple[str, str]],
) -> None:
    uri = SipUri("sip", host, user, None, port, tuple(params), tuple(headers))
    again = parse_sip_uri(str(uri))
    assert again == uri
    assert again.equivalent_to(uri)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_fuzz_only_uri_errors(text: str) -> None:
    with contextlib.suppress(UriError):
        parse_uri("sip:" + text)
