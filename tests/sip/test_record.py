"""The Records (shared/record.py) behave as the frozen dataclasses they replaced: equal and
hashed by every field they compare, printed with every field, whether compiled or not."""

from __future__ import annotations

from typing import Any

import pytest

from services.relay.sip.auth import Authenticated
from services.relay.sip.proxy import ForkResult, Target
from services.relay.sip.transport import Flow
from shared.address import Address
from shared.digest import Algorithm, Credentials
from shared.record import Record
from shared.sip.headers import CSeq, NameAddr, Via
from shared.sip.message import SipResponse
from shared.sip.transaction import ResponseReceived, SendBytes

OK, BUSY = SipResponse(status=200, reason="OK"), SipResponse(status=486, reason="Busy Here")
FLOW_A, FLOW_B = Flow("udp", "192.0.2.1", 5060), Flow("tcp", "192.0.2.2", 5061, "c7")

#: Per class, two sets of arguments differing in every field.
EXAMPLES: list[tuple[type[Record], dict[str, Any], dict[str, Any]]] = [
    (
        Flow,
        {"transport": "udp", "host": "192.0.2.1", "port": 5060, "connection_id": None},
        {"transport": "tcp", "host": "192.0.2.2", "port": 5070, "connection_id": "c1"},
    ),
    (
        Via,
        {
            "transport": "UDP",
            "host": "a.example",
            "port": None,
            "params": (),
            "protocol": "SIP/2.0",
        },
        {
            "transport": "TCP",
            "host": "b.example",
            "port": 5060,
            "params": (("branch", "z9hG4bK1"),),
            "protocol": "SIP/3.0",
        },
    ),
    (
        NameAddr,
        {"uri": "sip:alice@a.example", "display_name": None, "params": ()},
        {"uri": "sip:bob@a.example", "display_name": "Bob", "params": (("tag", "1"),)},
    ),
    (CSeq, {"seq": 1, "method": "MESSAGE"}, {"seq": 2, "method": "INVITE"}),
    (
        Credentials,
        {
            "username": "alice",
            "realm": "a.example",
            "nonce": "n1",
            "uri": "sip:a.example",
            "response": "r1",
            "algorithm": Algorithm.MD5,
            "qop": None,
            "nc": None,
            "cnonce": None,
            "opaque": None,
            "params": {"username": "alice"},
        },
        {
            "username": "bob",
            "realm": "b.example",
            "nonce": "n2",
            "uri": "sip:b.example",
            "response": "r2",
            "algorithm": Algorithm.SHA256,
            "qop": "auth",
            "nc": "00000001",
            "cnonce": "c",
            "opaque": "o",
            "params": {"username": "bob"},
        },
    ),
    (SendBytes, {"data": b"a"}, {"data": b"b"}),
    (ResponseReceived, {"response": OK}, {"response": BUSY}),
    (Target, {"uri": "sip:a@192.0.2.1", "flow": None}, {"uri": "sip:b@192.0.2.1", "flow": FLOW_A}),
    (
        ForkResult,
        {"response": OK, "statuses": (200,), "synthetic": False},
        {"response": BUSY, "statuses": (486, 480), "synthetic": True},
    ),
    (Authenticated, {"username": "alice"}, {"username": "bob"}),
    (Address, {"username": "alice", "domain": "a.example"}, {"username": "bob", "domain": "b"}),
]

#: Fields that, as ``field(compare=False)`` did, do not make two Records unequal.
NOT_COMPARED = {(Credentials, "params")}


@pytest.mark.parametrize(
    ("cls", "one", "other"), EXAMPLES, ids=[c.__name__ for c, _, _ in EXAMPLES]
)
def test_a_record_equals_hashes_and_prints_by_its_fields(
    cls: type[Record], one: dict[str, Any], other: dict[str, Any]
) -> None:
    assert list(one) == list(cls._fields) == list(other)
    a, b = cls(**one), cls(**one)
    positional = cls(*one.values())
    assert a == b == positional
    if not any(isinstance(value, SipResponse) for value in one.values()):  # unhashable
        assert hash(a) == hash(b)
        assert {a: 1}[b] == 1
    for name in cls._fields:
        assert getattr(a, name) == one[name]
        assert f"{name}={one[name]!r}" in repr(a)
        changed = cls(**{**one, name: other[name]})
        if (cls, name) in NOT_COMPARED:
            assert changed == a
        else:
            assert changed != a, name
    assert repr(a).startswith(f"{cls.__name__}(")


def test_records_of_different_classes_are_never_equal() -> None:
    assert Authenticated("alice") != Target("alice", None)
    assert SendBytes(b"x") != b"x"
    assert FLOW_A != FLOW_B and Flow("udp", "192.0.2.1", 5060) == FLOW_A
