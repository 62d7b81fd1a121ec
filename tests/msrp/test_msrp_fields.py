"""Byte-Range and Status header values, ids, status codes, sans-IO imports."""

from __future__ import annotations

import ast
import pathlib

import pytest

import shared.msrp
from shared.msrp import (
    ByteRange,
    RemoteProtocolError,
    Status,
    StatusHeader,
    is_valid_ident,
    new_message_id,
    new_session_id,
    new_transaction_id,
)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1-25/25", ByteRange(1, 25, 25)),
        ("1-*/100", ByteRange(1, None, 100)),
        ("1-25/*", ByteRange(1, 25, None)),
        ("5-*/*", ByteRange(5, None, None)),
        ("1-0/0", ByteRange(1, 0, 0)),
    ],
)
def test_byte_range_parses_and_formats(text: str, value: ByteRange) -> None:
    assert ByteRange.parse(text) == value
    assert str(value) == text


def test_byte_range_default_is_whole_unknown_message() -> None:
    assert str(ByteRange.default()) == "1-*/*"


@pytest.mark.parametrize(
    "text", ["", "0-1/1", "5-3/9", "1-10/5", "1-*", "a-b/c", "1 - 2/3", "*-1/1"]
)
def test_bad_byte_range_raises_400(text: str) -> None:
    with pytest.raises(RemoteProtocolError) as info:
        ByteRange.parse(text)
    assert info.value.status_hint == 400


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("000 408 Request Timeout", StatusHeader(408, "Request Timeout")),
        ("000 200", StatusHeader(200)),
        ("000 413 Stop Sending Message", StatusHeader(413, "Stop Sending Message")),
    ],
)
def test_status_header_parses_and_formats(text: str, value: StatusHeader) -> None:
    assert StatusHeader.parse(text) == value
    assert str(value) == text


@pytest.mark.parametrize("text", ["", "408", "000 40", "000  408", "00 408 x"])
def test_bad_status_header_raises_400(text: str) -> None:
    with pytest.raises(RemoteProtocolError):
        StatusHeader.parse(text)


def test_status_codes_match_rfc_values() -> None:
    assert [int(s) for s in Status] == [200, 400, 401, 403, 408, 413, 415, 423, 481, 501, 506]
    assert Status.OK.phrase == "OK"
    assert all(s.phrase for s in Status)


def test_transaction_ids_are_valid_idents_with_at_least_80_bits() -> None:
    ids = {new_transaction_id() for _ in range(1000)}
    assert len(ids) == 1000
    for tid in ids:
        assert is_valid_ident(tid)
        assert len(tid) >= 14  # 14 * log2(62) > 83 bits


def test_session_and_message_ids_are_random_and_valid() -> None:
    assert len({new_session_id() for _ in range(1000)}) == 1000
    assert all(len(new_session_id()) >= 20 for _ in range(10))
    assert is_valid_ident(new_message_id())


@pytest.mark.parametrize(
    ("value", "valid"),
    [
        ("abcd", True),
        ("abc", False),
        ("a" * 32, True),
        ("a" * 33, False),
        ("-abc", False),
        ("a.-+%=", True),
        ("ab cd", False),
    ],
)
def test_ident_validation_follows_rfc_grammar(value: str, valid: bool) -> None:
    assert is_valid_ident(value) is valid


FORBIDDEN_IMPORTS = {"asyncio", "socket", "time", "asyncpg", "logging.config", "selectors"}


def test_package_imports_no_io_modules() -> None:
    root = pathlib.Path(shared.msrp.__file__).parent
    for path in root.glob("*.py"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name not in FORBIDDEN_IMPORTS, f"{path.name} imports {name}"
                assert name.split(".")[0] not in {"asyncio", "socket", "asyncpg"}
