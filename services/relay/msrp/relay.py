"""The relay core: AUTH (RFC 4976 §5), request routing and forwarding (§7), transactions,
failure REPORTs (RFC 4975 §7.1.2).

A request is routed when its head arrives and its body streams on to the next hop as it
comes in; nothing holds a whole message. SEND and other methods travel downstream as new
transactions; only responses to transactions this relay sent on that very connection are
accepted, everything else is dropped.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import lru_cache

import asyncpg

from services.relay.guesses import GuessGuard
from services.relay.msrp.auth import MsrpAuthenticator
from services.relay.msrp.connection import MsrpConnection, OutFrame
from services.relay.msrp.sessions import RelaySession, SessionTable, same_endpoint
from services.relay.sources import SourceLimit
from shared.config import Settings
from shared.msrp import (
    BodyData,
    ByteRange,
    Continuation,
    EndOfMessage,
    Event,
    MsrpUri,
    RemoteProtocolError,
    RequestHead,
    ResponseHead,
    WholeMessage,
    make_response,
    new_transaction_id,
    serialize_end_line,
    serialize_head,
)

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 5.0  # seconds between session-expiry / idle-connection sweeps


@dataclass
class MsrpStats:
    connections_open: int = 0
    connections_total: int = 0
    connections_refused: int = 0
    auth_ok: int = 0
    auth_failed: int = 0
    requests_relayed: int = 0
    bytes_relayed: int = 0
    reports_sent: int = 0
    responses_dropped: int = 0
    rejects: Counter[int] = field(default_factory=Counter)


class Reject(Exception):
    """Refuse the current request with ``status`` (answered unless it is a REPORT)."""

    def __init__(self, status: int, comment: str) -> None:
        super().__init__(f"{status} {comment}")
        self.status = status
        self.comment = comment


@dataclass(eq=False, slots=True)
class Forward:
    """A request from ``upstream`` on its way to ``downstream``."""

    upstream: MsrpConnection
    head: RequestHead  # as received
    reporter: MsrpUri  # our URI the sender addressed: From-Path of our REPORTs/responses
    downstream: MsrpConnection
    frame: OutFrame
    ended: bool = False
    dead: bool = False
    reported: bool = False


@dataclass(eq=False, slots=True)
class Pending:
    """A transaction this relay sent downstream, waiting for its response."""

    forward: Forward
    deadline: float | None = None  # set once the request is fully written


@dataclass(eq=False, slots=True)
class Discard:
    """The rest of a refused request: its body is dropped, then it is answered."""

    head: RequestHead | ResponseHead
    reject: Reject | None = None


@dataclass(eq=False, slots=True)
class AuthRequest:
    head: RequestHead


Inbound = Forward | Discard | AuthRequest


def _failure_report(head: RequestHead) -> str:
    value = (head.get_header("Failure-Report") or "yes").strip().lower()
    return value if value in ("yes", "no", "partial") else "yes"


class MsrpRelay:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool | None,
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        guard: GuessGuard | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.sessions = SessionTable()
        self.stats = MsrpStats()
        self.authenticator = MsrpAuthenticator(settings, pool, self.sessions, self.stats, guard)
        self.connections: set[MsrpConnection] = set()
        self.sources = SourceLimit(
            settings.msrp_max_connections_per_source,
            "MSRP",
            "IMSTACK_MSRP_MAX_CONNECTIONS_PER_SOURCE",
        )
        self.outbound: dict[tuple[str, str, int], MsrpConnection] = {}
        self.pending: dict[MsrpConnection, dict[str, Pending]] = {}
        self.inbound: dict[MsrpConnection, Inbound] = {}
        self.local_hosts: set[object] = {_host_key(settings.msrp_host_name), "localhost"}
        self.local_ports: set[int] = {settings.msrp_port}
        #: IMSTACK_MSRP_PEER_RELAYS: (host, port or None for any) this relay may connect to.
        self.peer_relays = frozenset(_peer(entry) for entry in settings.msrp_peer_relays)
        self.tasks: set[asyncio.Task[None]] = set()
        self.loop = asyncio.get_running_loop()
        self._progress = asyncio.Event()
        self.transaction_timeout = settings.msrp_transaction_timeout
        self._idle_waiters = 0  # wait_idle() callers: progress() only matters to them
        # While one read is being handled, connections to write to are collected here and
        # written once at the end (one write per connection, not one per frame piece).
        self._timers: asyncio.Task[None] | None = None
        self.batching = False
        self._dirty: dict[MsrpConnection, None] = {}
        # _is_self answers per URI, valid while local_hosts/local_ports keep their sizes
        # (both only grow).
        self._self_cache: dict[MsrpUri, bool] = {}
        self._self_cache_for = (0, 0)

    # -- connections --------------------------------------------------------------------

    def accepting(self) -> bool:
        return len(self.connections) < self.settings.msrp_max_connections

    def connection_opened(self, conn: MsrpConnection) -> bool:
        """A connection is up; False when its source holds too many already (the caller
        closes it)."""
        if conn.source is not None and not self.sources.admit(conn.source):
            self.stats.connections_refused += 1
            return False
        self.connections.add(conn)
        self.pending[conn] = {}
        self.stats.connections_open = len(self.connections)
        self.stats.connections_total += 1
        if conn.outbound_key is None:
            self.local_hosts.add(_host_key(conn.local[0]))
            self.local_ports.add(conn.local[1])
        return True

    def connection_closed(self, conn: MsrpConnection) -> None:
        if conn not in self.connections:
            return  # refused when it opened
        self.connections.discard(conn)
        if conn.source is not None:
            self.sources.release(conn.source)
        self.stats.connections_open = len(self.connections)
        if conn.outbound_key is not None and self.outbound.get(conn.outbound_key) is conn:
            del self.outbound[conn.outbound_key]
        dropped = self.sessions.drop_connection(conn)
        if dropped:
            log.info("%s closed; dropped %d session(s)", conn.peer, len(dropped))
        self.progress()
        state = self.inbound.pop(conn, None)
        if isinstance(state, Forward) and not state.ended:
            state.dead = True
            state.downstream.abort_frame(state.frame)
        for pending in self.pending.pop(conn, {}).values():
            self._fail(pending.forward, 408, "Session got disconnected")

    def sweep(self, now: float) -> None:
        """Expire sessions; close connections idle without a session."""
        self.sessions.purge_expired(now)
        limit = self.settings.msrp_idle_timeout
        for conn in list(self.connections):
            if (
                now - conn.last_activity > limit
                and not self.sessions.has_sessions(conn)
                and conn.idle
                and not self.pending.get(conn)
                and conn not in self.inbound
            ):
                log.info("%s idle for %.0fs without a session; closing", conn.peer, limit)
                conn.close()

    def start_timers(self) -> None:
        """Transaction timeouts (checked several times per timeout) and the periodic sweep."""
        self._timers = asyncio.create_task(self._run_timers(), name="msrp-timers")

    def stop_timers(self) -> None:
        if self._timers is not None:
            self._timers.cancel()
            self._timers = None

    async def _run_timers(self) -> None:
        tick = min(1.0, self.settings.msrp_transaction_timeout / 4)
        next_sweep = self.loop.time() + SWEEP_INTERVAL
        while True:
            await asyncio.sleep(tick)
            now = self.loop.time()
            self.expire_transactions(now)
            if now >= next_sweep:
                self.sweep(now)
                next_sweep = now + SWEEP_INTERVAL

    def schedule(self, conn: MsrpConnection) -> None:
        """``conn`` has something to write: now, or at the end of the current read."""
        if self.batching:
            self._dirty[conn] = None
        else:
            conn.pump()

    def flush(self) -> None:
        self.batching = False
        while self._dirty:
            dirty = list(self._dirty)
            self._dirty.clear()
            for conn in dirty:
                conn.pump()

    def progress(self) -> None:
        """Something finished (a frame written, a transaction answered, a peer gone)."""
        if self._idle_waiters:
            self._progress.set()

    async def wait_idle(self) -> None:
        """Return once nothing is in flight."""
        self._idle_waiters += 1
        try:
            while self.busy:
                self._progress.clear()
                await self._progress.wait()
        finally:
            self._idle_waiters -= 1

    @property
    def busy(self) -> bool:
        """Something is in flight: a message streaming, a transaction open."""
        return (
            any(self.inbound.values())
            or any(self.pending.values())
            or any(not conn.idle for conn in self.connections)
        )

    # -- events -------------------------------------------------------------------------

    def handle_event(self, conn: MsrpConnection, event: Event) -> None:
        # The event classes are final: type() identity is cheaper than isinstance chains.
        if type(event) is WholeMessage:
            self._whole_message(conn, event)
            return
        if type(event) is BodyData:
            state = self.inbound.get(conn)
            if type(state) is Forward and not state.dead:
                frame = state.frame
                frame.buffer += event.data
                state.downstream.frame_fed(frame)
            return
        if type(event) is EndOfMessage:
            state = self.inbound.pop(conn, None)
            if state is not None:
                self._message_ended(conn, state, event.continuation)
            self.progress()
            return
        if type(event) is ResponseHead:
            self._response(conn, event)
            self.inbound[conn] = Discard(event)
            return
        assert isinstance(event, RequestHead)
        self.inbound[conn] = self._request_head(conn, event)

    def _whole_message(self, conn: MsrpConnection, event: WholeMessage) -> None:
        """A message that arrived whole: what its head, body and end-line events would do,
        in one step."""
        head = event.head
        self.inbound.pop(conn, None)  # between messages: nothing in progress
        if type(head) is ResponseHead:
            self._response(conn, head)
        else:
            assert isinstance(head, RequestHead)
            state = self._request_head(conn, head)
            if event.body and type(state) is Forward and not state.dead:
                frame = state.frame
                frame.buffer += event.body
                state.downstream.frame_fed(frame)
            self._message_ended(conn, state, event.continuation)
        self.progress()

    def _request_head(self, conn: MsrpConnection, head: RequestHead) -> Inbound:
        """Route (or refuse) a request; what happens to its body and end-line."""
        try:
            return self._request(conn, head)
        except Reject as reject:
            self.stats.rejects[reject.status] += 1
            log.info("%s: %s %s refused: %s", conn.peer, head.method, head.transaction_id, reject)
            return Discard(head, reject)
        except RemoteProtocolError as exc:
            self.stats.rejects[400] += 1
            log.info("%s: %s %s malformed: %s", conn.peer, head.method, head.transaction_id, exc)
            return Discard(head, Reject(400, "Bad Request"))

    def protocol_error(self, conn: MsrpConnection, exc: RemoteProtocolError) -> None:
        """Unparsable input: answer 400 when a transaction-id is known, then close (the
        stream cannot be resynchronised)."""
        self.stats.rejects[400] += 1
        log.warning("%s: malformed MSRP, closing the connection: %s", conn.peer, exc)
        if exc.transaction_id and conn.transport is not None and not conn.closed:
            me = self.authenticator.base_uri(conn)
            head = ResponseHead(exc.transaction_id, 400, "Bad Request", (me,), (me,))
            conn.transport.write(serialize_head(head) + serialize_end_line(exc.transaction_id))
        self.inbound.pop(conn, None)
        conn.close()

    def _message_ended(
        self, conn: MsrpConnection, state: Inbound, continuation: Continuation
    ) -> None:
        if isinstance(state, Forward):
            state.ended = True
            if not state.dead:
                state.frame.end = continuation
                state.downstream.frame_fed(state.frame)
            if (
                state.head.method == "SEND"
                and not state.dead
                and _failure_report(state.head) == "yes"
            ):
                self._answer(conn, state.head, 200, "OK", state.reporter)
        elif isinstance(state, AuthRequest):
            task = asyncio.create_task(self._auth(conn, state.head), name=f"msrp-auth-{conn.peer}")
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        elif isinstance(state.head, RequestHead) and state.reject is not None:
            fr = _failure_report(state.head)
            if state.head.method == "SEND" and fr == "no":
                return
            self._answer(conn, state.head, state.reject.status, state.reject.comment, None)

    def _answer(
        self,
        conn: MsrpConnection,
        head: RequestHead,
        status: int,
        comment: str,
        responder: MsrpUri | None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        if head.method == "REPORT" or conn.closed or not head.from_path or not head.to_path:
            return
        conn.send_bytes(make_response(head, status, comment, headers=headers, from_uri=responder))

    # -- routing ------------------------------------------------------------------------

    def _is_self(self, uri: MsrpUri) -> bool:
        cache = self._self_cache
        version = (len(self.local_hosts), len(self.local_ports))
        if version != self._self_cache_for or len(cache) > 4096:
            cache.clear()
            self._self_cache_for = version
        known = cache.get(uri)
        if known is None:
            known = cache[uri] = self._check_self(uri)
        return known

    def _check_self(self, uri: MsrpUri) -> bool:
        if uri.scheme.lower() not in ("msrp", "msrps"):
            return False
        if uri.effective_port not in self.local_ports:
            return False
        return _host_key(uri.host_address) in self.local_hosts

    def _request(self, conn: MsrpConnection, head: RequestHead) -> Inbound:
        if not head.to_path or not head.from_path:
            raise Reject(400, "Missing path")
        first = head.to_path[0]
        if not self._is_self(first):
            raise Reject(403, "Not this relay")
        if head.method == "AUTH" and len(head.to_path) == 1:
            if head.has_body:
                raise Reject(400, "AUTH has no body")
            return AuthRequest(head)
        if head.method == "SEND" and head.message_id is None:
            raise Reject(400, "Missing Message-ID")
        to_path, from_path, target = self._resolve(conn, head)
        return self._forward(conn, head, first, to_path, from_path, target)

    def _resolve(
        self, conn: MsrpConnection, head: RequestHead
    ) -> tuple[tuple[MsrpUri, ...], tuple[MsrpUri, ...], MsrpConnection]:
        """Consume this relay's URIs at the front of To-Path (RFC 4976 §7.2) and find the
        connection to the next hop."""
        to_path, from_path = head.to_path, head.from_path
        came_from: MsrpConnection | None = conn
        now = self.loop.time()
        while True:
            first = to_path[0]
            session = self.sessions.get(first.session_id, now)
            if session is None:
                raise Reject(481, "Session does not exist")
            rest = to_path[1:]
            if not rest:
                raise Reject(400, "Nowhere to forward")
            from_path = (first, *from_path)
            if came_from is session.conn:
                # From the client that AUTHed this session, on its own connection.
                if not same_endpoint(head.from_path[-1], session.client_uri):
                    raise Reject(403, "From-Path does not match the session")
            else:
                # Towards the client of this session: only its own URI may follow.
                if len(rest) != 1 or not same_endpoint(rest[0], session.client_uri):
                    if came_from is not None and same_endpoint(
                        head.from_path[-1], session.client_uri
                    ):
                        raise Reject(506, "Session already in use")
                    raise Reject(403, "To-Path does not match the session")
                return rest, from_path, session.conn
            to_path = rest
            if self._is_self(to_path[0]) and to_path[0].session_id is not None:
                came_from = None  # both ends on this relay: route on without a network hop
                continue
            if not self._is_peer(to_path[0]):
                # Neither a session of ours nor a configured peer relay: never open a
                # connection to wherever a client names (RFC 4975 403 Action-not-allowed).
                raise Reject(403, "Next hop is not a peer relay")
            return to_path, from_path, self._connection_to(to_path[0])

    def _is_peer(self, uri: MsrpUri) -> bool:
        host = _host_key(uri.host_address)
        return (host, None) in self.peer_relays or (host, uri.effective_port) in self.peer_relays

    def _connection_to(self, uri: MsrpUri) -> MsrpConnection:
        """A connection to another relay or an endpoint without a session here: reused per
        authority, opened on first use (msrps → TLS)."""
        scheme = uri.scheme.lower()
        key = (scheme, str(_host_key(uri.host_address)), uri.effective_port)
        conn = self.outbound.get(key)
        if conn is not None and not conn.closed:
            return conn
        secure = scheme == "msrps"
        conn = MsrpConnection(self, secure=secure, outbound_key=key)
        self.outbound[key] = conn
        self.pending[conn] = {}
        task = asyncio.create_task(self._connect(conn, uri), name=f"msrp-connect-{key}")
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return conn

    async def _connect(self, conn: MsrpConnection, uri: MsrpUri) -> None:
        ssl_context = (self.client_ssl or ssl.create_default_context()) if conn.secure else None
        try:
            async with asyncio.timeout(self.settings.msrp_transaction_timeout):
                await self.loop.create_connection(
                    lambda: conn,
                    uri.host_address,
                    uri.effective_port,
                    ssl=ssl_context,
                    server_hostname=uri.host_address if ssl_context else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            log.warning("cannot connect to %s: %s", uri.authority, exc)
            if self.outbound.get(conn.outbound_key or ("", "", 0)) is conn:
                del self.outbound[conn.outbound_key or ("", "", 0)]
            conn.closed = True
            for pending in self.pending.pop(conn, {}).values():
                self._fail(pending.forward, 408, "Next hop unreachable")

    def _forward(
        self,
        conn: MsrpConnection,
        head: RequestHead,
        reporter: MsrpUri,
        to_path: tuple[MsrpUri, ...],
        from_path: tuple[MsrpUri, ...],
        target: MsrpConnection,
    ) -> Forward:
        if target.closed:
            raise Reject(481, "Session does not exist")
        # REPORTs get no response, so they keep their transaction-id.
        tid = head.transaction_id if head.method == "REPORT" else new_transaction_id()
        out_head = RequestHead(tid, head.method, to_path, from_path, head.headers, head.has_body)
        tracked = head.method != "REPORT"
        frame = OutFrame(out_head, source=conn, tracked=tracked)
        forward = Forward(conn, head, reporter, target, frame)
        if tracked:
            self.pending.setdefault(target, {})[tid] = Pending(forward)
        self.stats.requests_relayed += 1
        target.send_frame(frame)
        return forward

    def frame_split(self, conn: MsrpConnection, old: OutFrame, rest: OutFrame) -> None:
        """The scheduler interrupted ``old``; its rest goes out as a new transaction."""
        pending = self.pending.get(conn, {}).get(old.transaction_id)
        if pending is not None:
            pending.forward.frame = rest
            self.pending[conn][rest.transaction_id] = Pending(pending.forward)

    def frame_sent(self, conn: MsrpConnection, frame: OutFrame) -> None:
        """A request is fully written: its response is due within the transaction timeout."""
        waiting = self.pending.get(conn)
        tid = frame.head.transaction_id
        pending = None if waiting is None else waiting.get(tid)
        if pending is not None:
            pending.deadline = self.loop.time() + self.transaction_timeout

    def expire_transactions(self, now: float) -> None:
        """Fail transactions whose next hop did not answer in time (408 REPORT upstream),
        oldest deadline first. Only transactions still waiting are in ``self.pending`` (an
        answer removes its entry), so a tick scans what is in flight, not every transaction
        of the last timeout period."""
        expired = [
            (pending.deadline, conn, tid)
            for conn, waiting in self.pending.items()
            for tid, pending in waiting.items()
            if pending.deadline is not None and pending.deadline <= now
        ]
        expired.sort(key=lambda item: item[0])
        for _, conn, tid in expired:
            self._timeout(conn, tid)

    def _timeout(self, conn: MsrpConnection, tid: str) -> None:
        pending = self.pending.get(conn, {}).pop(tid, None)
        if pending is not None:
            self.progress()
            log.info("%s: no response to %s in time", conn.peer, tid)
            self._fail(pending.forward, 408, "Request Timeout")

    def _response(self, conn: MsrpConnection, head: ResponseHead) -> None:
        pending = self.pending.get(conn, {}).pop(head.transaction_id, None)
        if pending is None:
            # Never forward a response we did not ask for (Kamailio does: forged 200s).
            self.stats.responses_dropped += 1
            log.debug("%s: dropped unmatched response %s", conn.peer, head.transaction_id)
            return
        self.progress()
        forward = pending.forward
        if forward.head.method == "SEND":
            if head.status != 200:
                if not forward.ended:
                    forward.dead = True
                    forward.upstream.resume_for(forward.frame)
                self._fail(forward, head.status, head.comment or "")
            return
        # End-to-end response (AUTH onward, extensions): route it back the way it came.
        to_path, from_path = head.to_path, head.from_path
        while to_path and self._is_self(to_path[0]) and to_path[0].session_id:
            from_path = (to_path[0], *from_path)
            to_path = to_path[1:]
        if not to_path or forward.upstream.closed:
            return
        forward.upstream.send_bytes(
            replace(
                head,
                transaction_id=forward.head.transaction_id,
                to_path=to_path,
                from_path=from_path,
            )
        )

    def _fail(self, forward: Forward, status: int, comment: str) -> None:
        """The next hop refused or never answered: tell the sender (RFC 4975 §7.1.2)."""
        forward.dead = forward.dead or not forward.ended
        upstream = forward.upstream
        if upstream.closed or forward.reported:
            return
        head = forward.head
        if head.method != "SEND":
            forward.reported = True
            self._answer(upstream, head, status, comment, forward.reporter)
            return
        if _failure_report(head) == "no":
            return
        forward.reported = True
        try:
            byte_range = head.byte_range or ByteRange.default()
        except RemoteProtocolError:  # relays pass Byte-Range on unread (RFC 4976 §7)
            byte_range = ByteRange.default()
        report = RequestHead(
            transaction_id=new_transaction_id(),
            method="REPORT",
            to_path=head.from_path,
            from_path=(forward.reporter,),
            headers=(
                ("Message-ID", head.message_id or ""),
                ("Byte-Range", str(byte_range)),
                ("Status", f"000 {status:03d} {comment}".rstrip()),
            ),
        )
        self.stats.reports_sent += 1
        upstream.send_bytes(report)

    # -- AUTH (RFC 4976 §5) -------------------------------------------------------------

    async def _auth(self, conn: MsrpConnection, head: RequestHead) -> None:
        transport = conn.transport
        if transport is None or conn.closed:
            return
        transport.pause_reading()  # one AUTH at a time; later requests wait for its answer
        try:
            status, comment, headers = await self.authenticator.check(conn, head)
        finally:
            if not conn.closed and not conn.reading_paused:
                transport.resume_reading()
        if status != 200:
            self.stats.rejects[status] += 1
        self._answer(conn, head, status, comment, head.to_path[0], headers)
        if conn.auth_failures >= self.settings.msrp_max_auth_failures:
            log.warning("%s: %d failed AUTH attempts; closing", conn.peer, conn.auth_failures)
            conn.close()

    def session_list(self) -> list[RelaySession]:
        return list(self.sessions)


def _peer(entry: str) -> tuple[object, int | None]:
    """One IMSTACK_MSRP_PEER_RELAYS entry: ``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    entry = entry.strip()
    host, port = entry, None
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            port = int(rest[1:])
    elif entry.count(":") == 1:
        name, _, number = entry.partition(":")
        if number.isdigit():
            host, port = name, int(number)
    return _host_key(host), port


@lru_cache(maxsize=4096)
def _host_key(host: str) -> object:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host.lower().rstrip(".")
