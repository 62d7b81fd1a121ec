"""Digest authentication: RFC vectors, header syntax, nonces and verification."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.digest import (
    Algorithm,
    AuthResult,
    Challenge,
    Credentials,
    DigestParseError,
    NonceManager,
    NonceStatus,
    compute_response,
    ha1,
    parse_challenge,
    parse_credentials,
    verify,
)

SECRET = b"0123456789abcdef-test-secret"

# RFC 7616 §3.9.1
RFC7616 = {
    "username": "Mufasa",
    "password": "Circle of Life",
    "realm": "http-auth@example.org",
    "nonce": "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
    "cnonce": "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
    "nc": "00000001",
    "uri": "/dir/index.html",
}


@pytest.mark.parametrize(
    ("algorithm", "expected"),
    [
        (Algorithm.MD5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm.SHA256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ],
)
def test_rfc7616_example_response(algorithm: Algorithm, expected: str) -> None:
    v = RFC7616
    key = ha1(algorithm, v["username"], v["realm"], v["password"])
    got = compute_response(
        algorithm, key, "GET", v["uri"], v["nonce"], qop="auth", nc=v["nc"], cnonce=v["cnonce"]
    )
    assert got == expected


def test_rfc2617_example_response() -> None:
    key = ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    got = compute_response(
        "MD5",
        key,
        "GET",
        "/dir/index.html",
        "dcd98b7102dd2f0e8b11d0f600bfb0c093",
        qop="auth",
        nc="00000001",
        cnonce="0a4f113b",
    )
    assert got == "6629fae49393a05397450978507c4ef1"


def test_rfc2069_legacy_response_without_qop() -> None:
    # RFC 2069 §2.4 example, with the corrected digest from the RFC errata.
    key = ha1(Algorithm.MD5, "Mufasa", "testrealm@host.com", "CircleOfLife")
    got = compute_response(
        Algorithm.MD5, key, "GET", "/dir/index.html", "dcd98b7102dd2f0e8b11d0f600bfb0c093"
    )
    assert got == "1949323746fe6a43ef61f9606e7febea"


def test_rfc2617_authorization_header_parses() -> None:
    header = (
        'Digest username="Mufasa",\r\n realm="testrealm@host.com",\r\n'
        ' nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", uri="/dir/index.html",'
        ' qop=auth, nc=00000001, cnonce="0a4f113b",'
        ' response="6629fae49393a05397450978507c4ef1",'
        ' opaque="5ccc069c403ebaf9f0171e9517f40e41"'
    )
    creds = parse_credentials(header)
    assert creds.username == "Mufasa"
    assert creds.realm == "testrealm@host.com"
    assert creds.qop == "auth"
    assert creds.nc == "00000001"
    assert creds.cnonce == "0a4f113b"
    assert creds.algorithm is Algorithm.MD5
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41"


def test_challenge_parse_is_case_insensitive_and_handles_escapes() -> None:
    header = (
        'digest REALM="a \\"quoted\\" realm", Nonce="abc", QOP="auth,auth-int",'
        "algorithm=sha-256, opaque=xyz, STALE=TRUE"
    )
    ch = parse_challenge(header)
    assert ch.realm == 'a "quoted" realm'
    assert ch.nonce == "abc"
    assert ch.qop == ("auth", "auth-int")
    assert ch.algorithm is Algorithm.SHA256
    assert ch.opaque == "xyz"
    assert ch.stale is True


def test_challenge_round_trip() -> None:
    ch = Challenge(realm='r\\"x', nonce="n1", algorithm=Algorithm.SHA256, opaque="o", stale=True)
    text = ch.to_header()
    assert "algorithm=SHA-256" in text and "stale=true" in text
    assert parse_challenge(text) == ch


def test_credentials_round_trip() -> None:
    creds = Credentials(
        username='al"ice',
        realm="example.com",
        nonce="n",
        uri="sip:example.com",
        response="00ff",
        algorithm=Algorithm.SHA256,
        qop="auth",
        nc="0000000a",
        cnonce="c",
        opaque="op",
    )
    assert parse_credentials(creds.to_header()) == creds


@pytest.mark.parametrize(
    "junk",
    [
        "",
        "Digest",
        "Basic dXNlcjpwYXNz",
        'Digest realm="unterminated',
        'Digest realm="r", realm="again", nonce="n"',
        'Digest realm="r" nonce="n"',
        "Digest =x",
        'Digest realm="r", nonce="n", algorithm=SHA-512-256',
    ],
)
def test_junk_challenge_raises_value_error(junk: str) -> None:
    with pytest.raises(DigestParseError):
        parse_challenge(junk)


@pytest.mark.parametrize(
    "junk",
    [
        'Digest username="u", realm="r", nonce="n", uri="x"',  # no response
        'Digest username="u", realm="r", nonce="n", uri="x", response="r", qop=auth',
        'Digest username="u", realm="r", nonce="n", uri="x", response="r", qop=auth, '
        'nc=1, cnonce="c"',
        'Digest username="u", realm="r", nonce="n", uri="x", response="r", userhash=true',
    ],
)
def test_junk_credentials_raise_value_error(junk: str) -> None:
    with pytest.raises(ValueError):
        parse_credentials(junk)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=200))
def test_parsers_raise_only_digest_parse_error(text: str) -> None:
    for parse in (parse_challenge, parse_credentials):
        with contextlib.suppress(DigestParseError):
            parse(text)


# --- nonces -------------------------------------------------------------------


def test_nonce_valid_within_lifetime_then_stale() -> None:
    nm = NonceManager(SECRET, lifetime=300)
    nonce = nm.make_nonce(1000.0, "conn-1")
    assert nm.check_nonce(nonce, 1000.0, "conn-1") is NonceStatus.VALID
    assert nm.check_nonce(nonce, 1300.0, "conn-1") is NonceStatus.VALID
    assert nm.check_nonce(nonce, 1300.5, "conn-1") is NonceStatus.STALE


def test_nonce_bound_to_binding_and_secret() -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make_nonce(1000.0, "192.0.2.1:5060")
    assert nm.check_nonce(nonce, 1001.0, "192.0.2.2:5060") is NonceStatus.INVALID
    other = NonceManager(b"another-secret-of-16+bytes")
    assert other.check_nonce(nonce, 1001.0, "192.0.2.1:5060") is NonceStatus.INVALID


def test_tampered_nonces_are_invalid() -> None:
    nm = NonceManager(SECRET)
    nonce = nm.make_nonce(1000.0, "b")
    flipped = ("A" if nonce[0] != "A" else "B") + nonce[1:]
    for bad in (flipped, nonce[:-1], nonce + "AAAA", "", "!!!!", "x" * 500, nonce[::-1]):
        assert nm.check_nonce(bad, 1000.0, "b") is NonceStatus.INVALID


def test_nonce_from_the_future_is_accepted_until_it_expires() -> None:
    nm = NonceManager(SECRET, lifetime=10)
    nonce = nm.make_nonce(1005.0, "b")
    assert nm.check_nonce(nonce, 1000.0, "b") is NonceStatus.VALID


def test_short_secret_rejected() -> None:
    with pytest.raises(ValueError):
        NonceManager(b"short")


def test_nonce_count_must_increase_and_tracking_is_bounded() -> None:
    nm = NonceManager(SECRET, max_tracked=2)
    assert nm.check_nc("a", "00000001")
    assert not nm.check_nc("a", "00000001")
    assert nm.check_nc("a", "00000002")
    assert nm.check_nc("b", "00000001")
    assert nm.check_nc("c", "00000001")  # evicts "a"
    assert nm.check_nc("a", "00000001")
    assert not nm.check_nc("c", "zzzzzzzz")


# --- verify -------------------------------------------------------------------


def _client_credentials(
    challenge: Challenge,
    *,
    password: str = "secret",
    method: str = "REGISTER",
    uri: str = "sip:example.com",
    nc: str = "00000001",
    qop: str | None = "auth",
) -> Credentials:
    key = ha1(challenge.algorithm, "alice", challenge.realm, password)
    cnonce = "0a4f113b" if qop else None
    ncv = nc if qop else None
    response = compute_response(
        challenge.algorithm, key, method, uri, challenge.nonce, qop=qop, nc=ncv, cnonce=cnonce
    )
    creds = Credentials(
        username="alice",
        realm=challenge.realm,
        nonce=challenge.nonce,
        uri=uri,
        response=response,
        algorithm=challenge.algorithm,
        qop=qop,
        nc=ncv,
        cnonce=cnonce,
    )
    # Always exercise the header path, as a server would see it.
    return parse_credentials(creds.to_header())


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_verify_sip_register_ok_then_replay(algorithm: Algorithm) -> None:
    nm = NonceManager(SECRET)
    ch = nm.challenge(100.0, "conn", "example.com", algorithm=algorithm)
    creds = _client_credentials(parse_challenge(ch.to_header()))
    stored = ha1(algorithm, "alice", "example.com", "secret")
    kwargs = {"nonces": nm, "binding": "conn", "realm": "example.com"}
    ok = verify(creds, method="REGISTER", ha1_hex=stored, now=101.0, **kwargs)  # type: ignore[arg-type]
    assert ok is AuthResult.OK and ok.ok
    again = verify(creds, method="REGISTER", ha1_hex=stored, now=102.0, **kwargs)  # type: ignore[arg-type]
    assert again is AuthResult.REPLAYED


def _verify(creds: Credentials, nm: NonceManager, **overrides: object) -> AuthResult:
    args: dict[str, object] = {
        "method": "REGISTER",
        "ha1_hex": ha1(creds.algorithm, "alice", "example.com", "secret"),
        "nonces": nm,
        "now": 101.0,
        "binding": "conn",
        "realm": "example.com",
    }
    args.update(overrides)
    return verify(creds, **args)  # type: ignore[arg-type]


def test_verify_failures() -> None:
    nm = NonceManager(SECRET, lifetime=300)
    ch = nm.challenge(100.0, "conn", "example.com")
    good = _client_credentials(ch)
    assert _verify(good, nm, method="MESSAGE") is AuthResult.BAD_RESPONSE
    assert _verify(_client_credentials(ch, password="wrong"), nm) is AuthResult.BAD_RESPONSE
    assert _verify(good, nm, ha1_hex=None) is AuthResult.UNKNOWN_USER
    assert _verify(good, nm, realm="other.org") is AuthResult.WRONG_REALM
    assert _verify(good, nm, binding="other-conn") is AuthResult.BAD_NONCE
    assert _verify(good, nm, now=1000.0) is AuthResult.STALE_NONCE
    wrong_pw_stale = _client_credentials(ch, password="wrong")
    assert _verify(wrong_pw_stale, nm, now=1000.0) is AuthResult.BAD_RESPONSE


def test_verify_msrp_auth_checks_relay_uri() -> None:
    nm = NonceManager(SECRET)
    relay = "msrps://relay.example.com:2855;tcp"
    ch = nm.challenge(100.0, "conn", "example.com")
    creds = _client_credentials(ch, method="AUTH", uri=relay)
    assert _verify(creds, nm, method="AUTH", uri=relay) is AuthResult.OK
    creds2 = _client_credentials(
        ch, method="AUTH", uri="msrps://evil.example:2855;tcp", nc="00000002"
    )
    assert _verify(creds2, nm, method="AUTH", uri=relay) is AuthResult.WRONG_URI


def test_verify_legacy_rfc2069_md5_client() -> None:
    nm = NonceManager(SECRET)
    ch = nm.challenge(100.0, "conn", "example.com", algorithm=Algorithm.MD5)
    creds = _client_credentials(ch, qop=None)
    assert _verify(creds, nm) is AuthResult.OK
    sha = nm.challenge(100.0, "conn", "example.com", algorithm=Algorithm.SHA256)
    assert _verify(_client_credentials(sha, qop=None), nm) is AuthResult.BAD_RESPONSE


def test_verify_legacy_rfc2069_credentials_are_single_use() -> None:
    nm = NonceManager(SECRET)
    ch = nm.challenge(100.0, "conn", "example.com", algorithm=Algorithm.MD5)
    creds = _client_credentials(ch, qop=None)
    assert _verify(creds, nm) is AuthResult.OK
    assert _verify(creds, nm) is AuthResult.REPLAYED
