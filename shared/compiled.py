"""Which modules the compiled build turns into C extensions, and which of them this process runs.

``setup.py`` compiles :data:`MODULES` with mypyc when ``IMSTACK_COMPILE=1`` (the Dockerfile
does; ``scripts/compile`` builds a copy of a checkout): the same source, with the same
behaviour, for less CPU per SIP request (``docs/performance.md``). A plain ``pip install`` runs
them interpreted. The relay says at start which it is.
"""

from __future__ import annotations

import importlib

#: The modules every relayed SIP request runs through.
MODULES = (
    "shared.address",
    "shared.digest",
    "shared.record",
    "shared.sip.errors",
    "shared.sip.headers",
    "shared.sip.message",
    "shared.sip.parser",
    "shared.sip.status",
    "shared.sip.transaction",
    "shared.sip.uri",
    "shared.stats",
    "services.relay.guesses",
    "services.relay.sip.auth",
    "services.relay.sip.caches",
    "services.relay.sip.delivery",
    "services.relay.sip.edge",
    "services.relay.sip.flood",
    "services.relay.sip.handover",
    "services.relay.sip.proxy",
    "services.relay.sip.record_route",
    "services.relay.sip.registrar",
    "services.relay.sip.router",
    "services.relay.sip.transactions",
    "services.relay.sip.transport",
)


def compiled_modules() -> list[str]:
    """The modules of :data:`MODULES` that this interpreter imports as C extensions."""
    found = []
    for name in MODULES:
        path = getattr(importlib.import_module(name), "__file__", None) or ""
        if not path.endswith(".py"):
            found.append(name)
    return found
