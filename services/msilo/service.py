"""``imstack serve msilo``: runs until stopped.

Its work arrives with the offline store (issue 5).
"""

from __future__ import annotations

import logging

from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    log.info("msilo: started; no work is defined for it yet (%s)", "the offline store (issue 5)")
    await ctx.stop.wait()
