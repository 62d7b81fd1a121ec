"""``imstack serve msilo``: the offline message store's worker, until stopped.

The relay stores MESSAGEs for users who are offline (``services/relay/sip/handover.py``);
this service delivers them when the user registers again, in order, deleting each only after
the user's client answered 2xx, and purges expired ones (:mod:`services.msilo.worker`).
"""

from __future__ import annotations

import asyncio
import logging

from services.msilo.email import EmailNotifier
from services.msilo.worker import MsiloWorker
from shared.lifecycle import ServiceContext
from shared.stats import StatsPublisher, counters_of

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    worker = MsiloWorker(ctx.settings, ctx.pool, ctx.database_url)
    notifier = EmailNotifier(ctx.settings, ctx.pool)
    log.info("msilo: started (e-mail notices %s)", "on" if notifier.enabled else "off")
    email = counters_of(notifier, sent="emails_sent", failed="emails_failed")
    sources = {"worker": counters_of(worker.stats), "email": email}
    publisher = StatsPublisher(
        ctx.pool, "msilo", interval=ctx.settings.stats_interval, sources=sources
    )
    async with asyncio.TaskGroup() as group:
        group.create_task(worker.run(ctx.stop), name="msilo-delivery")
        group.create_task(notifier.run(ctx.stop), name="msilo-email")
        group.create_task(publisher.run(ctx.stop), name="msilo-stats")
    stats = worker.stats
    log.info(
        "msilo: stopped (queued %d, delivered %d, failed %d, expired %d)",
        stats.queued,
        stats.delivered,
        stats.failed,
        stats.expired,
    )
    if notifier.enabled:
        log.info("msilo: e-mail notices sent %d, failed %d", notifier.sent, notifier.failed)
