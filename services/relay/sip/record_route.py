"""Record-Route and loose routing (RFC 3261 §16.4, §16.6 step 4, §16.12; RFC 5658).

A dialog-creating request the relay forwards (INVITE; SUBSCRIBE and REFER too, were they
forwarded) gets our Record-Route with ``;lr``, so the dialog's later requests (the ACK for
a 2xx, BYE, re-INVITE, MESSAGE inside the dialog) come back through the relay: a UA behind
NAT or on TCP/TLS is reachable only over the flow it keeps with us. MESSAGE outside a
dialog is not recorded: it creates no dialog (RFC 3428 §4), so there is no route set to
put us in. When the two sides use different transports, two entries are recorded, one per
side (double Record-Route, RFC 5658 §4), so each UA reaches us the way it already does.

Our entries carry ``dlg=<token>``, an HMAC of the Call-ID under a per-process key. A
request whose Route names us with a valid token belongs to a dialog we record-routed: it
may go on to its Request-URI (or the next Route) even when that is no registered Contact
of ours, e.g. the callee's BYE to the caller. Without the token the relay forwards only to
its own users and their bindings (no open relay).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import secrets
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.relay.sip.transport import DEFAULT_SIP_PORT, DEFAULT_SIPS_PORT, Flow, same_host
from shared.sip.headers import make_response, parse_name_addr
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UriError, parse_sip_uri, parse_uri

if TYPE_CHECKING:
    from services.relay.sip.edge import SipEdge

#: Requests that create a dialog (RFC 3261 §12.1, RFC 6665 §4.1, RFC 3515 §2.4.4).
DIALOG_CREATING_METHODS = frozenset({"INVITE", "SUBSCRIBE", "REFER"})
TOKEN_PARAM = "dlg"
TOKEN_BYTES = 8  # 64 bits of HMAC: enough that guessing one is hopeless


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

    #: A Route entry of ours carried a valid token for this Call-ID: the request is in a
    #: dialog we record-routed.
    dialog: bool = False
    #: The Route entry now on top (another proxy of the dialog's route set), or None.
    next_hop: str | None = None


class LooseRouter:
    def __init__(self, edge: SipEdge) -> None:
        self.edge = edge
        self._key = secrets.token_bytes(32)

    # -- Record-Route -------------------------------------------------------------------

    def token(self, call_id: str) -> str:
        digest = hmac.new(self._key, call_id.encode(), hashlib.sha256).digest()
        return digest[:TOKEN_BYTES].hex()

    def uri(self, flow: Flow, token: str) -> str:
        s = self.edge.settings
        host = self.edge.public_host
        host = f"[{host}]" if ":" in host and not host.startswith("[") else host
        port = s.sip_tls_port if flow.transport == "tls" else s.sip_port
        transport = "" if flow.transport == "udp" else f";transport={flow.transport}"
        return f"sip:{host}:{port}{transport};{TOKEN_PARAM}={token};lr"

    def record_route(self, inbound: Flow, call_id: str, outbound: Flow) -> list[str]:
        """Record-Route values for one branch, in the order to prepend them (§16.6 step 4:
        ours go above every other; the entry facing the callee ends up on top)."""
        token = self.token(call_id)
        values = [f"<{self.uri(inbound, token)}>"]
        if outbound.transport != inbound.transport:
            values.append(f"<{self.uri(outbound, token)}>")
        return values

    # -- loose routing ------------------------------------------------------------------

    def is_ours(self, uri: SipUri) -> bool:
        port = uri.port or DEFAULT_SIP_PORT
        return self.edge.is_local(uri.host) and (uri.port is None or port in self.edge.local_ports)

    def _valid_token(self, uri: SipUri, call_id: str) -> bool:
        token = uri.param(TOKEN_PARAM)
        return token is not None and hmac.compare_digest(token, self.token(call_id))

    def process(self, request: SipRequest) -> RouteCheck | SipResponse:
        """§16.4: restore a strict router's Request-URI, then remove the Route entries that
        name us. A response to send instead (400, 403) when the Route is unusable."""
        call_id = request.get("Call-ID") or ""
        dialog = False
        routes = request.get_all("Route")
        try:
            request_uri = parse_uri(request.uri)
        except UriError:
            request_uri = None
        if (
            routes
            and isinstance(request_uri, SipUri)
            and self.is_ours(request_uri)
            and self._valid_token(request_uri, call_id)
        ):
            # The previous hop is a strict router (RFC 2543): it put our Record-Route URI
            # in the Request-URI and the real target last in Route.
            try:
                request.uri = parse_name_addr(routes[-1]).uri
            except ValueError:
                return make_response(request, 400, "Bad Route")
            _remove_last_route(request)
            dialog = True
        while (route := request.get("Route")) is not None:
            try:
                route_uri = parse_uri(parse_name_addr(route).uri)
            except ValueError:
                return make_response(request, 400, "Bad Route")
            if not isinstance(route_uri, SipUri) or not self.is_ours(route_uri):
                if not dialog:
                    return make_response(request, 403, "Relaying Forbidden")
                return RouteCheck(dialog=True, next_hop=parse_name_addr(route).uri)
            dialog = dialog or self._valid_token(route_uri, call_id)
            request.headers.pop_first_value("Route")
        return RouteCheck(dialog=dialog)

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
        for conn in self.edge.transports.connections.values():
            flow = conn.flow
            if flow.transport == transport and flow.port == port and same_host(flow.host, host):
                return flow
        return None


def _remove_last_route(request: SipRequest) -> None:
    routes = request.get_all("Route")
    request.headers.remove("Route")
    for value in routes[:-1]:
        request.headers.add("Route", value)
