"""The asyncio side of the RFC 3261 §17 transactions: timers, matching, sending.

The sans-IO machines in ``shared.sip.transaction`` decide; this layer feeds them what
arrives, re-arms ``loop.call_at`` from ``get_timer()``, writes their bytes to the right
flow, and turns their outcome into a future for the code waiting on it.

Non-INVITE transactions over UDP linger after their final response (Timer J: 32 s for a
server transaction, Timer K: 5 s for a client one) only to absorb retransmissions. At
thousands of requests a second those idle objects would be most of what the garbage
collector scans, so the layer retires them at once: an answered server transaction leaves
only its key, the response bytes and where they went (a retransmitted request gets them
again until Timer J would have ended it); an answered client transaction leaves nothing (a
retransmitted final response then matches no transaction and is dropped, which is all the
Completed state would have done with it, §17.1.2.2).
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import itertools
import logging
import math
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from services.relay.sip.transport import Flow, TransportLayer, response_flow
from shared.sip.errors import LocalProtocolError
from shared.sip.headers import make_response, parse_cseq, parse_via
from shared.sip.message import LazyResponse, SipRequest, SipResponse
from shared.sip.transaction import (
    ClientTransaction,
    ResponseReceived,
    SendBytes,
    ServerTransaction,
    Terminated,
    TimedOut,
    Transaction,
    TransactionEvent,
    TransportFailed,
    client_key,
    server_key,
)

log = logging.getLogger(__name__)

#: A server transaction's key (§17.2.3) as one string, its parts joined by line feeds (no
#: header value holds one): a string is nothing for the garbage collector to walk, and an
#: answered transaction's key is kept for 32 s.
ServerKey = str

#: Stale timer-heap entries tolerated beyond the live ones before the heap is rebuilt.
_STALE_SLACK = 64

#: The monotonic clock's resolution: asyncio runs a timer that is due within it.
_CLOCK_RESOLUTION = time.get_clock_info("monotonic").resolution

#: Timers are run on ticks of this many seconds: all those due within one tick share one
#: wake-up of the loop. At 2,500 relayed MESSAGEs a second, each client transaction's
#: Timer K came due on its own, 0.4 ms after the last: a wake-up, a new loop timer and a
#: cancelled one per request. RFC 3261's timers are multiples of T1 (0.5 s) and T4 (5 s);
#: firing up to 10 ms late changes nothing a peer can tell.
TIMER_TICK = 0.01


def _server_key(request: SipRequest) -> ServerKey:
    key = server_key(request)
    if key is not None:
        return "\n".join(key)
    # §17.2.3 fallback for RFC 2543 clients (no magic cookie): the dialog and CSeq number.
    cseq = request.get("CSeq") or ""
    try:
        seq = str(parse_cseq(cseq).seq)
    except ValueError:
        seq = cseq
    method = "INVITE" if request.method == "ACK" else request.method
    return "\n".join(
        (
            "2543",
            request.uri,
            request.get("Call-ID") or "",
            request.get("From") or "",
            request.get("Via") or "",
            seq,
            method,
        )
    )


_T = TypeVar("_T", bound=Transaction)


class _Txn(Generic[_T]):
    # Generic rather than narrowed in the subclasses: mypyc compiles this module
    # (setup.py), and a compiled class may not narrow an attribute's type.
    tx: _T

    def __init__(self, layer: TransactionLayer, flow: Flow) -> None:
        self.layer = layer
        self.flow = flow
        #: When the transaction's timer is due (None: no timer armed), and the sequence
        #: number of its entry in the layer's timer heap (other entries are stale).
        self.timer_when: float | None = None
        self.timer_seq: int | None = None

    def on_response(self, response: SipResponse) -> None:
        pass

    def on_timeout(self) -> None:
        pass

    def on_transport_failed(self) -> None:
        pass

    def on_terminated(self) -> None:
        pass


class ServerTxn(_Txn[ServerTransaction]):
    """A request we must answer; ``respond`` hands a response to its transaction."""

    def __init__(
        self, layer: TransactionLayer, tx: ServerTransaction, source: Flow, key: ServerKey
    ) -> None:
        super().__init__(layer, response_flow(tx.request, source))
        self.tx = tx
        self.source = source
        self.key = key
        self.final_sent = False
        #: Set by the router while it forwards the request (CANCEL needs it).
        self.on_cancel: Callable[[], None] | None = None

    @property
    def request(self) -> SipRequest:
        return self.tx.request

    def respond(self, response: SipResponse) -> None:
        if self.final_sent:
            return
        if response.status >= 200:
            self.final_sent = True
        try:
            events = self.tx.send_response(response, self.layer.loop.time())
        except LocalProtocolError as exc:
            log.warning("cannot send %d for %s: %s", response.status, self.request.method, exc)
            return
        # (An answered non-INVITE transaction ends here: retired over UDP, terminated at
        # once over TCP/TLS, where Timer J is zero. Its parsed request goes with it.)
        self.layer.drive(self, events)

    def on_terminated(self) -> None:
        if self.layer.server.get(self.key) is self:
            del self.layer.server[self.key]


class ClientTxn(_Txn[ClientTransaction]):
    """A request we sent; ``final`` resolves to its final response (408/503 synthesised)."""

    def __init__(
        self,
        layer: TransactionLayer,
        tx: ClientTransaction,
        flow: Flow,
        key: tuple[str, str],
        on_provisional: Callable[[SipResponse], None] | None,
    ) -> None:
        super().__init__(layer, flow)
        self.tx = tx
        self.key = key
        self.on_provisional = on_provisional
        self.final: asyncio.Future[SipResponse] = layer.loop.create_future()
        #: The top Via we wrote, as sent: a response carrying it back verbatim is matched
        #: without parsing it (None: matched the general way only).
        self.via: str | None = None

    def _resolve(self, response: SipResponse) -> None:
        if not self.final.done():
            self.final.set_result(response)

    def on_response(self, response: SipResponse) -> None:
        if response.status < 200:
            if self.on_provisional is not None:
                self.on_provisional(response)
        else:
            self._resolve(response)

    def _fail(self, status: int) -> None:
        if not self.final.done():  # (the usual end: answered long ago, nothing to make)
            self.final.set_result(make_response(self.tx.request, status))

    def on_timeout(self) -> None:
        self._fail(408)

    def on_transport_failed(self) -> None:
        self._fail(503)

    def on_terminated(self) -> None:
        layer = self.layer
        if layer.client.get(self.key) is self:
            del layer.client[self.key]
        if self.via is not None and layer.client_vias.get(self.via) is self:
            del layer.client_vias[self.via]
        self._fail(408)


RequestHandler = Callable[[ServerTxn], None]
AckHandler = Callable[[SipRequest, Flow], None]
ResponseHandler = Callable[[SipResponse, Flow], None]


class TransactionLayer:
    def __init__(
        self, transports: TransportLayer, on_request: RequestHandler, on_stray_ack: AckHandler
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.transports = transports
        self.on_request = on_request
        self.on_stray_ack = on_stray_ack
        #: A response that matches no client transaction (set by the router; None: drop).
        self.on_stray_response: ResponseHandler | None = None
        self.server: dict[ServerKey, ServerTxn] = {}
        self.client: dict[tuple[str, str], ClientTxn] = {}
        #: Client transactions by the top Via text they sent (see ClientTxn.via).
        self.client_vias: dict[str, ClientTxn] = {}
        #: Answered non-INVITE server transactions over UDP: key → the response; and the
        #: keys with Timer J's deadlines, in that order (Timer J is one constant). Strings,
        #: bytes and floats alone: thousands a second of anything else, kept for 32 s, made
        #: each young-generation garbage collection a pause of 15-30 ms.
        self.answered: dict[ServerKey, bytes] = {}
        self._answered_keys: collections.deque[ServerKey] = collections.deque()
        self._answered_until: collections.deque[float] = collections.deque()
        self.accepting = True
        #: The timer heap holds (due time, sequence) only, and ``_armed`` the transaction
        #: of each live entry: a stale entry keeps no transaction alive until it is due.
        self._timers: list[tuple[float, int]] = []
        self._armed: dict[int, _Txn[Any]] = {}
        self._timer_seq = itertools.count()
        self._wakeup: asyncio.TimerHandle | None = None
        self._wakeup_when = math.inf

    # -- incoming -----------------------------------------------------------------------

    def receive(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        if isinstance(message, SipRequest):
            self._request(message, flow)
        else:
            self._response(message, flow)

    def _request(self, request: SipRequest, flow: Flow) -> None:
        now = self.loop.time()
        key = _server_key(request)
        txn = self.server.get(key)
        if request.method == "ACK":
            if txn is not None and txn.tx.is_invite:
                self.drive(txn, txn.tx.receive_request(request, now))
            else:
                self.on_stray_ack(request, flow)  # ACK for a 2xx: end to end (§16.7)
            return
        if txn is not None:
            self.drive(txn, txn.tx.receive_request(request, now))  # a retransmission
            return
        if self.answered:
            self._forget_answered(now)
            answer = self.answered.get(key)
            if answer is not None:
                # A retransmission of a request we answered (§17.2.2 Completed): the
                # response again, to where the request came from (as the first time).
                self.transports.send(flow, answer)
                return
        tx = ServerTransaction(request, now=now, reliable=flow.reliable)
        txn = ServerTxn(self, tx, flow, key)
        self.server[key] = txn
        self.drive(txn, tx.start())
        if not self.accepting:
            txn.respond(make_response(request, 503, headers=[("Retry-After", "5")]))
            return
        self.on_request(txn)

    def _response(self, response: SipResponse, flow: Flow) -> None:
        # §17.1.3 matching: branch and CSeq method. A response whose top Via is, to the
        # letter, one we sent has that branch; only its CSeq method is left to compare.
        first = response.first if isinstance(response, LazyResponse) else response.headers.first
        via = first("Via")
        txn = self.client_vias.get(via) if via is not None else None
        if txn is not None:
            cseq = (first("CSeq") or "").split()
            if len(cseq) == 2 and cseq[1] == txn.key[1]:
                self.drive(txn, txn.tx.receive_response(response, self.loop.time()))
                return
        key = client_key(response)
        txn = self.client.get(key) if key is not None else None
        if txn is None:
            if self.on_stray_response is not None:
                self.on_stray_response(response, flow)
            else:
                log.debug("response %d from %s matches no transaction", response.status, flow)
            return
        self.drive(txn, txn.tx.receive_response(response, self.loop.time()))

    def find_invite(self, cancel: SipRequest) -> ServerTxn | None:
        """The INVITE server transaction a CANCEL is for (§9.2: same key, method INVITE)."""
        key = _server_key(cancel)
        return self.server.get(key.rpartition("\n")[0] + "\nINVITE")

    # -- outgoing -----------------------------------------------------------------------

    def send_request(
        self,
        request: SipRequest,
        flow: Flow,
        on_provisional: Callable[[SipResponse], None] | None = None,
        *,
        branch: str | None = None,
    ) -> ClientTxn:
        """Send ``request`` on ``flow`` in a new client transaction (``branch``: the one in
        its top Via, when the caller just wrote it, saves parsing that Via again)."""
        tx = ClientTransaction(request, now=self.loop.time(), reliable=flow.reliable)
        key = (branch, request.method) if branch is not None else client_key_for(request)
        txn = ClientTxn(self, tx, flow, key, on_provisional)
        self.client[key] = txn
        if branch is not None:
            via = request.headers.first("Via")
            if via is not None and "," not in via and via not in self.client_vias:
                txn.via = via
                self.client_vias[via] = txn
        self.drive(txn, tx.start())
        return txn

    def connection_closed(self, flow: Flow) -> None:
        """Client transactions waiting on a closed connection fail now (§17.1.4)."""
        for txn in [t for t in self.client.values() if t.flow == flow]:
            self._transport_error(txn)

    # -- driving ------------------------------------------------------------------------

    def drive(self, txn: _Txn[Any], events: list[TransactionEvent]) -> None:
        for event in events:
            if type(event) is SendBytes:  # final event classes: identity, not isinstance
                if not self.transports.send(txn.flow, event.data):
                    self._transport_error(txn)
            elif type(event) is ResponseReceived:
                txn.on_response(event.response)
            elif type(event) is TimedOut:
                txn.on_timeout()
            elif type(event) is TransportFailed:
                txn.on_transport_failed()
            elif type(event) is Terminated:
                self._disarm(txn)
                txn.on_terminated()
        tx = txn.tx
        if tx.state == "completed" and not tx.is_invite and not txn.flow.reliable:
            self._retire(txn)
        else:
            self._rearm(txn)

    def _retire(self, txn: _Txn[Any]) -> None:
        """Forget an answered non-INVITE transaction over UDP (see the module docstring)."""
        self._disarm(txn)
        if type(txn) is ClientTxn:
            txn.on_terminated()
            return
        assert type(txn) is ServerTxn
        deadline = txn.tx.get_timer()
        response = txn.tx.last_response
        if self.server.get(txn.key) is txn:
            del self.server[txn.key]
        if deadline is None or response is None:
            return
        self._forget_answered(self.loop.time())
        self.answered[txn.key] = response
        self._answered_keys.append(txn.key)
        self._answered_until.append(deadline)

    def _forget_answered(self, now: float) -> None:
        """Drop the answered transactions whose Timer J has fired."""
        until, keys = self._answered_until, self._answered_keys
        while until and until[0] <= now:
            until.popleft()
            self.answered.pop(keys.popleft(), None)

    def _transport_error(self, txn: _Txn[Any]) -> None:
        try:
            events = txn.tx.transport_error(self.loop.time())
        except LocalProtocolError:
            return  # the state has no transport-error edge: the timers will end it
        self.drive(txn, events)

    # One heap of (due time, sequence) and one loop timer for its earliest entry, instead
    # of a loop timer per transaction: tuple comparisons are done in C, the loop's timer
    # handles compare in Python, and thousands of transactions have a timer armed at once.
    # A transaction re-armed, retired or ended leaves its old entry behind, stale (its
    # sequence is no longer in ``_armed``), holding no reference to the transaction.

    def _rearm(self, txn: _Txn[Any]) -> None:
        when = txn.tx.get_timer() if txn.tx.state != "terminated" else None
        if when == txn.timer_when:
            return  # the timer already set is the right one
        self._disarm(txn)
        if when is not None:
            seq = next(self._timer_seq)
            txn.timer_when, txn.timer_seq = when, seq
            self._armed[seq] = txn
            timers = self._timers
            heapq.heappush(timers, (when, seq))
            if len(timers) > 2 * len(self._armed) + _STALE_SLACK:
                self._compact()
            if when < self._wakeup_when:
                self._schedule(when)

    def _compact(self) -> None:
        """Drop the stale heap entries. A relayed MESSAGE's client transaction is answered
        within milliseconds of arming Timer E (0.5 s): left in the heap, each stale entry
        came due on its own, one loop wake-up per request (2,500 a second at 2,500/s).
        Rebuilt whenever they outnumber the live ones, the heap stays small."""
        # In place: _run_timers may be popping from this list when a transaction re-arms.
        armed, timers = self._armed, self._timers
        timers[:] = [entry for entry in timers if entry[1] in armed]
        heapq.heapify(timers)

    def _disarm(self, txn: _Txn[Any]) -> None:
        """Make the transaction's heap entry, if any, stale."""
        if txn.timer_seq is not None:
            self._armed.pop(txn.timer_seq, None)
        txn.timer_when = txn.timer_seq = None

    def _schedule(self, when: float) -> None:
        when = math.ceil(when / TIMER_TICK) * TIMER_TICK
        if when >= self._wakeup_when:
            return  # that tick's wake-up is already set
        if self._wakeup is not None:
            self._wakeup.cancel()
        self._wakeup = self.loop.call_at(when, self._run_timers)
        self._wakeup_when = when

    def _run_timers(self) -> None:
        self._wakeup = None
        # No wake-up is set while the due timers run (the ones they re-arm go in the heap):
        # the next one is set once, for the earliest timer left.
        self._wakeup_when = -math.inf
        now = self.loop.time()
        limit = now + _CLOCK_RESOLUTION  # what the loop itself counts as due
        timers, armed = self._timers, self._armed
        try:
            while timers and timers[0][0] <= limit:
                when, seq = heapq.heappop(timers)
                txn = armed.pop(seq, None)
                if txn is None:
                    continue  # stale: re-armed since, or ended
                txn.timer_when = txn.timer_seq = None
                self.drive(txn, txn.tx.handle_timer(max(now, when)))
        finally:
            self._wakeup_when = math.inf
            if timers:
                self._schedule(timers[0][0])

    @property
    def pending(self) -> int:
        """Transactions still waiting for a final response."""
        return sum(not t.final.done() for t in self.client.values()) + sum(
            not t.final_sent for t in self.server.values()
        )

    def close(self) -> None:
        if self._wakeup is not None:
            self._wakeup.cancel()
            self._wakeup = None
        self._wakeup_when = math.inf
        self._timers.clear()
        self._armed.clear()
        self.answered.clear()
        self._answered_keys.clear()
        self._answered_until.clear()
        txns: list[_Txn[Any]] = [*self.server.values(), *self.client.values()]
        for txn in txns:
            txn.timer_when = txn.timer_seq = None


def client_key_for(request: SipRequest) -> tuple[str, str]:
    branch = parse_via(request.get("Via") or "").branch or ""
    return branch, request.method
