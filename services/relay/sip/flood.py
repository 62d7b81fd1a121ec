"""Flood protection for the SIP edge: a per-source request rate limit (Kamailio's ``pike``).

Each source address gets a fixed window of ``window`` seconds that starts with its first
request; past ``limit`` requests in it, the source is over the limit until the window
ends. The transport layer answers such requests 503 + Retry-After on TCP/TLS and drops
them on UDP (answering a flood over UDP would make us a reflector). The clock is an
input, so the limiter is tested without sleeping.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Window:
    start: float
    count: int = 0
    logged: bool = False  # the "over the limit" line was written for this window


class RateLimiter:
    """``limit`` requests per ``window`` seconds per source; ``limit == 0`` disables it."""

    def __init__(self, limit: int, window: float) -> None:
        self.limit = limit
        self.window = window
        self._sources: dict[str, _Window] = {}
        self._next_sweep = 0.0

    @property
    def enabled(self) -> bool:
        return self.limit > 0

    @property
    def tracked(self) -> int:
        """Sources with a window still open (or not yet swept)."""
        return len(self._sources)

    def allow(self, source: str, now: float) -> bool:
        """Count one request from ``source``; False when it is over the limit."""
        if self.limit <= 0:
            return True
        if now >= self._next_sweep:
            self._sweep(now)
        entry = self._sources.get(source)
        if entry is None or now - entry.start >= self.window:
            entry = self._sources[source] = _Window(now)
        entry.count += 1
        if entry.count <= self.limit:
            return True
        if not entry.logged:
            # Once per source and window, not once per packet: a flood must not flood the log.
            entry.logged = True
            log.warning(
                "SIP rate limit: %s sent more than %d requests in %g s; refusing it for %d s",
                source,
                self.limit,
                self.window,
                self.retry_after(source, now),
            )
        return False

    def blocked(self, source: str, now: float) -> bool:
        """``source`` is over the limit now (nothing counted): a cheap check before parsing."""
        entry = self._sources.get(source)
        return entry is not None and entry.count > self.limit and now - entry.start < self.window

    def retry_after(self, source: str, now: float) -> int:
        """Whole seconds until ``source``'s window ends (at least 1), for Retry-After."""
        entry = self._sources.get(source)
        if entry is None:
            return 1
        return max(1, math.ceil(entry.start + self.window - now))

    def _sweep(self, now: float) -> None:
        # Forget the sources whose window has ended, once per window: memory stays
        # proportional to the sources seen in the last window.
        self._sources = {
            source: entry
            for source, entry in self._sources.items()
            if now - entry.start < self.window
        }
        self._next_sweep = now + self.window
