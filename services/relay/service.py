"""``imstack serve relay``: runs until stopped.

Its work arrives with the MSRP relay (issue 3) and the SIP edge (issue 4).
"""

from __future__ import annotations

import logging

from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    log.info(
        "relay: started; no work is defined for it yet (%s)",
        "the MSRP relay (issue 3) and the SIP edge (issue 4)",
    )
    await ctx.stop.wait()
