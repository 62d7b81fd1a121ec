"""``imstack serve imc``: the chat room worker, until stopped.

The relay hands every MESSAGE addressed to the conference domain to imc through the
``room_inbox`` table (``services/relay/sip/handover.py``); imc runs ``#`` commands and fans
chat out to the members through ``outbound_messages`` (:mod:`services.imc.worker`).
"""

from __future__ import annotations

import asyncio
import logging

from services.imc.worker import ImcWorker
from shared.lifecycle import ServiceContext
from shared.stats import StatsPublisher, counters_of

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    worker = ImcWorker(ctx.settings, ctx.pool, ctx.database_url)
    log.info("imc: started (rooms at %s)", ctx.settings.conference_domain)
    sources = {"worker": counters_of(worker.stats)}
    publisher = StatsPublisher(
        ctx.pool, "imc", interval=ctx.settings.stats_interval, sources=sources
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(worker.run(ctx.stop), name="imc-worker")
        group.create_task(publisher.run(ctx.stop), name="imc-stats")
    stats = worker.stats
    log.info(
        "imc: stopped (handled %d, fanned out %d, stored offline %d)",
        stats.handled,
        stats.fanned_out,
        stats.stored_offline,
    )
