"""The router: what happens to each request that is not a retransmission (RFC 3261 §16).

Checks in the order of §16.3 (Max-Forwards, loops, Proxy-Require), then by target:

* this server (no user part, our domain or address): OPTIONS → 200;
* REGISTER → the registrar;
* the conference domain → :func:`handover.deliver_to_room`;
* a user of our domain → digest-authenticate local senders (407), 404 for unknown users,
  fork to the bindings; a MESSAGE nobody could take → :func:`handover.store_offline`;
* a registered Contact (in-dialog requests of UAs that use us as outbound proxy) → that UA;
* in a dialog we record-routed (:mod:`record_route`) → the next Route, or the Request-URI;
* anything else → 403 (no open relay).
"""

from __future__ import annotations

import logging
from functools import partial

from services.relay.sip import handover
from services.relay.sip.auth import Authenticated
from services.relay.sip.edge import BRANCH_PREFIX, SipEdge
from services.relay.sip.proxy import Fork, Target, branch_request, upstream_copy
from services.relay.sip.record_route import LooseRouter, RouteCheck, creates_dialog
from services.relay.sip.registrar import Registrar
from services.relay.sip.transactions import ServerTxn
from services.relay.sip.transport import Flow
from shared.db.locations import find_by_contact
from shared.db.pool import DATABASE_ERRORS
from shared.db.users import Address
from shared.sip.headers import make_response, parse_name_addr, parse_via, to_tag
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UnsupportedUriScheme, UriError, parse_uri
from shared.stats import for_service

log = logging.getLogger(__name__)

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER"
FORWARDED_METHODS = frozenset({"MESSAGE", "OPTIONS", "INVITE"})
#: Methods inside a dialog, forwarded to a registered Contact without authentication.
IN_DIALOG_METHODS = frozenset({"BYE", "INVITE", "MESSAGE", "INFO", "UPDATE", "NOTIFY", "REFER"})


class Router:
    def __init__(self, edge: SipEdge) -> None:
        self.edge = edge
        self.settings = edge.settings
        self.registrar = Registrar(edge)
        self.routes = LooseRouter(edge)

    async def handle(self, txn: ServerTxn) -> None:
        request = txn.request
        try:
            response = await self.route(txn)
        except DATABASE_ERRORS as exc:
            log.warning(
                "%s from %s failed: database unavailable (%s)", request.method, txn.source, exc
            )
            response = make_response(request, 503, headers=[("Retry-After", "5")])
        except Exception:
            log.exception("%s from %s failed", request.method, txn.source)
            response = make_response(request, 500)
        if response is not None:
            txn.respond(response)

    def _loop(self, request: SipRequest) -> bool:
        # §16.3 step 4: a Via of ours means the request came back to us.
        for value in request.get_all("Via"):
            try:
                via = parse_via(value)
            except ValueError:
                continue
            branch = via.branch or ""
            if branch.startswith(BRANCH_PREFIX) and self.edge.is_local(via.host):
                return True
        return False

    async def route(self, txn: ServerTxn) -> SipResponse | None:
        request, s = txn.request, self.settings
        if request.method == "CANCEL":
            return self._cancel(txn)
        if self._loop(request):
            return make_response(request, 482)
        if request.get("Proxy-Require") is not None:
            # §16.3 step 5: we support no extensions.
            unsupported = ", ".join(request.get_all("Proxy-Require"))
            return make_response(request, 420, headers=[("Unsupported", unsupported)])
        # §16.4: remove the Route entries naming us (our Record-Route, or UAs that use us
        # as outbound proxy); a dialog's route set may lead on to another proxy.
        routed = self.routes.process(request)
        if isinstance(routed, SipResponse):
            return routed
        if routed.next_hop is not None:
            if int(request.get("Max-Forwards") or "70") == 0:
                return make_response(request, 483)
            return await self._forward_in_dialog(txn, routed.next_hop)
        try:
            uri = parse_uri(request.uri)
        except UnsupportedUriScheme:
            return make_response(request, 416)
        except UriError:
            return make_response(request, 400, "Bad Request-URI")
        if not isinstance(uri, SipUri):
            return make_response(request, 404)
        hops = int(request.get("Max-Forwards") or "70")
        if request.method == "REGISTER":
            return await self.registrar.register(txn)
        if uri.user is None and self.edge.is_local(uri.host):
            return self._to_server(request)
        if hops == 0:
            return make_response(request, 483)
        host = uri.host.lower().rstrip(".")
        if host == s.conference_domain:
            return await self._to_room(txn, uri)
        if host == s.domain or self.routes.is_ours(uri):  # sip:bob@<our address> is bob too
            return await self._to_user(txn, uri)
        if request.method in IN_DIALOG_METHODS:
            binding = await find_by_contact(self.edge.pool, request.uri)
            if binding is not None:
                return await self._forward(txn, [Target.of(self.edge, binding)], offline_aor=None)
            if routed.dialog and to_tag(request) is not None:
                return await self._forward_in_dialog(txn, request.uri)
        return make_response(request, 403, "Relaying Forbidden")

    async def _forward_in_dialog(self, txn: ServerTxn, next_hop: str) -> SipResponse | None:
        """§16.12: a request of a dialog we record-routed, on to ``next_hop`` (the next
        proxy of the route set, or the Request-URI when we are the last)."""
        flow = await self.routes.flow_to(next_hop)
        if flow is None:
            return make_response(txn.request, 480)
        return await self._forward(txn, [Target(txn.request.uri, flow)], offline_aor=None)

    def _to_server(self, request: SipRequest) -> SipResponse:
        if request.method == "OPTIONS":
            return make_response(
                request,
                200,
                headers=[
                    ("Allow", ALLOW),
                    ("Accept", "text/plain, */*"),
                    ("Accept-Language", "en"),
                ],
            )
        if request.method in FORWARDED_METHODS:
            return make_response(request, 404)
        return make_response(request, 405, headers=[("Allow", ALLOW)])

    async def _authenticate(self, txn: ServerTxn) -> str | SipResponse | None:
        """The sender's user name when it is one of ours and proved it; the response to send
        when it must (407, 403); None for a sender from another domain."""
        request = txn.request
        try:
            from_uri = parse_uri(parse_name_addr(request.get("From") or "").uri)
        except ValueError:
            return make_response(request, 400, "Bad From")
        if not isinstance(from_uri, SipUri) or from_uri.host.lower() != self.settings.domain:
            return None
        result = await self.edge.auth.authenticate(request, txn.source, proxy=True)
        if isinstance(result, SipResponse):
            return result
        assert isinstance(result, Authenticated)
        if result.username != from_uri.user:
            return make_response(request, 403, "From Does Not Match Credentials")
        return result.username

    async def _to_room(self, txn: ServerTxn, uri: SipUri) -> SipResponse | None:
        request = txn.request
        if request.method != "MESSAGE":
            return make_response(request, 405 if request.method != "INVITE" else 404)
        sender = await self._authenticate(txn)
        if isinstance(sender, SipResponse):
            return sender
        room = f"{uri.user}@{self.settings.conference_domain}"
        return await handover.deliver_to_room(
            self.edge.pool, self.settings, request, room, authenticated_user=sender
        )

    async def _to_user(self, txn: ServerTxn, uri: SipUri) -> SipResponse | None:
        request = txn.request
        if request.method not in FORWARDED_METHODS:
            return make_response(request, 405, headers=[("Allow", ALLOW)])
        sender = await self._authenticate(txn)
        if isinstance(sender, SipResponse):
            return sender
        assert uri.user is not None
        aor = f"{uri.user}@{self.settings.domain}"
        recipient = Address(uri.user, self.settings.domain)
        held = self.edge.credentials.peek(recipient)
        stored = held.value if held is not None else await self.edge.credentials.get(recipient)
        if stored is None:
            return make_response(request, 404)
        bindings = await self.edge.bindings.get(aor)
        offline = aor if request.method == "MESSAGE" else None
        if not bindings:
            if offline is not None:
                return await handover.store_offline(
                    self.edge.pool, self.settings, request, aor, authenticated_user=sender
                )
            return make_response(request, 480)
        if offline is not None and await handover.behind_stored(self.edge.pool, request, aor):
            return await handover.store_offline(
                self.edge.pool,
                self.settings,
                request,
                aor,
                authenticated_user=sender,
                registered=True,
            )
        targets = [Target.of(self.edge, binding) for binding in bindings]
        return await self._forward(txn, targets, offline_aor=offline, sender=sender)

    async def _forward(
        self,
        txn: ServerTxn,
        targets: list[Target],
        *,
        offline_aor: str | None,
        sender: str | None = None,
    ) -> SipResponse | None:
        request = txn.request
        if txn.final_sent:
            return None  # CANCELled while we were looking things up
        record_route = None
        if creates_dialog(request):
            record_route = partial(
                self.routes.record_route, txn.source, request.get("Call-ID") or ""
            )
        fork = Fork(self.edge, request, record_route)
        txn.on_cancel = fork.cancel

        def provisional(response: SipResponse) -> None:
            if response.status > 100:  # §16.7 step 5: 100 Trying is hop by hop
                txn.respond(upstream_copy(response))

        result = await fork.run(targets, on_provisional=provisional)
        for_service("relay").inc_label("forwarded", request.method, result.ok)  # 2xx ones
        txn.on_cancel = None
        if result.ok:
            fork.cancel_pending()  # §16.7 step 10: the other branches have lost
        if fork.cancelled and not result.ok:
            return make_response(request, 487)
        if not result.ok and offline_aor is not None and result.unreachable:
            return await handover.store_offline(
                self.edge.pool, self.settings, request, offline_aor, authenticated_user=sender
            )
        if result.synthetic:
            return make_response(request, result.response.status)
        return upstream_copy(result.response)

    def _cancel(self, txn: ServerTxn) -> SipResponse:
        """§16.10: answer the CANCEL, cancel the branches of its INVITE."""
        invite = self.edge.transactions.find_invite(txn.request)
        if invite is None or invite.final_sent:
            return make_response(txn.request, 481)
        if invite.on_cancel is not None:
            invite.on_cancel()
        else:
            invite.respond(make_response(invite.request, 487))
        return make_response(txn.request, 200)

    def stray_ack(self, request: SipRequest, flow: Flow) -> None:
        """An ACK for a 2xx (end to end, §16.7): forward it statelessly along the dialog's
        route set, or to the registered Contact it is addressed to."""
        self.edge.spawn(self._forward_ack(request), name="sip-ack")

    async def _forward_ack(self, request: SipRequest) -> None:
        routed = self.routes.process(request)
        if isinstance(routed, SipResponse):
            return  # an ACK gets no response (§17.2.3): drop it
        flow = await self._ack_flow(request, routed)
        if flow is None:
            return
        ack = branch_request(
            self.edge,
            request,
            request.uri,
            self.edge.via(flow, self.edge.new_branch()),
            decrement=True,
        )
        self.edge.transports.send(flow, ack.to_bytes())

    async def _ack_flow(self, request: SipRequest, routed: RouteCheck) -> Flow | None:
        if routed.next_hop is not None:
            return await self.routes.flow_to(routed.next_hop)
        try:
            binding = await find_by_contact(self.edge.pool, request.uri)
        except DATABASE_ERRORS:
            return None
        if binding is not None:
            return self.edge.flow_for(binding)
        return await self.routes.flow_to(request.uri) if routed.dialog else None
