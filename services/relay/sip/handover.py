"""The two points where the router hands a MESSAGE to another service.

Each is ONE function, so the issue that implements the other side changes only its body:

* :func:`store_offline` — the offline-store issue (msilo): commit an ``offline_messages``
  row and answer 202 Accepted. Until then: 480.
* :func:`deliver_to_room` — the rooms issue (imc): hand the MESSAGE to the room worker
  through Postgres. Until then: 404.
"""

from __future__ import annotations

import asyncpg

from shared.config import Settings
from shared.sip.headers import make_response
from shared.sip.message import SipRequest, SipResponse


async def store_offline(
    pool: asyncpg.Pool,
    settings: Settings,
    request: SipRequest,
    aor: str,
    *,
    authenticated_user: str | None,
) -> SipResponse:
    """``request`` (a MESSAGE) could not reach ``aor`` (``user@domain``): no binding, or
    every binding failed with 408/480/503/timeout. Answer the sender."""
    return make_response(request, 480)


async def deliver_to_room(
    pool: asyncpg.Pool,
    settings: Settings,
    request: SipRequest,
    room: str,
    *,
    authenticated_user: str | None,
) -> SipResponse:
    """``request`` (a MESSAGE) is addressed to ``room`` (``name@<conference domain>``)."""
    return make_response(request, 404)
