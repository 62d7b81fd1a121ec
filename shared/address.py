"""A user's address, ``user@domain``: who a request is from or for, and the key the relay's
caches hold credentials, bindings and mailboxes by (a Record, so that the compiled build
makes, hashes and compares it natively; ``shared/record.py``)."""

from __future__ import annotations

from typing import Final

from shared.record import Record

__all__ = ["Address"]


class Address(Record):
    _fields = ("username", "domain")

    def __init__(self, username: str, domain: str) -> None:
        self.username: Final = username
        self.domain: Final = domain

    def _key(self) -> tuple[object, ...]:
        return (self.username, self.domain)

    def __str__(self) -> str:
        return f"{self.username}@{self.domain}"
