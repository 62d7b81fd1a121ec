"""The SIP edge: owns the transports, the transaction layer and what they share.

Incoming requests become a task each (router or registrar); everything they need from the
network (our Via, the flow for a binding, sending requests) is here.
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
import itertools
import logging
import secrets
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

import asyncpg

from services.relay.guesses import GuessGuard
from services.relay.sip.auth import DigestAuthenticator
from services.relay.sip.caches import BindingCache, CredentialCache, MailboxCache
from services.relay.sip.flood import RateLimiter
from services.relay.sip.transactions import ServerTxn, TransactionLayer
from services.relay.sip.transport import Flow, TransportLayer
from shared.compiled import MODULES, compiled_modules
from shared.config import Settings
from shared.db.locations import Binding, delete_connection_bindings
from shared.digest import NonceManager
from shared.sip.message import SipRequest, SipResponse
from shared.sip.transaction import MAGIC_COOKIE
from shared.stats import for_service

log = logging.getLogger(__name__)
RELAY_STATS = for_service("relay")

#: Our branch IDs start with this, so that loop detection recognises our own Via (§16.3).
BRANCH_PREFIX = MAGIC_COOKIE + "-ims-"
_BRANCH_BASE = f"{BRANCH_PREFIX}{secrets.token_hex(6)}."
_BRANCH_IDS = itertools.count(1)
#: Allocations (net) between two collections of the youngest generation (Python: 700).
YOUNG_GC_THRESHOLD = 20_000


def _is_wildcard(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_unspecified
    except ValueError:
        return False


def _is_own_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """True when a socket can bind to ``address``: it belongs to this machine."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.bind((str(address), 0))
    except OSError:
        return False
    return True


def format_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SipEdge:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        database_url: str,
        guard: GuessGuard | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        #: Stable across restarts of this relay, so that a restart can drop the TCP/TLS
        #: bindings the previous run held.
        self.relay_instance = f"{socket.gethostname()}:{settings.sip_port}"
        self.nonces = NonceManager(secrets.token_bytes(32), lifetime=settings.sip_nonce_lifetime)
        self.credentials = CredentialCache(
            pool, database_url, ttl=settings.sip_credentials_cache_ttl
        )
        self.bindings = BindingCache(
            pool, ttl=settings.sip_bindings_cache_ttl, database_url=database_url
        )
        self.mailboxes = MailboxCache(pool, database_url, ttl=settings.sip_credentials_cache_ttl)
        self.auth = DigestAuthenticator(settings, self.credentials, self.nonces, guard)
        self.transports = TransportLayer(
            on_message=self._on_message,
            on_closed=self._on_closed,
            idle_timeout=settings.sip_tcp_idle_timeout,
            rate_limiter=RateLimiter(settings.sip_rate_limit, settings.sip_rate_window),
            max_connections=settings.sip_max_connections,
            max_connections_per_source=settings.sip_max_connections_per_source,
            max_message_size=settings.sip_max_message_size,
        )
        self.transactions = TransactionLayer(self.transports, self._on_request, self._on_ack)
        self.tasks: set[asyncio.Task[None]] = set()
        hosts = settings.sip_hosts
        self.public_host = settings.sip_public_host or (
            settings.domain if any(_is_wildcard(host) for host in hosts) else hosts[0]
        )
        self.local_hosts = {self.public_host.lower().strip("[]"), settings.domain}
        self.local_hosts.update(
            host.lower().strip("[]") for host in hosts if not _is_wildcard(host)
        )
        self.local_ports = {settings.sip_port, settings.sip_tls_port}
        self._address_cache: dict[ipaddress.IPv4Address | ipaddress.IPv6Address, bool] = {}
        #: The start of our Via by transport (``SIP/2.0/UDP host:port``).
        self._sent_by: dict[str, str] = {}
        # Set by service.py once the router exists (it needs the edge first).
        self.handle_request: Callable[[ServerTxn], Coroutine[Any, Any, None]] | None = None
        self.handle_ack: Callable[[SipRequest, Flow], None] | None = None

    async def start(self, tls_context: ssl.SSLContext | None) -> None:
        s = self.settings
        await self.transports.start(s.sip_hosts, s.sip_port, s.sip_tls_port, tls_context)
        compiled = compiled_modules()
        if compiled:
            log.info("SIP core compiled: %d of %d modules", len(compiled), len(MODULES))
        else:
            log.info("SIP core interpreted (the compiled build: docs/performance.md)")
        # What exists now (modules, settings, pools) lives as long as the process: keep it
        # out of every future garbage collection, which then only walks request state.
        gc.freeze()
        # Every request in flight is a few dozen young objects (a task, its coroutines, the
        # parsed messages, the transactions) that a young-generation collection walks
        # again and again, every 700 allocations by default: at thousands of requests a
        # second that cost several percent of the CPU. Collect the young less often (the
        # objects of finished requests are freed by reference counting, not by this).
        threshold, *older = gc.get_threshold()
        gc.set_threshold(max(threshold, YOUNG_GC_THRESHOLD), *older)

    # -- helpers for the router, registrar and delivery ----------------------------------

    def spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def is_local(self, host: str) -> bool:
        """``host`` names this relay: a domain we serve, our public name, or an address of
        this machine (clients configure us as ``sip:127.0.0.1`` or by IP address)."""
        bare = host.lower().strip("[]").rstrip(".")
        if bare in self.local_hosts:
            return True
        try:
            address = ipaddress.ip_address(bare)
        except ValueError:
            return False
        if address not in self._address_cache:
            self._address_cache[address] = _is_own_address(address)
        return self._address_cache[address]

    def new_branch(self) -> str:
        # §8.1.1.7: unique across space and time, not secret: a random salt per process
        # and a counter (no read of the system's random source per request).
        return f"{_BRANCH_BASE}{next(_BRANCH_IDS):x}"

    def via(self, flow: Flow, branch: str) -> str:
        sent_by = self._sent_by.get(flow.transport)
        if sent_by is None:
            s = self.settings
            port = s.sip_tls_port if flow.transport == "tls" else s.sip_port
            sent_by = f"SIP/2.0/{flow.transport.upper()} {format_host(self.public_host)}:{port}"
            self._sent_by[flow.transport] = sent_by
        return f"{sent_by};branch={branch};rport"

    def flow_for(self, binding: Binding) -> Flow | None:
        """Where requests for ``binding`` go: its source address (UDP, RFC 3581), or the
        connection it registered on (TCP/TLS) when this relay still holds it."""
        if binding.transport == "udp":
            return Flow("udp", binding.source_host, binding.source_port)
        if (
            binding.relay_instance != self.relay_instance
            or binding.connection_id is None
            or not self.transports.has_connection(binding.connection_id)
        ):
            return None
        return Flow(
            binding.transport, binding.source_host, binding.source_port, binding.connection_id
        )

    # -- callbacks from the layers --------------------------------------------------------

    def _on_message(self, message: SipRequest | SipResponse, flow: Flow) -> None:
        self.transactions.receive(message, flow)

    def _on_request(self, txn: ServerTxn) -> None:
        RELAY_STATS.inc_label("sip_requests", txn.request.method)
        if self.handle_request is None:
            return
        # One task per request, unnamed: naming it costs more than it tells.
        task = self.loop.create_task(self.handle_request(txn))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _on_ack(self, request: SipRequest, flow: Flow) -> None:
        if self.handle_ack is not None:
            self.handle_ack(request, flow)

    def _on_closed(self, flow: Flow) -> None:
        self.transactions.connection_closed(flow)
        if flow.connection_id is not None:
            self.spawn(self._drop_bindings(flow.connection_id), name="sip-connection-closed")

    async def _drop_bindings(self, connection_id: str) -> None:
        try:
            aors = await delete_connection_bindings(self.pool, self.relay_instance, connection_id)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:
            log.warning("cannot remove the bindings of closed connection: %s", exc)
            return
        for aor in set(aors):
            self.bindings.invalidate(aor)
        if aors:
            log.info("connection closed: removed bindings of %s", ", ".join(sorted(set(aors))))
