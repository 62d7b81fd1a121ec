"""A steady, bounded MESSAGE load through the running topology and the audit after it.

Scripted SIP UAs (``tests/relay_sip/sip_ua.py``) over UDP, each from its own loopback address
(the relay's per-source rate limit counts each one separately, as it would real users), send
numbered MESSAGEs at a fixed rate to a mix of registered users, unregistered users and a
room. Every UA answers every MESSAGE it gets with 200 and records the body.

The audit: every (message, recipient) whose message was answered 2xx/202 must have been
received or still be stored (an offline message, a queued outbound delivery or an unread room
inbox row); received more than once is a duplicate; neither is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg
import httpx

from shared.sip.headers import parse_via
from shared.sip.message import SipRequest, SipResponse
from tests.relay_sip.sip_ua import SipUA
from tests.stack.topology import API_TOKEN, Stack

PASSWORD = "load-password-1"
SEND_TIMEOUT = 4.0  # seconds a sender waits for a final answer before counting it unanswered
_hosts = itertools.count(2)


def next_loopback() -> str:
    """A fresh loopback source address, 127.0.0.2 and up (all of 127/8 is the loopback)."""
    n = next(_hosts)
    return f"127.0.{n // 250}.{n % 250 + 2}"


def api(stack: Stack) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=f"{stack.api_url}/api/v1",
        headers={"Authorization": f"Bearer {API_TOKEN}"},
        timeout=10,
    )


async def create_users(stack: Stack, names: Iterable[str], password: str = PASSWORD) -> None:
    async with api(stack) as client:
        for name in names:
            answer = await client.post("/users", json={"username": name, "password": password})
            assert answer.status_code == 201, answer.text


async def create_room(stack: Stack, room: str, owner: str, members: Iterable[str]) -> str:
    """Create ``room`` through the API with ``members`` added; its SIP URI."""
    async with api(stack) as client:
        answer = await client.post("/rooms", json={"name": room, "owner": owner})
        assert answer.status_code == 201, answer.text
        for member in members:
            added = await client.post(f"/rooms/{room}/members", json={"user": member})
            assert added.status_code == 201, added.text
    return f"sip:{room}@{stack.conference_domain}"


@dataclass
class Arrival:
    at: float
    sender: str
    body: bytes


class Peer:
    """A user's scripted UA: answers every MESSAGE with 200 and keeps what it got."""

    def __init__(
        self, stack: Stack, user: str, *, transport: str = "udp", password: str = PASSWORD
    ) -> None:
        self.stack = stack
        self.user = user
        self.ua = SipUA(
            transport,
            stack.sip,
            user,
            password,
            stack.domain,
            local_host=next_loopback() if transport == "udp" else "127.0.0.1",
        )
        self.arrivals: list[Arrival] = []
        self.arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    @property
    def aor(self) -> str:
        return f"{self.user}@{self.stack.domain}"

    async def start(self) -> Peer:
        await self.ua.start()
        self._task = asyncio.create_task(self._answer())
        return self

    async def _answer(self) -> None:
        while True:
            request = await self.ua.requests.get()
            self.ua.answer(request, 200)
            if request.method == "MESSAGE":
                sender = request.get("From") or ""
                self.arrivals.append(Arrival(time.monotonic(), sender, request.body))
                self.arrived.set()

    async def register(self, expires: int = 3600) -> None:
        answer = await self.ua.register(expires)
        assert answer.status == 200, answer

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(Exception):
            await self.ua.close()

    def bodies(self) -> list[bytes]:
        return [arrival.body for arrival in self.arrivals]


async def send_message(
    ua: SipUA, to: str, body: bytes, timeout: float = SEND_TIMEOUT
) -> SipResponse | None:
    """Send a MESSAGE, answering a digest challenge; None when no final answer came."""
    request: SipRequest = ua.build(
        "MESSAGE", to, to=to, headers=[("Content-Type", "text/plain;charset=UTF-8")], body=body
    )
    try:
        async with asyncio.timeout(timeout):
            first = await final_response(ua, request)
            if first.status not in (401, 407):
                return first
            return await final_response(ua, ua.authorize(request, first))
    except (TimeoutError, OSError):
        return None


async def final_response(ua: SipUA, request: SipRequest) -> SipResponse:
    """Send ``request``; its final response, however long it takes (the caller bounds it)."""
    branch = parse_via(request.get("Via") or "").branch or ""
    ua.send_bytes(request.to_bytes())
    while True:
        response = await ua.responses[branch].get()
        if response.status >= 200:
            return response


@dataclass
class Sent:
    seq: int
    sender: str  # AoR
    to: str  # SIP URI
    recipients: tuple[str, ...]  # the AoRs that should get it
    sent_at: float
    status: int | None = None
    answered_at: float | None = None

    @property
    def acknowledged(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


@dataclass
class Load:
    """Numbered MESSAGEs from ``senders``, round-robin over ``targets`` (URI → recipients)."""

    tag: str
    senders: list[Peer]
    targets: list[tuple[str, tuple[str, ...]]]
    rate: float = 8.0  # messages per second per sender
    sent: list[Sent] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def body(self, seq: int) -> bytes:
        return f"load {self.tag}-{seq:05d}".encode()

    async def run(self, duration: float, busy: asyncio.Event | None = None) -> None:
        """Send for ``duration`` seconds, and on while ``busy`` is set."""
        async with asyncio.TaskGroup() as group:
            for index, sender in enumerate(self.senders):
                group.create_task(self._send_from(sender, index, duration, busy))

    async def _send_from(
        self, sender: Peer, index: int, duration: float, busy: asyncio.Event | None
    ) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        targets = itertools.cycle(self.targets[index:] + self.targets[:index])
        n = 0
        while loop.time() - start < duration or (busy is not None and busy.is_set()):
            to, recipients = next(targets)
            recipients = tuple(r for r in recipients if r.lower() != sender.aor.lower())
            seq = next(self._seq)
            sent = Sent(seq, sender.aor, to, recipients, time.monotonic())
            self.sent.append(sent)
            answer = await send_message(sender.ua, to, self.body(seq))
            sent.answered_at = time.monotonic()
            sent.status = answer.status if answer is not None else None
            n += 1
            delay = start + n / self.rate - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)


@dataclass
class Audit:
    sent: int
    acknowledged: int
    statuses: dict[str, int]
    expected: int  # (message, recipient) pairs owed a delivery
    delivered: int
    stored: int
    stored_rows: dict[str, int]  # rows holding them, by table and state
    duplicated: int
    #: Received, but the delivery is still marked 'sending' (its relay died before writing
    #: the outcome): sent again once the lease runs out — the documented crash window.
    resend_pending: int
    lost: int
    delivered_unacknowledged: int
    out_of_order: int  # stored messages delivered out of storage order
    lost_units: list[tuple[int, str]]

    def counts(self) -> dict[str, object]:
        return {k: v for k, v in self.__dict__.items() if k != "lost_units"}


class Auditor:
    def __init__(self, stack: Stack, load: Load, peers: Iterable[Peer]) -> None:
        self.stack = stack
        self.load = load
        self.peers = {peer.aor.lower(): peer for peer in peers}
        self.pattern = re.compile(rf"load {re.escape(load.tag)}-(\d{{5}})".encode())

    def received(self) -> Counter[tuple[int, str]]:
        got: Counter[tuple[int, str]] = Counter()
        for aor, peer in self.peers.items():
            for body in peer.bodies():
                for match in self.pattern.finditer(body):
                    got[(int(match.group(1)), aor)] += 1
        return got

    def owed(self) -> set[tuple[int, str]]:
        return {
            (sent.seq, recipient.lower())
            for sent in self.load.sent
            if sent.acknowledged
            for recipient in sent.recipients
        }

    async def stored(
        self,
    ) -> tuple[set[tuple[int, str]], set[tuple[int, str]], Counter[str]]:
        """(message, recipient) pairs still held by the store or the queues, those of them
        in deliveries left 'sending' (sent again after the relay's lease), rows by place."""
        conn = await asyncpg.connect(self.stack.database_url)
        try:
            rows = await conn.fetch(
                """SELECT lower(recipient) AS who, body, 'offline ' || state AS place
                     FROM offline_messages WHERE position($1::bytea IN body) > 0
                   UNION ALL
                   SELECT lower(r.aor), o.body, 'outbound ' || o.status
                     FROM outbound_messages o,  -- a fan-out row: its recipients not done
                          unnest(coalesce(o.recipients, ARRAY[o.to_aor])) AS r(aor)
                    WHERE o.status IN ('queued', 'sending')
                      AND position($1::bytea IN o.body) > 0
                      AND r.aor <> ALL(o.recipients_done)
                   UNION ALL
                   SELECT '*', body, 'room inbox' FROM room_inbox
                    WHERE position($1::bytea IN body) > 0""",
                f"load {self.load.tag}-".encode(),
            )
        finally:
            await conn.close()
        held: set[tuple[int, str]] = set()
        sending: set[tuple[int, str]] = set()
        places = Counter(str(row["place"]) for row in rows)
        by_seq = {sent.seq: sent for sent in self.load.sent}
        for row in rows:
            for match in self.pattern.finditer(bytes(row["body"])):
                seq = int(match.group(1))
                if row["who"] == "*":  # not fanned out yet: held for every recipient
                    held.update((seq, r.lower()) for r in by_seq[seq].recipients)
                else:
                    held.add((seq, row["who"]))
                    if row["place"] == "outbound sending":
                        sending.add((seq, row["who"]))
        return held, sending, places

    async def settle(self, timeout: float = 30.0, quiet: float = 3.0) -> None:
        """Wait until everything owed arrived, or nothing more arrived for ``quiet`` seconds
        (what is left is then for the audit to find in the store)."""
        deadline = time.monotonic() + timeout
        last, changed = -1, time.monotonic()
        while time.monotonic() < deadline:
            got = self.received()
            owed = self.owed()
            if owed <= set(got):
                return
            if len(got) != last:
                last, changed = len(got), time.monotonic()
            elif time.monotonic() - changed > quiet:
                return
            await asyncio.sleep(0.1)

    def out_of_order(self) -> int:
        """Messages delivered from the offline store before an earlier stored one (per
        sender and recipient). A copy received again (a duplicate of the crash window,
        counted as such) is not a reordering: only first receipts count."""
        bad = 0
        by_sender = {sent.seq: sent.sender for sent in self.load.sent}
        for aor, peer in self.peers.items():
            last: dict[str, int] = defaultdict(lambda: -1)
            seen: set[int] = set()
            for body in peer.bodies():
                if not body.startswith(b"[Offline message"):
                    continue
                for match in self.pattern.finditer(body):
                    seq = int(match.group(1))
                    if seq in seen:
                        continue
                    seen.add(seq)
                    key = by_sender[seq]
                    if seq < last[key]:
                        bad += 1
                    last[key] = max(last[key], seq)
            del aor
        return bad

    async def audit(self) -> Audit:
        got = self.received()
        owed = self.owed()
        held, sending, places = await self.stored()
        delivered = {unit for unit in owed if got[unit] >= 1}
        stored = {unit for unit in owed - delivered if unit in held}
        lost = sorted(owed - delivered - stored)
        acked_seqs = {sent.seq for sent in self.load.sent if sent.acknowledged}
        statuses = Counter(str(sent.status) for sent in self.load.sent)
        return Audit(
            sent=len(self.load.sent),
            acknowledged=len(acked_seqs),
            statuses=dict(statuses),
            expected=len(owed),
            delivered=len(delivered),
            stored=len(stored),
            stored_rows=dict(places),
            duplicated=sum(count - 1 for unit, count in got.items() if count > 1),
            resend_pending=len(delivered & sending),
            lost=len(lost),
            delivered_unacknowledged=len({seq for seq, _ in got if seq not in acked_seqs}),
            out_of_order=self.out_of_order(),
            lost_units=lost,
        )
