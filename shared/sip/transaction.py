"""RFC 3261 §17 transactions as sans-IO state machines (client/server, INVITE/non-INVITE).

The clock is an input: every call takes ``now``; :meth:`get_timer` says when
to call :meth:`handle_timer` next (``None``: no timer armed). Calls return the
events the adapter must act on: :class:`SendBytes` to the peer,
:class:`ResponseReceived` for the TU, :class:`TimedOut`,
:class:`TransportFailed`, and finally :class:`Terminated` (forget the
transaction). Retransmission timers (A, E, G) run only over unreliable
transports; the "wait for stragglers" timers (D, I, J, K) are zero over
reliable ones.

Transitions are tables keyed by (state, input); a missing key means the
caller fed an input the RFC does not allow there and raises
LocalProtocolError. Not yet done: the RFC 6026 "Accepted" state for 2xx to
INVITE (here, as in RFC 3261, a 2xx terminates the INVITE transaction).
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Final, TypeAlias

from shared.record import Record
from shared.sip.errors import LocalProtocolError
from shared.sip.headers import make_response, parse_via
from shared.sip.message import Headers, SipRequest, SipResponse

__all__ = [
    "ClientTransaction",
    "ResponseReceived",
    "SendBytes",
    "ServerTransaction",
    "State",
    "Terminated",
    "TimedOut",
    "TransactionEvent",
    "TransportFailed",
    "client_key",
    "server_key",
]

DEFAULT_T1 = 0.5  # §17.1.1.1: RTT estimate, seconds
DEFAULT_T2 = 4.0  # maximum retransmit interval for non-INVITE requests and INVITE responses
DEFAULT_T4 = 5.0  # maximum duration a message will remain in the network


# --- events out ----------------------------------------------------------------------


class SendBytes(Record):
    _fields = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data: Final = data


class ResponseReceived(Record):
    """A response the client transaction passes up to the TU."""

    _fields = ("response",)

    def __init__(self, response: SipResponse) -> None:
        self.response: Final = response


class TimedOut(Record):
    """Timer B, F or H fired: the TU treats it as a 408 (§8.1.3.1)."""


class TransportFailed(Record):
    """The transport reported a failure (§17.1.4, §17.2.4): treated as a 503."""


class Terminated(Record):
    """The transaction is over; the adapter drops it."""


TransactionEvent: TypeAlias = SendBytes | ResponseReceived | TimedOut | TransportFailed | Terminated


# --- states, inputs, actions -----------------------------------------------------------


class State(StrEnum):
    CALLING = "calling"
    TRYING = "trying"
    PROCEEDING = "proceeding"
    COMPLETED = "completed"
    CONFIRMED = "confirmed"
    TERMINATED = "terminated"


class Input(StrEnum):
    # A StrEnum hashes as its value in C: a plain Enum's __hash__ runs interpreted, and the
    # tables are looked up by (state, input) for every event. Values unlike Timer's.
    RESPONSE_1XX = "1xx"  # from the network (client) or the TU (server)
    RESPONSE_2XX = "2xx"
    RESPONSE_FINAL = "300-699"
    REQUEST = "request"  # a retransmission of the request (server)
    ACK = "ack"
    TIMER_A = "timer A"
    TIMER_B = "timer B"
    TIMER_D = "timer D"
    TIMER_E = "timer E"
    TIMER_F = "timer F"
    TIMER_G = "timer G"
    TIMER_H = "timer H"
    TIMER_I = "timer I"
    TIMER_J = "timer J"
    TIMER_K = "timer K"
    TRANSPORT_ERROR = "transport-error"


class Timer(StrEnum):
    A = "A"
    B = "B"
    D = "D"
    E = "E"
    F = "F"
    G = "G"
    H = "H"
    I = "I"  # noqa: E741 - the RFC's name
    J = "J"
    K = "K"

    @property
    def input(self) -> Input:
        return _TIMER_INPUTS[self]


_TIMER_INPUTS = {timer: Input[f"TIMER_{timer.value}"] for timer in Timer}


class Action(Enum):
    SEND_REQUEST = "send request"
    SEND_ACK = "send ACK"  # §17.1.1.3, for 300-699 only
    SEND_RESPONSE = "send response"  # the TU's response, remembered as the last one
    RESEND_RESPONSE = "resend last response"
    DELIVER = "deliver response to TU"
    TIMEOUT = "report timeout"
    TRANSPORT_ERROR = "report transport error"
    BACKOFF = "double the interval (capped at T2 for E and G) and re-arm"
    REARM_T2 = "re-arm with T2"  # Timer E in Proceeding, §17.1.2.2


Step: TypeAlias = tuple[State, tuple[Action | Timer, ...]]  # a Timer in actions = start it
Table: TypeAlias = dict[tuple[State, Input], Step]

S, In, Act, T = State, Input, Action, Timer

# Figure 5, INVITE client transaction (§17.1.1):
#
#                 INVITE sent, Timer A (unreliable) and B started
#     +-----------+   Timer A: resend, A = 2*A
#     |  Calling  |----------------------------------+ 2xx: to TU -> Terminated
#     +-----------+                                  | Timer B / transport err: inform TU
#       | 1xx: to TU                                 |
#       v                                            |
#     +------------+ 1xx: to TU                      |
#     | Proceeding | 2xx: to TU ---------------------+
#     +------------+                                 |
#       | 300-699: send ACK, to TU, start Timer D    |
#       v                                            |
#     +-----------+ 300-699: send ACK                |
#     | Completed | Timer D -------------------------+--> Terminated
#     +-----------+
INVITE_CLIENT: Table = {
    (S.CALLING, In.TIMER_A): (S.CALLING, (Act.SEND_REQUEST, Act.BACKOFF)),
    (S.CALLING, In.TIMER_B): (S.TERMINATED, (Act.TIMEOUT,)),
    (S.CALLING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.DELIVER,)),
    (S.CALLING, In.RESPONSE_2XX): (S.TERMINATED, (Act.DELIVER,)),
    (S.CALLING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_ACK, Act.DELIVER, T.D)),
    (S.CALLING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.DELIVER,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.TERMINATED, (Act.DELIVER,)),
    (S.PROCEEDING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_ACK, Act.DELIVER, T.D)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.COMPLETED, In.RESPONSE_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, In.RESPONSE_2XX): (S.COMPLETED, ()),
    (S.COMPLETED, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_ACK,)),
    (S.COMPLETED, In.TIMER_D): (S.TERMINATED, ()),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
}

# Figure 6, non-INVITE client transaction (§17.1.2):
#
#     Request sent, Timer E (unreliable) and F started
#     +--------+ Timer E: resend, E = min(2E, T2)
#     | Trying | Timer F / transport err: inform TU ------------+
#     +--------+                                                |
#       | 1xx: to TU            200-699: to TU, start K ---+    |
#       v                                                  |    |
#     +------------+ Timer E: resend, E = T2; 1xx: to TU   |    |
#     | Proceeding | Timer F / transport err: inform TU ---|----+
#     +------------+ 200-699: to TU, start K --+           |    |
#                                              v           v    |
#                                           +-----------+       |
#                                           | Completed | Timer K --> Terminated
#                                           +-----------+
NON_INVITE_CLIENT: Table = {
    (S.TRYING, In.TIMER_E): (S.TRYING, (Act.SEND_REQUEST, Act.BACKOFF)),
    (S.TRYING, In.TIMER_F): (S.TERMINATED, (Act.TIMEOUT,)),
    (S.TRYING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.DELIVER,)),
    (S.TRYING, In.RESPONSE_2XX): (S.COMPLETED, (Act.DELIVER, T.K)),
    (S.TRYING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.DELIVER, T.K)),
    (S.TRYING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.PROCEEDING, In.TIMER_E): (S.PROCEEDING, (Act.SEND_REQUEST, Act.REARM_T2)),
    (S.PROCEEDING, In.TIMER_F): (S.TERMINATED, (Act.TIMEOUT,)),
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.DELIVER,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.COMPLETED, (Act.DELIVER, T.K)),
    (S.PROCEEDING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.DELIVER, T.K)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.COMPLETED, In.RESPONSE_1XX): (S.COMPLETED, ()),
    (S.COMPLETED, In.RESPONSE_2XX): (S.COMPLETED, ()),
    (S.COMPLETED, In.RESPONSE_FINAL): (S.COMPLETED, ()),
    (S.COMPLETED, In.TIMER_K): (S.TERMINATED, ()),
}

# Figure 7, INVITE server transaction (§17.2.1):
#
#     INVITE received: 100 Trying sent (unless the TU answers within 200 ms)
#     +------------+ INVITE: resend last response; TU 1xx: send
#     | Proceeding | TU 2xx: send ----------------------------------+
#     +------------+ transport err: inform TU ----------------------+
#       | TU 300-699: send, start G (unreliable) and H              |
#       v                                                           |
#     +-----------+ INVITE: resend; Timer G: resend, G = min(2G,T2) |
#     | Completed | Timer H / transport err: inform TU -------------+
#     +-----------+                                                 |
#       | ACK: start Timer I                                        |
#       v                                                           v
#     +-----------+ ACK: absorb                                  Terminated
#     | Confirmed | Timer I ------------------------------------------^
#     +-----------+
INVITE_SERVER: Table = {
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, (Act.RESEND_RESPONSE,)),
    (S.PROCEEDING, In.ACK): (S.PROCEEDING, ()),  # an ACK for a 2xx is not ours: ignore
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.TERMINATED, (Act.SEND_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_RESPONSE, T.G, T.H)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, (Act.RESEND_RESPONSE,)),
    (S.COMPLETED, In.TIMER_G): (S.COMPLETED, (Act.RESEND_RESPONSE, Act.BACKOFF)),
    (S.COMPLETED, In.TIMER_H): (S.TERMINATED, (Act.TIMEOUT,)),
    (S.COMPLETED, In.ACK): (S.CONFIRMED, (T.I,)),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.CONFIRMED, In.REQUEST): (S.CONFIRMED, ()),
    (S.CONFIRMED, In.ACK): (S.CONFIRMED, ()),
    (S.CONFIRMED, In.TIMER_I): (S.TERMINATED, ()),
}

# Figure 8, non-INVITE server transaction (§17.2.2):
#
#     Request received: passed to the TU
#     +--------+ request: absorb
#     | Trying | TU 1xx: send --> Proceeding; TU 200-699: send --+
#     +--------+                                                 |
#     +------------+ request: resend last; TU 1xx: send          |
#     | Proceeding | TU 200-699: send ---------------------------+
#     +------------+ transport err: inform TU --> Terminated     v
#                                                        +-----------+ request: resend
#                                                        | Completed | Timer J --> Terminated
#                                                        +-----------+
NON_INVITE_SERVER: Table = {
    (S.TRYING, In.REQUEST): (S.TRYING, ()),
    (S.TRYING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    (S.TRYING, In.RESPONSE_2XX): (S.COMPLETED, (Act.SEND_RESPONSE, T.J)),
    (S.TRYING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_RESPONSE, T.J)),
    (S.PROCEEDING, In.REQUEST): (S.PROCEEDING, (Act.RESEND_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_1XX): (S.PROCEEDING, (Act.SEND_RESPONSE,)),
    (S.PROCEEDING, In.RESPONSE_2XX): (S.COMPLETED, (Act.SEND_RESPONSE, T.J)),
    (S.PROCEEDING, In.RESPONSE_FINAL): (S.COMPLETED, (Act.SEND_RESPONSE, T.J)),
    (S.PROCEEDING, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
    (S.COMPLETED, In.REQUEST): (S.COMPLETED, (Act.RESEND_RESPONSE,)),
    (S.COMPLETED, In.TIMER_J): (S.TERMINATED, ()),
    (S.COMPLETED, In.TRANSPORT_ERROR): (S.TERMINATED, (Act.TRANSPORT_ERROR,)),
}

# Timers that may stay armed in each state; leaving a state cancels the others.
_STATE_TIMERS: dict[State, frozenset[Timer]] = {
    S.CALLING: frozenset({T.A, T.B}),
    S.TRYING: frozenset({T.E, T.F}),
    S.PROCEEDING: frozenset({T.E, T.F}),  # only the non-INVITE client has timers here
    S.COMPLETED: frozenset({T.D, T.K, T.G, T.H, T.J}),
    S.CONFIRMED: frozenset({T.I}),
    S.TERMINATED: frozenset(),
}


# The members the per-message code uses, as module constants: in the compiled build a
# Final name is a C global, while ``Act.DELIVER`` is a look-up on an interpreted class each
# time (about 40 of them per relayed MESSAGE).
_CALLING: Final = S.CALLING
_TRYING: Final = S.TRYING
_PROCEEDING: Final = S.PROCEEDING
_TERMINATED: Final = S.TERMINATED
_RESPONSE_1XX: Final = In.RESPONSE_1XX
_RESPONSE_2XX: Final = In.RESPONSE_2XX
_RESPONSE_FINAL: Final = In.RESPONSE_FINAL
_REQUEST: Final = In.REQUEST
_ACK: Final = In.ACK
_SEND_REQUEST: Final = Act.SEND_REQUEST
_SEND_ACK: Final = Act.SEND_ACK
_SEND_RESPONSE: Final = Act.SEND_RESPONSE
_RESEND_RESPONSE: Final = Act.RESEND_RESPONSE
_DELIVER: Final = Act.DELIVER
_TIMEOUT: Final = Act.TIMEOUT
_TRANSPORT_ERROR: Final = Act.TRANSPORT_ERROR
_BACKOFF: Final = Act.BACKOFF
_REARM_T2: Final = Act.REARM_T2
_TIMER_A: Final = T.A
_INVITE_CLIENT_TIMERS: Final = (T.A, T.B)
_NON_INVITE_CLIENT_TIMERS: Final = (T.E, T.F)


def _response_input(status: int) -> Input:
    if 100 <= status < 200:
        return _RESPONSE_1XX
    if 200 <= status < 300:
        return _RESPONSE_2XX
    return _RESPONSE_FINAL


#: Initial timer intervals by (reliable, T1, T4): they are the same for most transactions.
_INITIAL_INTERVALS: dict[tuple[bool, float, float], dict[Timer, float | None]] = {}


class Transaction:
    def __init__(
        self,
        table: Table,
        state: State,
        request: SipRequest,
        *,
        reliable: bool,
        t1: float,
        t2: float,
        t4: float,
    ) -> None:
        self._table = table
        self.state = state
        self.request = request
        self.reliable = reliable
        self.t1, self.t2, self.t4 = t1, t2, t4
        self._deadlines: dict[Timer, float] = {}
        self._intervals: dict[Timer, float] = {}
        self._events: list[TransactionEvent] = []
        self._zero_timers = False  # a timer was started with a zero interval
        key = (reliable, t1, t4)
        initial = _INITIAL_INTERVALS.get(key)
        if initial is None:
            initial = {t: self._compute_initial_interval(t) for t in Timer}
            if len(_INITIAL_INTERVALS) < 64:
                _INITIAL_INTERVALS[key] = initial
        self._initial = initial

    def _initial_interval(self, timer: Timer) -> float | None:
        return self._initial[timer]

    # Timer values, §17.1.1.2, §17.1.2.2, §17.2.1, §17.2.2 and Table 4 (§A).
    def _compute_initial_interval(self, timer: Timer) -> float | None:
        if timer in (T.A, T.E, T.G):
            return None if self.reliable else self.t1
        if timer in (T.B, T.F, T.H):
            return 64 * self.t1
        if timer is T.D:
            return 0.0 if self.reliable else 32.0
        if timer in (T.I, T.K):
            return 0.0 if self.reliable else self.t4
        return 0.0 if self.reliable else 64 * self.t1  # Timer J

    def _start(self, timer: Timer, now: float, interval: float | None = None) -> None:
        if interval is None:
            interval = self._initial[timer]
        if interval is None:
            return
        self._intervals[timer] = interval
        self._deadlines[timer] = now + interval
        if interval == 0:
            self._zero_timers = True

    def get_timer(self) -> float | None:
        """The earliest deadline of the armed timers (None: none armed). A loop, not
        ``min(..., default=None)``: a call with a keyword argument costs more than the few
        deadlines there are."""
        earliest: float | None = None
        for deadline in self._deadlines.values():
            if earliest is None or deadline < earliest:
                earliest = deadline
        return earliest

    def handle_timer(self, now: float) -> list[TransactionEvent]:
        while self._deadlines:
            timer, deadline = min(self._deadlines.items(), key=lambda item: item[1])
            if deadline > now:
                break
            del self._deadlines[timer]
            self._step(timer.input, now, fired=timer)
        return self._take()

    def transport_error(self, now: float) -> list[TransactionEvent]:
        self._step(In.TRANSPORT_ERROR, now)
        return self._take()

    def _take(self) -> list[TransactionEvent]:
        events, self._events = self._events, []
        return events

    def _step(
        self,
        event: Input,
        now: float,
        *,
        fired: Timer | None = None,
        response: SipResponse | None = None,
    ) -> None:
        try:
            new_state, actions = self._table[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"{type(self).__name__}: {event.value} not allowed in state {self.state}"
            ) from None
        for action in actions:
            if isinstance(action, Timer):
                self._start(action, now)
            elif action is _BACKOFF or action is _REARM_T2:
                assert fired is not None
                interval = 2 * self._intervals[fired]
                if fired is not _TIMER_A:
                    interval = min(interval, self.t2)
                self._start(fired, now, self.t2 if action is _REARM_T2 else interval)
            else:
                self._act(action, response)
        if new_state is not self.state:
            self.state = new_state
            allowed = _STATE_TIMERS[new_state]
            self._deadlines = {t: d for t, d in self._deadlines.items() if t in allowed}
            if new_state is _TERMINATED:
                self._events.append(Terminated())
        # Zero-length timers (D, I, J, K over reliable transports) fire at once.
        if not self._zero_timers:
            return
        due = [t for t, d in self._deadlines.items() if d <= now and self._intervals[t] == 0]
        for timer in due:
            if timer in self._deadlines:
                del self._deadlines[timer]
                self._step(timer.input, now, fired=timer)

    def _act(self, action: Action, response: SipResponse | None) -> None:
        raise NotImplementedError


class ClientTransaction(Transaction):
    """Sends ``request`` and follows it to a final response (§17.1)."""

    def __init__(
        self,
        request: SipRequest,
        *,
        now: float,
        reliable: bool,
        t1: float = DEFAULT_T1,
        t2: float = DEFAULT_T2,
        t4: float = DEFAULT_T4,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK never creates a client transaction (§17.1)")
        self.is_invite = request.method == "INVITE"
        table, state = (INVITE_CLIENT, _CALLING) if self.is_invite else (NON_INVITE_CLIENT, _TRYING)
        super().__init__(table, state, request, reliable=reliable, t1=t1, t2=t2, t4=t4)
        self._request_bytes = request.to_bytes()
        self._events.append(SendBytes(self._request_bytes))
        for timer in _INVITE_CLIENT_TIMERS if self.is_invite else _NON_INVITE_CLIENT_TIMERS:
            self._start(timer, now)

    def start(self) -> list[TransactionEvent]:
        """The events of creation: the request to send."""
        return self._take()

    def receive_response(self, response: SipResponse, now: float) -> list[TransactionEvent]:
        self._step(_response_input(response.status), now, response=response)
        return self._take()

    def _act(self, action: Action, response: SipResponse | None) -> None:
        if action is _SEND_REQUEST:
            self._events.append(SendBytes(self._request_bytes))
        elif action is _DELIVER:
            assert response is not None
            self._events.append(ResponseReceived(response))
        elif action is _SEND_ACK:
            assert response is not None
            self._events.append(SendBytes(self._ack_for(response).to_bytes()))
        elif action is _TIMEOUT:
            self._events.append(TimedOut())
        elif action is _TRANSPORT_ERROR:
            self._events.append(TransportFailed())
        else:
            raise LocalProtocolError(f"client transaction cannot {action.value}")

    def _ack_for(self, response: SipResponse) -> SipRequest:
        """The ACK for a 300-699 response (§17.1.1.3): same branch, To from the response."""
        req = self.request
        headers = Headers()
        top_via = req.get("Via")
        if top_via is not None:
            headers.add("Via", top_via)
        for route in req.headers.raw("Route"):
            headers.add("Route", route)
        headers.add("Max-Forwards", "70")
        for name in ("From", "Call-ID"):
            value = req.get(name)
            if value is not None:
                headers.add(name, value)
        headers.add("To", response.get("To") or req.get("To") or "")
        cseq = (req.get("CSeq") or "").split()
        headers.add("CSeq", f"{cseq[0] if cseq else '1'} ACK")
        return SipRequest(method="ACK", uri=req.uri, headers=headers)


class ServerTransaction(Transaction):
    """Absorbs retransmissions of ``request`` and sends the TU's responses (§17.2).

    For INVITE a 100 Trying is sent at once unless ``send_trying`` is False
    (the TU promises a response within 200 ms, §17.2.1).
    """

    def __init__(
        self,
        request: SipRequest,
        *,
        now: float,
        reliable: bool,
        send_trying: bool = True,
        t1: float = DEFAULT_T1,
        t2: float = DEFAULT_T2,
        t4: float = DEFAULT_T4,
    ) -> None:
        if request.method == "ACK":
            raise LocalProtocolError("ACK never creates a server transaction (§17.2)")
        self.is_invite = request.method == "INVITE"
        table, state = (
            (INVITE_SERVER, _PROCEEDING) if self.is_invite else (NON_INVITE_SERVER, _TRYING)
        )
        super().__init__(table, state, request, reliable=reliable, t1=t1, t2=t2, t4=t4)
        self._last_response: bytes | None = None
        if self.is_invite and send_trying:
            self._step(_RESPONSE_1XX, now, response=make_response(request, 100))

    @property
    def last_response(self) -> bytes | None:
        """The last response sent, as bytes: what a retransmitted request gets again."""
        return self._last_response

    def start(self) -> list[TransactionEvent]:
        """The events of creation: the 100 Trying for an INVITE, if any."""
        return self._take()

    def receive_request(self, request: SipRequest, now: float) -> list[TransactionEvent]:
        """A retransmission of the request, or (INVITE) the ACK for a 300-699 response."""
        self._step(_ACK if request.method == "ACK" else _REQUEST, now)
        return self._take()

    def send_response(self, response: SipResponse, now: float) -> list[TransactionEvent]:
        """Send a response from the TU."""
        self._step(_response_input(response.status), now, response=response)
        return self._take()

    def _act(self, action: Action, response: SipResponse | None) -> None:
        if action is _SEND_RESPONSE:
            assert response is not None
            self._last_response = response.to_bytes()
            self._events.append(SendBytes(self._last_response))
        elif action is _RESEND_RESPONSE:
            if self._last_response is not None:
                self._events.append(SendBytes(self._last_response))
        elif action is _TIMEOUT:
            self._events.append(TimedOut())
        elif action is _TRANSPORT_ERROR:
            self._events.append(TransportFailed())
        else:
            raise LocalProtocolError(f"server transaction cannot {action.value}")


# --- matching (§17.1.3, §17.2.3) --------------------------------------------------------

MAGIC_COOKIE = "z9hG4bK"  # §8.1.1.7: branch IDs of RFC 3261 elements start with this


def client_key(response: SipResponse) -> tuple[str, str] | None:
    """(branch, CSeq method) of a response; the client transaction it belongs to."""
    try:
        branch = parse_via(response.get("Via") or "").branch
    except ValueError:
        return None
    cseq = (response.get("CSeq") or "").split()
    if branch is None or len(cseq) != 2:
        return None
    return branch, cseq[1]


def server_key(request: SipRequest) -> tuple[str, str, str] | None:
    """(branch, sent-by, method) of a request; ACK maps to its INVITE's transaction.

    None for pre-RFC 3261 branches (no magic cookie), which need the §17.2.3
    fallback matching the caller has to do itself.
    """
    try:
        via = parse_via(request.get("Via") or "")
    except ValueError:
        return None
    if via.branch is None or not via.branch.startswith(MAGIC_COOKIE):
        return None
    sent_by = via.host.lower() + ("" if via.port is None else f":{via.port}")
    method = "INVITE" if request.method == "ACK" else request.method
    return via.branch, sent_by, method
