"""Record-Route and loose routing (RFC 3261 §16.4, §16.6 step 4, §16.12; RFC 5658).

A dialog-creating request the relay forwards (INVITE; SUBSCRIBE and REFER too, were they
forwarded) gets our Record-Route with ``;lr``, so the dialog's later requests (the ACK for
a 2xx, BYE, re-INVITE, MESSAGE inside the dialog) come back through the relay: a UA behind
NAT or on TCP/TLS is reachable only over the flow it keeps with us. MESSAGE outside a
dialog is not recorded: it creates no dialog (RFC 3428 §4), so there is no route set to
put us in. When the two sides use different transports, two entries are recorded, one per
side (double Record-Route, RFC 5658 §4), so each UA reaches us the way it already does.

Our entries carry ``dlg=<token>``: the issue time and an HMAC (per-process key) of that
time, the Call-ID, the caller's From-tag and the dialog's two ends (the flow the INVITE
came from and the flow the branch went to). A request whose Route names us with a token
belongs to a dialog we record-routed only when the token checks out for its Call-ID, one
of its tags, the flow it came from and the flow it goes to (:meth:`LooseRouter.admits`),
and is younger than :data:`TOKEN_LIFETIME`: then it may go on to its Request-URI (or the
next Route) even when that is no registered Contact of ours, e.g. the callee's BYE to the
caller. So a token only ever carries requests between the two parties of its dialog; any
other use is 403. Without the token the relay forwards only to its own users and their
bindings (no open relay).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import secrets
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.relay.sip.transport import DEFAULT_SIP_PORT, DEFAULT_SIPS_PORT, Flow
from shared.sip.headers import make_response, parse_name_addr, to_tag
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UriError, parse_sip_uri, parse_uri

if TYPE_CHECKING:
    from services.relay.sip.edge import SipEdge

#: Requests that create a dialog (RFC 3261 §12.1, RFC 6665 §4.1, RFC 3515 §2.4.4).
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
TOKEN_PARAM = "dlg"
TOKEN_BYTES = 8  # 64 bits of HMAC: enough that guessing one is hopeless
TIME_DIGITS = 8  # the issue time, hex seconds, in front of the HMAC
#: Seconds a dialog token is honoured after the INVITE that got it (a call longer than
#: this can no longer be ended through the relay by the party that is not registered).
TOKEN_LIFETIME = 24 * 3600


def creates_dialog(request: SipRequest) -> bool:
    """An initial (no To-tag, §12.1) request of a dialog-creating method."""
    if request.method not in DIALOG_CREATING_METHODS:
        return False
    try:
        return parse_name_addr(request.get("To") or "").tag is None
    except ValueError:
        return False


@dataclass(frozen=True)
class RouteCheck:
    """What the Route header said, once our own entries are removed (§16.4)."""

    #: A Route entry of ours carried a dialog token: the request claims to be in a dialog
    #: we record-routed (:meth:`LooseRouter.admits` decides once the target flow is known).
    dialog: bool = False
    #: The Route entry now on top (another proxy of the dialog's route set), or None.
    next_hop: str | None = None
    #: The token of our (first) Route entry that carried one.
    token: str | None = None


#: A request without Route lines: not in a dialog we record-routed, no next hop.
NO_ROUTE = RouteCheck()


class LooseRouter:
    def __init__(self, edge: SipEdge) -> None:
        self.edge = edge
        self._key = secrets.token_bytes(32)

    # -- Record-Route -------------------------------------------------------------------

    def token(self, issued: int, call_id: str, tag: str, end_a: Flow, end_b: Flow) -> str:
        ends = sorted((_end(end_a), _end(end_b)))
        data = "\n".join((str(issued), call_id, tag, *ends)).encode()
        digest = hmac.new(self._key, data, hashlib.sha256).digest()
        return f"{issued:0{TIME_DIGITS}x}" + digest[:TOKEN_BYTES].hex()

    def admits(self, request: SipRequest, token: str | None, source: Flow, target: Flow) -> bool:
        """``request`` (from ``source``, going to ``target``) is a request of the dialog
        ``token`` was issued for: same Call-ID, the caller's tag as its From- or To-tag, a
        To-tag (it is in the dialog), between the dialog's two ends, not expired."""
        if token is None or len(token) != TIME_DIGITS + 2 * TOKEN_BYTES:
            return False
        try:
            issued = int(token[:TIME_DIGITS], 16)
        except ValueError:
            return False
        if not 0 <= time.time() - issued <= TOKEN_LIFETIME:
            return False
        try:
            tags = (parse_name_addr(request.get("From") or "").tag, to_tag(request))
        except ValueError:
            return False
        if tags[1] is None:
            return False
        call_id = request.get("Call-ID") or ""
        return any(
            tag is not None
            and hmac.compare_digest(token, self.token(issued, call_id, tag, source, target))
            for tag in tags
        )

    def uri(self, flow: Flow, token: str) -> str:
        s = self.edge.settings
        host = self.edge.public_host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        port = s.sip_tls_port if flow.transport == "tls" else s.sip_port
        transport = "" if flow.transport == "udp" else f";transport={flow.transport}"
        return f"sip:{host}:{port}{transport};{TOKEN_PARAM}={token};lr"

    def record_route(self, inbound: Flow, request: SipRequest, outbound: Flow) -> list[str]:
        """Record-Route values for one branch, in the order to prepend them (§16.6 step 4:
        ours go above every other; the entry facing the callee ends up on top)."""
        try:
            tag = parse_name_addr(request.get("From") or "").tag or ""
        except ValueError:
            tag = ""
        call_id = request.get("Call-ID") or ""
        token = self.token(int(time.time()), call_id, tag, inbound, outbound)
        values = [f"<{self.uri(inbound, token)}>"]
        if outbound.transport != inbound.transport:
            values.append(f"<{self.uri(outbound, token)}>")
        return values

    # -- loose routing ------------------------------------------------------------------

    def is_ours(self, uri: SipUri) -> bool:
        port = uri.port or DEFAULT_SIP_PORT
        return self.edge.is_local(uri.host) and (uri.port is None or port in self.edge.local_ports)

    def process(self, request: SipRequest) -> RouteCheck | SipResponse:
        """§16.4: restore a strict router's Request-URI, then remove the Route entries that
        name us. A response to send instead (400, 403) when the Route is unusable."""
        if "Route" not in request.headers:
            return NO_ROUTE  # (what the rest would find: nothing to restore or remove)
        token: str | None = None
        routes = request.get_all("Route")
        try:
            request_uri = parse_uri(request.uri)
        except UriError:
            request_uri = None
        if (
            routes
            and isinstance(request_uri, SipUri)
            and self.is_ours(request_uri)
            and request_uri.param(TOKEN_PARAM) is not None
        ):
            # The previous hop is a strict router (RFC 2543): it put our Record-Route URI
            # in the Request-URI and the real target last in Route.
            try:
                request.uri = parse_name_addr(routes[-1]).uri
            except ValueError:
                return make_response(request, 400, "Bad Route")
            _remove_last_route(request)
            token = request_uri.param(TOKEN_PARAM)
        while (route := request.get("Route")) is not None:
            try:
                route_uri = parse_uri(parse_name_addr(route).uri)
            except ValueError:
                return make_response(request, 400, "Bad Route")
            if not isinstance(route_uri, SipUri) or not self.is_ours(route_uri):
                if token is None:
                    return make_response(request, 403, "Relaying Forbidden")
                return RouteCheck(dialog=True, next_hop=parse_name_addr(route).uri, token=token)
            token = token or route_uri.param(TOKEN_PARAM)
            request.headers.pop_first_value("Route")
        return RouteCheck(dialog=token is not None, token=token)

    async def flow_to(self, uri_text: str) -> Flow | None:
        """Where a request for ``uri_text`` goes when it is no registered Contact (§16.6
        step 7, RFC 3263 reduced to "the host, resolved"): UDP to the address, TCP/TLS
        only over a connection that peer already has with us (we open none)."""
        try:
            uri = parse_sip_uri(uri_text)
        except UriError:
            return None
        transport = uri.transport or ("tls" if uri.scheme == "sips" else "udp")
        if transport not in ("udp", "tcp", "tls"):
            return None
        port = uri.port or (DEFAULT_SIPS_PORT if transport == "tls" else DEFAULT_SIP_PORT)
        host = uri.host.strip("[]")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(
                    host, port, type=socket.SOCK_DGRAM
                )
            except OSError:
                return None
            if not infos:
                return None
            host = str(infos[0][4][0])
        if transport == "udp":
            return Flow("udp", host, port)
        return self.edge.transports.connection_from(transport, host, port)


def _end(flow: Flow) -> str:
    """One end of a dialog as the token binds it: transport, address and port."""
    host = flow.host.strip("[]").lower()
    with contextlib.suppress(ValueError):
        host = ipaddress.ip_address(host).compressed
    return f"{flow.transport}:{host}:{flow.port}"


def _remove_last_route(request: SipRequest) -> None:
    routes = request.get_all("Route")
    request.headers.remove("Route")
    for value in routes[:-1]:
        request.headers.add("Route", value)
