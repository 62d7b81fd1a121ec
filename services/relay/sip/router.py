"""The router: what happens to each request that is not a retransmission (RFC 3261 §16).

Checks in the order of §16.3 (Max-Forwards, loops, Proxy-Require), then by target:

* this server (no user part, our domain or address): OPTIONS → 200;
* REGISTER → the registrar;
* the conference domain → :func:`handover.deliver_to_room`;
* a user of our domain → digest-authenticate local senders (407), 404 for unknown users,
  fork to the bindings; a MESSAGE nobody could take → :func:`handover.store_offline`;
* a registered Contact (in-dialog requests of UAs that use us as outbound proxy) → that UA,
  once a local sender has authenticated (unless the request is in a dialog we
  record-routed between those two ends);
* in a dialog we record-routed (:mod:`record_route`) → the next Route, or the Request-URI,
  only between the dialog's two ends;
* anything else → 403 (no open relay).

A sender is local, and must authenticate, when its From host is one this relay serves in
any spelling (:meth:`SipEdge.is_local`: the domain, our name and addresses, any case, a
trailing dot; and the room domain). P-Asserted-Identity and P-Preferred-Identity (RFC 3325)
are removed from every request; an authenticated local sender's request gets its own
``P-Asserted-Identity: <sip:user@domain>`` (the trust domain is this relay alone).
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
from shared.sip.headers import Via, make_response, parse_name_addr, parse_via, to_tag
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UnsupportedUriScheme, UriError, parse_uri
from shared.stats import for_service

log = logging.getLogger(__name__)
RELAY_STATS = for_service("relay")

ALLOW = "INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, REGISTER"
FORWARDED_METHODS = frozenset({"MESSAGE", "OPTIONS", "INVITE"})
#: Methods inside a dialog, forwarded to a registered Contact (RFC 3261 §12.2).
IN_DIALOG_METHODS = frozenset({"BYE", "INVITE", "MESSAGE", "INFO", "UPDATE", "NOTIFY", "REFER"})
#: Identity headers only this relay may assert (RFC 3325 §5: trust domain = this relay).
IDENTITY_HEADERS = ("P-Asserted-Identity", "P-Preferred-Identity")


def strip_identity(request: SipRequest) -> None:
    """Remove the RFC 3325 identity headers a sender put in (we trust no sender's)."""
    for name in IDENTITY_HEADERS:
        request.headers.remove(name)


class Router:
    def __init__(self, edge: SipEdge) -> None:
        self.edge = edge
        self.settings = edge.settings
        self.registrar = Registrar(edge)
        self.routes = LooseRouter(edge)
        self.conference_domain = self.settings.conference_domain  # (computed per read)

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
        # §16.3 step 4: a Via of ours means the request came back to us. Our branches all
        # start with BRANCH_PREFIX: where no Via line holds that text (nor a quoted string,
        # which could spell it with escapes), none is ours and no Via needs parsing.
        for value in request.headers.raw("Via"):
            if BRANCH_PREFIX in value or '"' in value:
                break
        else:
            return False
        for value in request.get_all("Via"):
            try:
                via = parse_via(value)
            except ValueError:
                continue
            if self._ours(via):
                return True
        return False

    def _ours(self, via: Via) -> bool:
        """``via`` is one this relay wrote: our branch prefix, our host."""
        return (via.branch or "").startswith(BRANCH_PREFIX) and self.edge.is_local(via.host)

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
        hops = int(request.get("Max-Forwards") or "70")
        if routed.next_hop is not None:
            if hops == 0:
                return make_response(request, 483)
            return await self._forward_in_dialog(txn, routed, routed.next_hop)
        try:
            uri = parse_uri(request.uri)
        except UnsupportedUriScheme:
            return make_response(request, 416)
        except UriError:
            return make_response(request, 400, "Bad Request-URI")
        if not isinstance(uri, SipUri):
            return make_response(request, 404)
        if request.method == "REGISTER":
            return await self.registrar.register(txn)
        if uri.user is None and self.edge.is_local(uri.host):
            return self._to_server(request)
        if hops == 0:
            return make_response(request, 483)
        host = uri.host.lower().rstrip(".")
        if host == self.conference_domain:
            return await self._to_room(txn, uri)
        if host == s.domain or self.routes.is_ours(uri):  # sip:bob@<our address> is bob too
            return await self._to_user(txn, uri)
        if request.method in IN_DIALOG_METHODS:
            binding = await find_by_contact(self.edge.pool, request.uri)
            if binding is not None:
                return await self._to_contact(txn, routed, Target.of(self.edge, binding))
            if routed.dialog and to_tag(request) is not None:
                return await self._forward_in_dialog(txn, routed, request.uri)
        return make_response(request, 403, "Relaying Forbidden")

    async def _to_contact(
        self, txn: ServerTxn, routed: RouteCheck, target: Target
    ) -> SipResponse | None:
        """A request for a registered Contact: in a dialog we record-routed between the
        sender and that contact it goes on; otherwise a local sender must authenticate,
        as for requests to the user's AoR."""
        sender: str | None = None
        if target.flow is None or not self.routes.admits(
            txn.request, routed.token, txn.source, target.flow
        ):
            authenticated = await self._authenticate(txn)
            if isinstance(authenticated, SipResponse):
                return authenticated
            sender = authenticated
        return await self._forward(txn, [target], offline_aor=None, sender=sender)

    async def _forward_in_dialog(
        self, txn: ServerTxn, routed: RouteCheck, next_hop: str
    ) -> SipResponse | None:
        """§16.12: a request of a dialog we record-routed, on to ``next_hop`` (the next
        proxy of the route set, or the Request-URI when we are the last), only between the
        two ends the dialog's token was issued for."""
        flow = await self.routes.flow_to(next_hop)
        if flow is None:
            return make_response(txn.request, 480)
        if not self.routes.admits(txn.request, routed.token, txn.source, flow):
            log.info(
                "%s from %s refused: not a request of the dialog its Route token is for",
                txn.request.method,
                txn.source,
            )
            return make_response(txn.request, 403, "Relaying Forbidden")
        return await self._forward(txn, [Target(txn.request.uri, flow)], offline_aor=None)

    def _assert_identity(self, request: SipRequest, sender: str | None) -> None:
        """RFC 3325 §5, before ``request`` is forwarded or stored: the identity we
        authenticated, asserted by us (where the sender's PAI was), or none."""
        if sender is None:
            strip_identity(request)
            return
        request.headers.remove("P-Preferred-Identity")
        request.headers.set("P-Asserted-Identity", f"<sip:{sender}@{self.settings.domain}>")

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
        if not isinstance(from_uri, SipUri):
            return None
        host = from_uri.host.lower().rstrip(".")
        room = host == self.conference_domain
        if not room and not self.edge.is_local(host):
            return None
        # Any spelling of a host of ours (our address, a trailing dot, another case) is us.
        result = await self.edge.auth.authenticate(request, txn.source, proxy=True)
        if isinstance(result, SipResponse):
            return result
        assert isinstance(result, Authenticated)
        if room or result.username != from_uri.user:
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
                self._assert_identity(request, sender)
                return await self._store(request, aor, sender)
            return make_response(request, 480)
        if (
            offline is not None
            and await self.edge.mailboxes.may_have_messages(aor)
            and await handover.behind_stored(self.edge.pool, request, aor)
        ):
            return await self._store(request, aor, sender, registered=True)
        targets = [Target.of(self.edge, binding) for binding in bindings]
        return await self._forward(txn, targets, offline_aor=offline, sender=sender)

    async def _store(
        self, request: SipRequest, aor: str, sender: str | None, *, registered: bool = False
    ) -> SipResponse:
        """:func:`handover.store_offline`; the next MESSAGE for ``aor`` then looks for
        stored messages it would overtake, even before the NOTIFY of this one arrives."""
        try:
            return await handover.store_offline(
                self.edge.pool,
                self.settings,
                request,
                aor,
                authenticated_user=sender,
                registered=registered,
            )
        finally:
            self.edge.mailboxes.invalidate(aor)

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
        self._assert_identity(request, sender)
        record_route = None
        if creates_dialog(request):
            record_route = partial(self.routes.record_route, txn.source, request)
        fork = Fork(self.edge, request, record_route)
        txn.on_cancel = fork.cancel

        def provisional(response: SipResponse) -> None:
            if response.status > 100:  # §16.7 step 5: 100 Trying is hop by hop
                txn.respond(upstream_copy(response))

        result = await fork.run(targets, on_provisional=provisional)
        RELAY_STATS.inc_label("forwarded", request.method, result.ok)  # 2xx ones
        txn.on_cancel = None
        if result.ok:
            fork.cancel_pending()  # §16.7 step 10: the other branches have lost
            if request.method == "INVITE" and len(fork.branches) > 1:
                fork.relay_later_2xx(result.response, partial(self._relay_2xx, txn.flow))
        if fork.cancelled and not result.ok:
            return make_response(request, 487)
        if not result.ok and offline_aor is not None and result.unreachable:
            return await self._store(request, offline_aor, sender)
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

    def _relay_2xx(self, flow: Flow, response: SipResponse) -> None:
        """A 2xx to an INVITE after the first: sent upstream as it is, without a transaction
        (§16.7 step 5; the INVITE's server transaction ended with the first 2xx)."""
        self.edge.transports.send(flow, upstream_copy(response).to_bytes())

    def stray_response(self, response: SipResponse, flow: Flow) -> None:
        """A response that matches no transaction goes on as a stateless proxy would send it
        (§16.7 step 1, §16.11), by its next Via: chiefly a 2xx to an INVITE that the callee
        sends again until the caller's ACK reaches it (§13.3.1.4), after our transaction
        ended with the first. Other stray responses (late 1xx, the end of a transaction we
        no longer hold) are dropped: nobody upstream waits for them."""
        cseq = (response.get("CSeq") or "").split()
        vias = response.get_all("Via")
        if not (200 <= response.status < 300 and cseq[1:] == ["INVITE"] and len(vias) > 1):
            log.debug("response %d from %s matches no transaction", response.status, flow)
            return
        try:
            top = parse_via(vias[0])
        except ValueError:
            return
        if not self._ours(top):
            log.debug("dropped a %d from %s: its top Via is not ours", response.status, flow)
            return
        upstream = self.edge.transports.upstream_flow(vias[1])
        if upstream is None:
            log.debug("no way back for a %d from %s: %s", response.status, flow, vias[1])
            return
        self._relay_2xx(upstream, response)

    def stray_ack(self, request: SipRequest, flow: Flow) -> None:
        """An ACK for a 2xx (end to end, §16.7): forward it statelessly along the dialog's
        route set, or to the registered Contact it is addressed to."""
        self.edge.spawn(self._forward_ack(request, flow), name="sip-ack")

    async def _forward_ack(self, request: SipRequest, source: Flow) -> None:
        strip_identity(request)
        routed = self.routes.process(request)
        if isinstance(routed, SipResponse):
            return  # an ACK gets no response (§17.2.3): drop it
        flow = await self._ack_flow(request, routed, source)
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

    async def _ack_flow(self, request: SipRequest, routed: RouteCheck, source: Flow) -> Flow | None:
        if routed.next_hop is not None:
            flow = await self.routes.flow_to(routed.next_hop)
        else:
            try:
                binding = await find_by_contact(self.edge.pool, request.uri)
            except DATABASE_ERRORS:
                return None
            if binding is not None:
                return self.edge.flow_for(binding)
            flow = await self.routes.flow_to(request.uri) if routed.dialog else None
        if flow is None or not self.routes.admits(request, routed.token, source, flow):
            return None
        return flow
