"""``imstack serve msilo``: the offline message store's worker, until stopped.

The relay stores MESSAGEs for users who are offline (``services/relay/sip/handover.py``);
this service delivers them when the user registers again, in order, deleting each only after
the user's client answered 2xx, and purges expired ones (:mod:`services.msilo.worker`).
"""

from __future__ import annotations

import logging

from services.msilo.worker import MsiloWorker
from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    worker = MsiloWorker(ctx.settings, ctx.pool, ctx.database_url)
    log.info("msilo: started")
    await worker.run(ctx.stop)
    stats = worker.stats
    log.info(
        "msilo: stopped (queued %d, delivered %d, failed %d, expired %d)",
        stats.queued,
        stats.delivered,
        stats.failed,
        stats.expired,
    )
