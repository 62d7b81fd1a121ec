"""``/api/v1/msrp/sessions``: the MSRP relays' live sessions, like Kamailio's
``msrp.cmaplist``. Any token may read them.

The relays are other processes: each publishes its sessions to ``msrp_sessions`` (soon after
AUTH, gone when they end; byte counts once per IMSTACK_STATS_INTERVAL). Sessions of a relay
that stopped publishing are not listed.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from services.api.deps import PoolDep, SettingsDep
from services.api.schemas.sessions import MsrpSessionPublic, MsrpSessionsPublic
from shared.db import msrp_sessions as sessions_db
from shared.db.users import parse_address

router = APIRouter(prefix="/msrp/sessions", tags=["msrp"])

MAX_PAGE = 1000


@router.get("")
async def list_sessions(
    pool: PoolDep,
    settings: SettingsDep,
    user: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=320,
            pattern=r"^[^\x00-\x1f\x7f]*$",
            description="Only this user's sessions (user@domain, sip:user@domain or user).",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE, description="Page size.")] = 100,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1, description="Sessions to skip.")] = 0,
) -> MsrpSessionsPublic:
    """Live MSRP sessions, newest first: session-id, user, peer address, expiry, bytes."""
    aor = None if user is None else str(parse_address(user, settings.domain))
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        count = await sessions_db.count_live(conn, aor)
        found = await sessions_db.list_live(conn, aor, limit=limit, offset=offset)
    return MsrpSessionsPublic(
        data=[MsrpSessionPublic.of(s) for s in found], count=count, limit=limit, offset=offset
    )
