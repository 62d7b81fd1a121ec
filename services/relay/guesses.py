"""Password guessing brake (security review G8), shared by SIP and MSRP in one relay.

Failed password checks are counted per (user, source address). After
``IMSTACK_AUTH_MAX_FAILURES`` failures within ``IMSTACK_AUTH_BLOCK_SECONDS``, that user's
credentials from that address are not checked any more for a while: the request is refused
(SIP 403, MSRP 403) without looking at the password, so the guesses stop telling the guesser
anything. The block lasts ``IMSTACK_AUTH_BLOCK_SECONDS`` and doubles each time it is earned
again (at most an hour); a successful check clears the pair. Blocking per address, not per
user, means a guesser cannot lock the real user out from elsewhere. Each block is logged as one
warning naming the user and the address; so is a user whose failures from all addresses
together pass ten times the limit within the window (a guess spread over many addresses).

Sans-IO: the caller passes the time (a monotonic clock).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

MAX_BLOCK = 3600.0  # seconds: the longest block, however often it is earned
MAX_RECORDS = 100_000  # (user, source) pairs remembered before stale ones are dropped


@dataclass(slots=True)
class _Record:
    failures: int = 0
    since: float = 0.0  # the window's start
    blocked_until: float = 0.0
    blocks: int = 0  # blocks earned so far: each doubles the next


class GuessGuard:
    def __init__(self, max_failures: int, block_seconds: float) -> None:
        self.max_failures = max_failures  # 0: no brake
        self.block_seconds = block_seconds
        self.pairs: dict[tuple[str, str], _Record] = {}
        self.users: dict[str, _Record] = {}  # per user, all sources: for the warning only

    def blocked(self, user: str, source: str, now: float) -> float:
        """Seconds left of a block on ``user`` from ``source`` (0: go ahead and check)."""
        if not self.pairs:  # the common case, asked on every authenticated request
            return 0.0
        record = self.pairs.get((user.lower(), source))
        if record is None or record.blocked_until <= now:
            return 0.0
        return record.blocked_until - now

    def failed(self, user: str, source: str, now: float, what: str) -> None:
        """A wrong password for ``user`` from ``source`` (``what``: "SIP", "MSRP")."""
        if not self.max_failures:
            return
        user = user.lower()
        if len(self.pairs) >= MAX_RECORDS:
            self._forget_stale(now)
        record = self.pairs.setdefault((user, source), _Record(since=now))
        if self._count(record, now) >= self.max_failures:
            block = min(self.block_seconds * 2**record.blocks, MAX_BLOCK)
            record.blocks += 1
            record.blocked_until = now + block
            record.failures, record.since = 0, now + block
            log.warning(
                "%s: %d failed password checks for %s from %s; not checking its credentials "
                "from there for %.0f s (IMSTACK_AUTH_MAX_FAILURES)",
                what,
                self.max_failures,
                user,
                source,
                block,
            )
        spread = self.users.setdefault(user, _Record(since=now))
        if self._count(spread, now) == 10 * self.max_failures:
            log.warning(
                "%s: %d failed password checks for %s within %.0f s, from several addresses",
                what,
                spread.failures,
                user,
                self.block_seconds,
            )

    def succeeded(self, user: str, source: str) -> None:
        if self.pairs:
            self.pairs.pop((user.lower(), source), None)

    def _count(self, record: _Record, now: float) -> int:
        if now - record.since > self.block_seconds:
            record.failures, record.since = 0, now
        record.failures += 1
        return record.failures

    def _forget_stale(self, now: float) -> None:
        """Drop what no longer matters (nothing for an hour); if the table is still full,
        every pair that is not blocked."""

        def stale(record: _Record) -> bool:
            return max(record.since, record.blocked_until) < now - MAX_BLOCK

        self.pairs = {k: r for k, r in self.pairs.items() if not stale(r)}
        self.users = {k: r for k, r in self.users.items() if not stale(r)}
        if len(self.pairs) >= MAX_RECORDS:
            self.pairs = {k: r for k, r in self.pairs.items() if r.blocked_until > now}
        if len(self.users) >= MAX_RECORDS:
            self.users.clear()
