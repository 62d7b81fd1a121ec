"""Record: an immutable value class that the compiled build makes native.

A frozen dataclass's ``__init__``, ``__eq__`` and ``__hash__`` are generated as Python
source when its module is imported, so they run interpreted even in the compiled build
(``shared/compiled.py``): mypyc builds one in about 800 ns, a class of its own in about
40 ns. The values the SIP edge makes for every request (its flows, Vias, name-addrs,
credentials, transaction events) are Records instead.

A Record behaves as the frozen dataclass it replaces: equal to another of the same class
with equal fields, hashable by them, printed as ``Name(field=value, ...)``. A subclass
lists its field names in ``_fields`` and assigns them in its own ``__init__`` as ``Final``
attributes (mypy then refuses any later assignment, as a frozen dataclass refuses it at run
time). It overrides ``_key()`` where a field is not compared (``field(compare=False)``), or
to return its fields directly where it is hashed on every request (a dictionary key).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = ["Record"]


class Record:
    __slots__ = ()

    #: The field names, in order.
    _fields: ClassVar[tuple[str, ...]] = ()

    def _key(self) -> tuple[object, ...]:
        """The values that make two Records of the same class equal."""
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        assert isinstance(other, Record)
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({shown})"
