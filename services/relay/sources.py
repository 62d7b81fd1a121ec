"""Connections held per source address, capped (security review G11): one address cannot take
every connection slot of a listener and lock everyone else out.

The count is of connections others opened to us (inbound); the relay's own outgoing
connections are not counted. Reaching the cap is logged once per episode (a warning when a
source reaches it, nothing for each refusal after that, an info line when it has room again),
so a flood of refused connections does not flood the log."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class SourceLimit:
    def __init__(self, limit: int, what: str, setting: str) -> None:
        self.limit = limit  # 0: no limit
        self.what = what  # "MSRP", "SIP"
        self.setting = setting  # the setting that raises the limit, for the log line
        self.held: dict[str, int] = {}
        self.capped: set[str] = set()

    def admit(self, source: str) -> bool:
        """Count a new connection from ``source``; False (not counted) when the source holds
        ``limit`` already: the caller closes the connection."""
        held = self.held.get(source, 0)
        if self.limit and held >= self.limit:
            if source not in self.capped:
                self.capped.add(source)
                log.warning(
                    "%s: %s holds %d connections, the most one address may (%s); "
                    "refusing more from it",
                    self.what,
                    source,
                    held,
                    self.setting,
                )
            return False
        self.held[source] = held + 1
        return True

    def release(self, source: str) -> None:
        """A connection counted by :meth:`admit` has closed."""
        held = self.held.get(source, 0) - 1
        if held > 0:
            self.held[source] = held
        else:
            self.held.pop(source, None)
        if source in self.capped and held < self.limit:
            self.capped.discard(source)
            log.info("%s: %s is below the connection limit again", self.what, source)
