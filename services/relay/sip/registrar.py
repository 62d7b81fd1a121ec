"""The registrar (RFC 3261 §10.3): digest-authenticated REGISTER into ``locations``.

One REGISTER is applied in one database transaction, serialised per AoR, so concurrent
registrations of the same user from several relays never interleave. The usual one — a
client refreshing the one binding it has — is a single statement instead (one round trip:
update, NOTIFY and the AoR's bindings; :func:`shared.db.locations.refresh_binding`), which
the row lock serialises with any other change of that binding; anything it cannot decide
alone goes the long way. Refreshes of different AoRs that arrive together share that one
statement (:class:`RefreshBatcher`: one round trip for the lot while the previous one is
under way), which is what a registrar under load mostly does. The 200 lists every current
binding with its remaining lifetime. A registration that adds or refreshes a binding
NOTIFYs ``registered`` with the AoR (``user@domain``) when it commits; the offline store
delivers waiting messages on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from email.utils import formatdate

import asyncpg

from services.relay.sip.auth import Authenticated
from services.relay.sip.edge import SipEdge
from services.relay.sip.transactions import ServerTxn
from services.relay.sip.transport import Flow
from shared.db.listen import notify
from shared.db.locations import (
    Binding,
    NewBinding,
    delete_bindings,
    get_bindings,
    lock_aor,
    refresh_binding,
    refresh_bindings,
    upsert_binding,
)
from shared.db.types import Connection
from shared.sip.headers import (
    Contact,
    format_params,
    make_response,
    parse_contact,
    parse_cseq,
    parse_name_addr,
)
from shared.sip.message import SipRequest, SipResponse
from shared.sip.uri import SipUri, UriError, parse_sip_uri

log = logging.getLogger(__name__)

_date_cache: tuple[int, str] = (0, "")


def _date() -> str:
    """The Date header value (RFC 1123), formatted once per second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, formatdate(now, usegmt=True))
    return _date_cache[1]


#: NOTIFY channel (and event type) of a successful registration; the payload id is the AoR.
REGISTERED_CHANNEL = "registered"


class Refuse(Exception):
    """Answer the REGISTER with ``status`` (and headers) and change nothing."""

    def __init__(
        self, status: int, reason: str | None = None, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(f"{status} {reason or ''}")
        self.status = status
        self.reason = reason
        self.headers = headers or []


@dataclass(frozen=True)
class _Update:
    contact: Contact
    uri: SipUri
    text: str  # the URI as the UA wrote it
    expires: int  # seconds granted; 0 removes


def _same_contact(stored: str, uri: SipUri) -> bool:
    """§10.3 step 7: bindings are matched with the §19.1.4 URI comparison."""
    try:
        return parse_sip_uri(stored).equivalent_to(uri)
    except UriError:
        return stored == str(uri)


#: Errors a statement gets for what one of its rows holds, not for the database's state.
_ROW_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError)


class RefreshBatcher:
    """Refreshes of single bindings (:func:`refresh_binding`), gathered into one statement
    (:func:`refresh_bindings`) per batch. A batch starts at once when no other is under
    way (after the requests of the same loop iteration have joined it), otherwise when the
    one under way ends; a second refresh of an AoR already waiting goes alone. A batch the
    database refuses as a whole for what one row holds (a data error) is retried one
    refresh at a time, so that one client's bad REGISTER fails no other."""

    MAX_BATCH = 200

    def __init__(self, pool: asyncpg.Pool, *, max_contacts: int, channel: str) -> None:
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.max_contacts = max_contacts
        self.channel = channel
        self._waiting: dict[str, tuple[NewBinding, str, asyncio.Future[list[Binding]]]] = {}
        self._running = False  # a batch is being sent, or is about to be
        self.batches = 0  # statements sent (for tests and statistics)

    async def refresh(self, new: NewBinding, payload: str) -> list[Binding]:
        if new.aor in self._waiting or len(self._waiting) >= self.MAX_BATCH:
            return await self._alone(new, payload)
        future: asyncio.Future[list[Binding]] = self.loop.create_future()
        self._waiting[new.aor] = (new, payload, future)
        if not self._running:
            self._running = True
            self.loop.call_soon(self._start)
        return await future

    async def _alone(self, new: NewBinding, payload: str) -> list[Binding]:
        return await refresh_binding(
            self.pool, new, max_contacts=self.max_contacts, channel=self.channel, payload=payload
        )

    def _start(self) -> None:
        batch, self._waiting = list(self._waiting.values()), {}
        task = self.loop.create_task(self._send(batch))
        task.add_done_callback(self._sent)

    def _sent(self, _task: asyncio.Task[None]) -> None:
        if self._waiting:
            self._start()
        else:
            self._running = False

    async def _send(
        self, batch: list[tuple[NewBinding, str, asyncio.Future[list[Binding]]]]
    ) -> None:
        self.batches += 1
        try:
            if len(batch) == 1:
                new, payload, _ = batch[0]
                results = [await self._alone(new, payload)]
            else:
                results = await refresh_bindings(
                    self.pool,
                    [(new, payload) for new, payload, _ in batch],
                    max_contacts=self.max_contacts,
                    channel=self.channel,
                )
        except _ROW_ERRORS as exc:
            if len(batch) == 1:
                self._fail(batch, exc)
            else:  # what one row holds (NUL bytes...): each refresh on its own
                await asyncio.gather(*(self._retry(*item) for item in batch))
            return
        except Exception as exc:  # the database is unavailable: every refresh fails
            self._fail(batch, exc)
            return
        except BaseException:
            for _, _, future in batch:
                future.cancel()
            raise
        for (_, _, future), bindings in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(bindings)

    @staticmethod
    def _fail(
        batch: list[tuple[NewBinding, str, asyncio.Future[list[Binding]]]], exc: Exception
    ) -> None:
        for _, _, future in batch:
            if not future.done():
                future.set_exception(exc)

    async def _retry(
        self, new: NewBinding, payload: str, future: asyncio.Future[list[Binding]]
    ) -> None:
        try:
            bindings = await self._alone(new, payload)
        except Exception as exc:
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(bindings)


class Registrar:
    def __init__(self, edge: SipEdge) -> None:
        self.edge = edge
        self.settings = edge.settings
        self.refreshes = RefreshBatcher(
            edge.pool, max_contacts=edge.settings.registrar_max_contacts, channel=REGISTERED_CHANNEL
        )

    async def register(self, txn: ServerTxn) -> SipResponse:
        request = txn.request
        try:
            return await self._register(txn)
        except Refuse as refuse:
            return make_response(request, refuse.status, refuse.reason, headers=refuse.headers)

    async def _register(self, txn: ServerTxn) -> SipResponse:
        request, flow, s = txn.request, txn.source, self.settings
        # §10.3 step 1: we are the registrar for our domain only (no open forwarding).
        try:
            request_uri = parse_sip_uri(request.uri)
            to_uri = parse_sip_uri(parse_name_addr(request.get("To") or "").uri)
        except ValueError:
            raise Refuse(400, "Bad URI") from None
        if not self.edge.is_local(request_uri.host):
            raise Refuse(403, "Not Our Domain")
        if to_uri.host.lower() != s.domain or not to_uri.user:
            raise Refuse(404, "Not Our User")
        expires_header = request.get("Expires")
        if expires_header is not None and not expires_header.strip().isdigit():
            raise Refuse(400, "Bad Expires")
        try:
            contacts = [parse_contact(value) for value in request.get_all("Contact")]
        except ValueError:
            raise Refuse(400, "Bad Contact") from None
        # §10.3 step 3 and 4: authenticate, then the user may only register its own AoR.
        result = await self.edge.auth.authenticate(request, flow, proxy=False)
        if isinstance(result, SipResponse):
            return result
        if not isinstance(result, Authenticated) or result.username != to_uri.user:
            raise Refuse(403, "Wrong User")
        aor = f"{to_uri.user}@{s.domain}"
        call_id = request.get("Call-ID") or ""
        cseq = parse_cseq(request.get("CSeq") or "").seq
        star = any(c.is_star for c in contacts)
        if star and (len(contacts) != 1 or expires_header is None or int(expires_header) != 0):
            # §10.3 step 6: "*" only alone and with Expires: 0.
            raise Refuse(400, "Bad Wildcard Contact")
        updates = [] if star else self._updates(contacts, expires_header)

        bindings = []
        if len(updates) == 1 and updates[0].expires > 0:
            # The common case, a client refreshing its one binding: one round trip.
            bindings = await self.refreshes.refresh(
                self._new_binding(aor, updates[0], updates[0].text, call_id, cseq, request, flow),
                # What shared.db.listen.notify sends: {"type": ..., "id": aor}.
                f'{{"type": "{REGISTERED_CHANNEL}", "id": {json.dumps(aor)}}}',
            )
        if bindings:
            self.edge.bindings.invalidate(aor)
            # A refresh changes nothing worth a line per client every few minutes (a new
            # binding, a removal, a refusal is logged at INFO).
            log.debug("REGISTER %s from %s: refreshed, %d binding(s)", aor, flow, len(bindings))
            return self._ok(request, bindings)
        async with self.edge.pool.acquire() as conn, conn.transaction():
            await lock_aor(conn, aor)
            existing = await get_bindings(conn, aor)
            if star:
                for binding in existing:
                    self._check_order(binding, call_id, cseq)
                await delete_bindings(conn, [b.id for b in existing])
            else:
                await self._apply(conn, aor, existing, updates, call_id, cseq, request, flow)
            bindings = await get_bindings(conn, aor)
            added = any(u.expires > 0 for u in updates)
            if added:
                await notify(conn, REGISTERED_CHANNEL, REGISTERED_CHANNEL, aor)
        self.edge.bindings.invalidate(aor)  # committed: routing reads the new bindings
        log.info(
            "REGISTER %s from %s: %d binding(s)%s",
            aor,
            flow,
            len(bindings),
            " (removed all)" if star else "",
        )
        return self._ok(request, bindings)

    def _ok(self, request: SipRequest, bindings: list[Binding]) -> SipResponse:
        """The 200 listing every current binding (§10.3 step 8)."""
        return make_response(
            request,
            200,
            headers=[*(("Contact", self._contact_value(b)) for b in bindings), ("Date", _date())],
        )

    def _new_binding(
        self,
        aor: str,
        update: _Update,
        contact: str,
        call_id: str,
        cseq: int,
        request: SipRequest,
        flow: Flow,
    ) -> NewBinding:
        return NewBinding(
            aor=aor,
            contact=contact,
            transport=flow.transport,
            source_host=flow.host,
            source_port=flow.port,
            relay_instance=self.edge.relay_instance,
            connection_id=flow.connection_id,
            q=update.contact.q if update.contact.q is not None else 1.0,
            instance_id=update.contact.instance,
            user_agent=request.get("User-Agent"),
            call_id=call_id,
            cseq=cseq,
            expires=update.expires,
        )

    def _updates(self, contacts: list[Contact], expires_header: str | None) -> list[_Update]:
        s = self.settings
        updates: list[_Update] = []
        for contact in contacts:
            assert contact.address is not None
            try:
                uri = parse_sip_uri(contact.address.uri)
            except UriError:
                raise Refuse(400, "Bad Contact URI") from None
            # §10.3 step 6: expires parameter, else the Expires header, else our default.
            if contact.expires is not None:
                expires = contact.expires
            elif expires_header is not None:
                expires = int(expires_header)
            else:
                expires = s.registrar_default_expires
            if 0 < expires < s.registrar_min_expires:
                raise Refuse(423, headers=[("Min-Expires", str(s.registrar_min_expires))])
            updates.append(
                _Update(contact, uri, contact.address.uri, min(expires, s.registrar_max_expires))
            )
        return updates

    @staticmethod
    def _check_order(binding: Binding, call_id: str, cseq: int) -> None:
        # §10.3 step 7: same Call-ID needs a higher CSeq, else the update is aborted.
        if binding.call_id == call_id and cseq <= binding.cseq:
            raise Refuse(500, "Out of Order CSeq", [("Retry-After", "1")])

    async def _apply(
        self,
        conn: Connection,
        aor: str,
        existing: list[Binding],
        updates: list[_Update],
        call_id: str,
        cseq: int,
        request: SipRequest,
        flow: Flow,
    ) -> None:
        removals: list[int] = []
        kept = {b.id for b in existing}
        writes: list[NewBinding] = []
        new_contacts = 0
        for update in updates:
            match = next((b for b in existing if _same_contact(b.contact, update.uri)), None)
            if match is not None:
                self._check_order(match, call_id, cseq)
            if update.expires == 0:
                if match is not None:
                    removals.append(match.id)
                    kept.discard(match.id)
                continue
            if match is None:
                new_contacts += 1
            contact = match.contact if match is not None else update.text
            writes.append(self._new_binding(aor, update, contact, call_id, cseq, request, flow))
        if len(kept) + new_contacts > self.settings.registrar_max_contacts:
            raise Refuse(403, "Too Many Contacts")
        if removals:
            await delete_bindings(conn, removals)
        for new in writes:
            await upsert_binding(conn, new)

    @staticmethod
    def _contact_value(binding: Binding) -> str:
        params: list[tuple[str, str | None]] = [("expires", str(binding.expires_in))]
        if binding.q < 1.0:
            params.append(("q", f"{binding.q:.3g}"))
        if binding.instance_id is not None:
            params.append(("+sip.instance", f"<{binding.instance_id}>"))
        return f"<{binding.contact}>{format_params(tuple(params))}"
