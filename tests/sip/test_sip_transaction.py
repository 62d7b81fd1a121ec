"""RFC 3261 §17 transactions: timers, retransmissions, ACKs, and the state tables."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.sip.errors import LocalProtocolError
from shared.sip.headers import make_response, parse_cseq, parse_via, to_tag
from shared.sip.message import Headers, SipRequest
from shared.sip.parser import parse_datagram
from shared.sip.transaction import (
    ClientTransaction,
    ResponseReceived,
    SendBytes,
    ServerTransaction,
    State,
    Terminated,
    TransactionEvent,
    TransportFailed,
    client_key,
    server_key,
)


def request(method: str = "INVITE") -> SipRequest:
    return SipRequest(
        method=method,
        uri="sip:bob@biloxi.com",
        headers=Headers(
            [
                ("Via", "SIP/2.0/UDP pc33.atlanta.com;branch=z9hG4bKnashds8"),
                ("Route", "<sip:proxy.atlanta.com;lr>"),
                ("Max-Forwards", "70"),
                ("To", "Bob <sip:bob@biloxi.com>"),
                ("From", "Alice <sip:alice@atlanta.com>;tag=1928301774"),
                ("Call-ID", "a84b4c76e66710"),
                ("CSeq", f"314159 {method}"),
            ]
        ),
    )


def sent(events: list[TransactionEvent]) -> list[bytes]:
    return [e.data for e in events if isinstance(e, SendBytes)]


def state(tx: ClientTransaction | ServerTransaction) -> State:
    """The current state (a call, so mypy does not narrow it between steps)."""
    return tx.state


def rounded(log: list[tuple[float, str]]) -> list[tuple[float, str]]:
    return [(round(t, 6), name) for t, name in log]


def run_until(tx: ClientTransaction | ServerTransaction, end: float) -> list[tuple[float, str]]:
    """Fire every timer up to ``end``; return (time, event class name) pairs."""
    log: list[tuple[float, str]] = []
    while (deadline := tx.get_timer()) is not None and deadline <= end:
        log.extend((deadline, type(e).__name__) for e in tx.handle_timer(deadline))
    return log


def test_invite_client_udp_retransmits_with_timer_a_then_times_out_with_b() -> None:
    tx = ClientTransaction(request(), now=0.0, reliable=False)
    assert len(sent(tx.start())) == 1
    log = run_until(tx, 100.0)
    resend_times = [t for t, name in log if name == "SendBytes"]
    assert resend_times == [0.5, 1.5, 3.5, 7.5, 15.5, 31.5]
    assert log[-2:] == [(32.0, "TimedOut"), (32.0, "Terminated")]
    assert state(tx) is State.TERMINATED and tx.get_timer() is None


def test_invite_client_tcp_has_no_retransmissions() -> None:
    tx = ClientTransaction(request(), now=10.0, reliable=True)
    tx.start()
    assert tx.get_timer() == 42.0
    assert run_until(tx, 100.0) == [(42.0, "TimedOut"), (42.0, "Terminated")]


def test_invite_client_error_response_sends_ack_and_waits_timer_d() -> None:
    req = request()
    tx = ClientTransaction(req, now=0.0, reliable=False)
    tx.start()
    ringing = make_response(req, 180, to_tag="b0b")
    assert tx.receive_response(ringing, 0.2) == [ResponseReceived(ringing)]
    assert state(tx) is State.PROCEEDING and tx.get_timer() is None
    busy = make_response(req, 486, to_tag="b0b")
    events = tx.receive_response(busy, 1.0)
    assert events[1] == ResponseReceived(busy)
    ack = parse_datagram(sent(events)[0])
    assert isinstance(ack, SipRequest)
    assert (ack.method, ack.uri) == ("ACK", req.uri)
    assert parse_cseq(ack.get("CSeq") or "").method == "ACK"
    assert parse_via(ack.get("Via") or "").branch == "z9hG4bKnashds8"
    assert to_tag(ack) == "b0b" and ack.get("Route") == "<sip:proxy.atlanta.com;lr>"
    assert state(tx) is State.COMPLETED and tx.get_timer() == 33.0
    # A retransmitted final response is answered with the same ACK, not passed up.
    assert sent(tx.receive_response(busy, 2.0)) == sent(events)
    assert run_until(tx, 40.0) == [(33.0, "Terminated")]


def test_invite_client_tcp_error_response_terminates_at_once() -> None:
    req = request()
    tx = ClientTransaction(req, now=0.0, reliable=True)
    tx.start()
    events = tx.receive_response(make_response(req, 404), 1.0)
    assert [type(e) for e in events] == [SendBytes, ResponseReceived, Terminated]


def test_invite_client_2xx_terminates() -> None:
    req = request()
    tx = ClientTransaction(req, now=0.0, reliable=False)
    tx.start()
    ok = make_response(req, 200)
    assert tx.receive_response(ok, 0.1) == [ResponseReceived(ok), Terminated()]


def test_non_invite_client_timer_e_backs_off_to_t2_and_f_times_out() -> None:
    tx = ClientTransaction(request("MESSAGE"), now=0.0, reliable=False)
    tx.start()
    log = run_until(tx, 100.0)
    resend_times = [t for t, name in log if name == "SendBytes"]
    assert resend_times[:6] == [0.5, 1.5, 3.5, 7.5, 11.5, 15.5]
    assert resend_times[-1] == 31.5
    assert log[-2:] == [(32.0, "TimedOut"), (32.0, "Terminated")]


def test_non_invite_client_proceeding_resends_every_t2_and_timer_k() -> None:
    req = request("MESSAGE")
    tx = ClientTransaction(req, now=0.0, reliable=False)
    tx.start()
    tx.receive_response(make_response(req, 100), 0.1)
    assert state(tx) is State.PROCEEDING
    log = run_until(tx, 12.0)
    assert [t for t, _ in log] == [0.5, 4.5, 8.5]
    ok = make_response(req, 202)
    assert tx.receive_response(ok, 9.0) == [ResponseReceived(ok)]
    assert tx.get_timer() == 14.0  # Timer K = T4
    assert tx.receive_response(ok, 10.0) == []
    assert run_until(tx, 20.0) == [(14.0, "Terminated")]


def test_client_transport_error() -> None:
    tx = ClientTransaction(request("REGISTER"), now=0.0, reliable=True)
    tx.start()
    assert tx.transport_error(0.1) == [TransportFailed(), Terminated()]


def test_invite_server_udp_trying_retransmissions_g_h_and_ack() -> None:
    req = request()
    tx = ServerTransaction(req, now=0.0, reliable=False)
    trying = sent(tx.start())
    assert len(trying) == 1 and trying[0].startswith(b"SIP/2.0 100 Trying")
    assert sent(tx.receive_request(req, 0.3)) == trying
    busy = make_response(req, 486, to_tag="t")
    busy_bytes = sent(tx.send_response(busy, 1.0))
    assert state(tx) is State.COMPLETED
    log = run_until(tx, 9.0)
    assert [t for t, _ in log] == [1.5, 2.5, 4.5, 8.5]  # G: 0.5, 1, 2, 4 (T2 cap)
    assert sent(tx.receive_request(req, 9.1)) == busy_bytes
    ack = SipRequest(method="ACK", uri=req.uri, headers=req.headers.copy())
    assert tx.receive_request(ack, 9.2) == []
    assert state(tx) is State.CONFIRMED and tx.get_timer() == pytest.approx(14.2)
    assert tx.receive_request(ack, 9.3) == []  # absorbed
    assert rounded(run_until(tx, 20.0)) == [(14.2, "Terminated")]


def test_invite_server_timer_h_without_ack() -> None:
    req = request()
    tx = ServerTransaction(req, now=0.0, reliable=True, send_trying=False)
    assert tx.start() == []
    tx.send_response(make_response(req, 603), 0.0)
    assert tx.get_timer() == 32.0  # no Timer G over TCP
    assert run_until(tx, 40.0) == [(32.0, "TimedOut"), (32.0, "Terminated")]


def test_invite_server_tcp_ack_terminates_at_once() -> None:
    req = request()
    tx = ServerTransaction(req, now=0.0, reliable=True)
    tx.send_response(make_response(req, 486), 0.0)
    ack = SipRequest(method="ACK", uri=req.uri, headers=req.headers.copy())
    assert tx.receive_request(ack, 0.1) == [Terminated()]


def test_invite_server_2xx_terminates() -> None:
    req = request()
    tx = ServerTransaction(req, now=0.0, reliable=False)
    tx.start()
    events = tx.send_response(make_response(req, 200), 0.5)
    assert [type(e) for e in events] == [SendBytes, Terminated]


def test_non_invite_server_absorbs_then_resends_final_until_timer_j() -> None:
    req = request("MESSAGE")
    tx = ServerTransaction(req, now=0.0, reliable=False)
    assert tx.start() == []
    assert tx.receive_request(req, 0.1) == []  # Trying: absorb
    ok = sent(tx.send_response(make_response(req, 200), 0.2))
    assert sent(tx.receive_request(req, 1.0)) == ok
    assert tx.get_timer() == pytest.approx(32.2)
    assert rounded(run_until(tx, 40.0)) == [(32.2, "Terminated")]
    tcp = ServerTransaction(req, now=0.0, reliable=True)
    assert [type(e) for e in tcp.send_response(make_response(req, 200), 0.0)] == [
        SendBytes,
        Terminated,
    ]


def test_missing_table_entry_is_an_error() -> None:
    req = request("MESSAGE")
    tx = ServerTransaction(req, now=0.0, reliable=False)
    tx.send_response(make_response(req, 200), 0.0)
    with pytest.raises(LocalProtocolError):
        tx.send_response(make_response(req, 500), 0.1)  # a second final response
    with pytest.raises(LocalProtocolError):
        ClientTransaction(request("ACK"), now=0.0, reliable=True)


def test_transaction_keys_match_requests_and_responses() -> None:
    req = request()
    ack = SipRequest(method="ACK", uri=req.uri, headers=req.headers.copy())
    assert server_key(req) == ("z9hG4bKnashds8", "pc33.atlanta.com", "INVITE")
    assert server_key(ack) == server_key(req)
    assert client_key(make_response(req, 180)) == ("z9hG4bKnashds8", "INVITE")
    old = request()
    old.headers.set("Via", "SIP/2.0/UDP pc33.atlanta.com;branch=1234")
    assert server_key(old) is None


@settings(max_examples=150, deadline=None)
@given(
    method=st.sampled_from(["INVITE", "MESSAGE"]),
    reliable=st.booleans(),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=10), st.sampled_from([0, 100, 180, 200, 486])),
        max_size=12,
    ),
)
def test_client_transaction_any_response_sequence(
    method: str, reliable: bool, steps: list[tuple[float, int]]
) -> None:
    req = request(method)
    tx = ClientTransaction(req, now=0.0, reliable=reliable)
    tx.start()
    now = 0.0
    finals = 0
    terminated = False
    for dt, status in steps:
        now += dt
        events = run_until(tx, now)
        if status and tx.state is not State.TERMINATED:
            answer = tx.receive_response(make_response(req, status), now)
            events += [(now, type(e).__name__) for e in answer]
            finals += any(
                isinstance(e, ResponseReceived) and e.response.status >= 200 for e in answer
            )
        terminated = terminated or any(name == "Terminated" for _, name in events)
        assert not (terminated and tx.state is not State.TERMINATED)
    run_until(tx, now + 100.0)
    if method == "INVITE" and tx.state is State.PROCEEDING:
        # §17.1.1.2: a ringing INVITE has no transaction timer; the TU cancels it.
        assert tx.get_timer() is None
    else:
        assert state(tx) is State.TERMINATED and tx.get_timer() is None
    assert finals <= 1
