"""``imstack serve imc``: runs until stopped.

Its work arrives with chat rooms (issue 6).
"""

from __future__ import annotations

import logging

from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    log.info("imc: started; no work is defined for it yet (%s)", "chat rooms (issue 6)")
    await ctx.stop.wait()
