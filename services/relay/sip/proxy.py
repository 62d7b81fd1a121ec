"""Stateful forwarding to an AoR's bindings (RFC 3261 §16.6, §16.7): parallel forking.

Each binding gets its own copy of the request (Request-URI = the contact, our Via on top,
Max-Forwards decremented) in its own client transaction. The first 2xx wins at once;
otherwise, when every branch has answered, the best final response is chosen (§16.7
step 6). Timeouts and transport failures count as 408 and 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from functools import partial
from typing import Final

from services.relay.sip.edge import SipEdge
from services.relay.sip.transactions import ClientTxn
from services.relay.sip.transport import Flow
from shared.db.locations import Binding
from shared.digest import DigestParseError, parse_credentials
from shared.record import Record
from shared.sip.headers import make_response
from shared.sip.message import Headers, LazyResponse, SipRequest, SipResponse

#: Final statuses after which a MESSAGE is worth storing for later (the UA is not there).
UNREACHABLE = frozenset({408, 480, 503})

#: The Record-Route values to add to a branch sent on the given flow (None: add none).
RecordRoute = Callable[[Flow], list[str]]


class Target(Record):
    """One branch: the Request-URI it gets and the flow it goes on (None: unreachable)."""

    _fields = ("uri", "flow")

    def __init__(self, uri: str, flow: Flow | None) -> None:
        self.uri: Final = uri
        self.flow: Final = flow

    @classmethod
    def of(cls, edge: SipEdge, binding: Binding) -> Target:
        return cls(binding.contact, edge.flow_for(binding))


class ForkResult(Record):
    _fields = ("response", "statuses", "synthetic")

    def __init__(
        self, response: SipResponse, statuses: tuple[int, ...], synthetic: bool = False
    ) -> None:
        self.response: Final = response  # as received (our Via still on top), or synthesised
        self.statuses: Final = statuses  # every final status seen, in arrival order
        #: True when no branch answered: ``response`` answers the original request directly.
        self.synthetic: Final = synthetic

    @property
    def ok(self) -> bool:
        return 200 <= self.response.status < 300

    @property
    def unreachable(self) -> bool:
        """Every branch failed with 408/480/503 (or there was none)."""
        return all(status in UNREACHABLE for status in self.statuses)


def _rank(response: SipResponse) -> tuple[int, int]:
    # §16.7 step 6: any 6xx first; else the lowest class; the lowest code within it.
    status = response.status
    return (0 if status >= 600 else 1, status)


def _our_credentials(value: str, realm: str) -> bool:
    try:
        return parse_credentials(value).realm == realm
    except DigestParseError:
        return False


def branch_request(
    edge: SipEdge,
    request: SipRequest,
    uri: str,
    via: str,
    *,
    decrement: bool,
    record_route: Sequence[str] = (),
) -> SipRequest:
    """The copy of ``request`` sent to one target (§16.6 steps 1-8)."""
    realm = edge.settings.domain
    hops: str | None = None
    if decrement:
        hops = str(max(int(request.headers.get("Max-Forwards") or "70") - 1, 0))
    # Step 8: our Via on top; step 4: our Record-Route values above every one there.
    top = [("Via", via), *(("Record-Route", value) for value in reversed(record_route))]
    headers = request.headers.forwarded(
        top,
        # §22.3: credentials for our realm are consumed here, not forwarded.
        drop="Proxy-Authorization",
        drop_if=lambda value: _our_credentials(value, realm),
        replace="Max-Forwards",
        value=hops,
    )
    return SipRequest(method=request.method, uri=uri, headers=headers, body=request.body)


class Fork:
    """One forwarded request and its branches."""

    def __init__(
        self, edge: SipEdge, request: SipRequest, record_route: RecordRoute | None = None
    ) -> None:
        self.edge = edge
        self.request = request
        self.record_route = record_route
        self.branches: list[ClientTxn] = []
        self.cancelled = False
        self._cancelled_branches: set[int] = set()  # (their ids: CANCEL each once)
        self._timers_c: dict[int, asyncio.TimerHandle] = {}  # INVITE branches, by id

    async def run(
        self,
        targets: Sequence[Target],
        *,
        decrement: bool = True,
        on_provisional: Callable[[SipResponse], None] | None = None,
    ) -> ForkResult:
        edge = self.edge
        statuses: list[int] = []
        responses: list[SipResponse] = []
        for target in targets:
            flow = target.flow
            if flow is None:
                statuses.append(503)  # its connection is gone (or held by another relay)
                continue
            branch_id = edge.new_branch()
            branch = branch_request(
                edge,
                self.request,
                target.uri,
                edge.via(flow, branch_id),
                decrement=decrement,
                record_route=self.record_route(flow) if self.record_route is not None else (),
            )
            txn = edge.transactions.send_request(branch, flow, on_provisional, branch=branch_id)
            self.branches.append(txn)
            if self.request.method == "INVITE":
                self._arm_timer_c(txn)
                txn.on_provisional = partial(self._provisional, txn, on_provisional)
                txn.final.add_done_callback(partial(self._branch_ended, txn))
        if len(self.branches) == 1 and not statuses:  # one binding: nothing to race
            response = await self.branches[0].final
            return ForkResult(response, (response.status,))
        pending: set[asyncio.Future[SipResponse]] = {txn.final for txn in self.branches}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in done:
                response = future.result()
                statuses.append(response.status)
                if 200 <= response.status < 300:
                    return ForkResult(response, tuple(statuses))
                responses.append(response)
        if not responses:
            return ForkResult(
                make_response(self.request, 480), tuple(statuses) or (480,), synthetic=True
            )
        return ForkResult(min(responses, key=_rank), tuple(statuses))

    # -- Timer C (§16.6 step 11, §16.7 step 2) ------------------------------------------------

    def _arm_timer_c(self, txn: ClientTxn) -> None:
        self._branch_ended(txn)
        loop = self.edge.transactions.loop
        timeout = self.edge.settings.sip_invite_timeout
        self._timers_c[id(txn)] = loop.call_later(timeout, self._timer_c_fired, txn)

    def _provisional(
        self,
        txn: ClientTxn,
        relay: Callable[[SipResponse], None] | None,
        response: SipResponse,
    ) -> None:
        self._arm_timer_c(txn)  # each provisional response starts Timer C again
        if relay is not None:
            relay(response)

    def _branch_ended(self, txn: ClientTxn, _final: object = None) -> None:
        handle = self._timers_c.pop(id(txn), None)
        if handle is not None:
            handle.cancel()

    def _timer_c_fired(self, txn: ClientTxn) -> None:
        """A branch rang too long: CANCEL it (if it rang at all) and count it as a 408."""
        self._timers_c.pop(id(txn), None)
        if txn.final.done():
            return
        if txn.tx.state != "calling" and id(txn) not in self._cancelled_branches:
            self._cancelled_branches.add(id(txn))
            self._send_cancel(txn)
        txn.on_timeout()

    def relay_later_2xx(self, winner: SipResponse, send: Callable[[SipResponse], None]) -> None:
        """§16.7 step 5: every 2xx to an INVITE goes upstream, not only the first. A branch
        that answers 2xx before our CANCEL reaches it has set up a dialog of its own, which
        only the caller can ACK and end (with a BYE)."""

        def relay(future: asyncio.Future[SipResponse]) -> None:
            response = future.result()
            if response is not winner and 200 <= response.status < 300:
                send(response)

        for txn in self.branches:
            if txn.tx.request.method == "INVITE":
                txn.final.add_done_callback(relay)

    def cancel(self) -> None:
        """§16.10: CANCEL every INVITE branch still without a final response (§9.1)."""
        self.cancelled = True
        self.cancel_pending()

    def cancel_pending(self) -> None:
        for txn in self.branches:
            if txn.final.done() or txn.tx.request.method != "INVITE":
                continue
            if id(txn) in self._cancelled_branches:
                continue
            self._cancelled_branches.add(id(txn))
            if txn.tx.state == "calling":
                # §9.1: no provisional response yet, so no CANCEL yet (it could overtake
                # the INVITE and leave it ringing); it goes with the first one instead.
                txn.on_provisional = partial(self._cancel_at_provisional, txn)
            else:
                self._send_cancel(txn)

    def _cancel_at_provisional(self, txn: ClientTxn, _response: SipResponse) -> None:
        txn.on_provisional = None
        if not txn.final.done():
            self._send_cancel(txn)

    def _send_cancel(self, txn: ClientTxn) -> None:
        self.edge.transactions.send_request(cancel_request(txn.tx.request), txn.flow)


def cancel_request(invite: SipRequest) -> SipRequest:
    """The CANCEL for a request we sent (§9.1): same top Via, URI, dialog and CSeq number."""
    headers = Headers()
    headers.add("Via", invite.get("Via") or "")
    for route in invite.headers.raw("Route"):
        headers.add("Route", route)
    headers.add("Max-Forwards", "70")
    for name in ("From", "To", "Call-ID"):
        headers.add(name, invite.get(name) or "")
    seq = (invite.get("CSeq") or "1").split()[0]
    headers.add("CSeq", f"{seq} CANCEL")
    return SipRequest(method="CANCEL", uri=invite.uri, headers=headers)


def upstream_copy(response: SipResponse) -> SipResponse:
    """A downstream response as it goes upstream: our Via removed (§16.7 step 3)."""
    if isinstance(response, LazyResponse):  # the other lines pass as received
        return response.without_top_via()
    headers = response.headers.copy()
    headers.pop_first_value("Via")
    return SipResponse(
        status=response.status, reason=response.reason, headers=headers, body=response.body
    )
