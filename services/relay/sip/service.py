"""``run_sip(ctx)``: the SIP edge of the relay, from start to a drained stop.

Starts the listeners (UDP + TCP on IMSTACK_SIP_HOST:IMSTACK_SIP_PORT, TLS on
IMSTACK_SIP_TLS_PORT when a certificate is configured), the outbound delivery worker, the
LISTEN connections that keep the credential and mailbox caches current and the binding purge. On
``ctx.stop``: stop accepting connections and new requests (503), let in-flight
transactions and deliveries finish within the shutdown timeout, close.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.relay import tls
from services.relay.guesses import GuessGuard
from services.relay.sip.delivery import DeliveryWorker, purge_stale_rows
from services.relay.sip.edge import SipEdge
from services.relay.sip.router import Router
from shared.db.locations import delete_instance_stream_bindings
from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)

PURGE_INTERVAL = 60.0  # seconds between purges of expired bindings and idle connections


async def run_sip(
    ctx: ServiceContext,
    *,
    started: asyncio.Event | None = None,
    msrp_factory: Callable[[bool], asyncio.Protocol] | None = None,
    guard: GuessGuard | None = None,
) -> None:
    """Serve SIP until ``ctx.stop``; ``started`` (for tests) is set once listening. With
    ``msrp_factory``, the TCP and TLS listeners also accept MSRP connections (one port);
    ``guard``: the password guessing brake shared with MSRP (default: SIP's own)."""
    settings = ctx.settings
    edge = SipEdge(settings, ctx.pool, ctx.database_url, guard)
    edge.transports.msrp_factory = msrp_factory
    router = Router(edge)
    edge.handle_request = router.handle
    edge.handle_ack = router.stray_ack
    edge.transactions.on_stray_response = router.stray_response
    removed = await delete_instance_stream_bindings(ctx.pool, edge.relay_instance)
    if removed:
        log.info("dropped %d TCP/TLS binding(s) left by an earlier run", removed)
    await edge.start(tls.server_context(settings))
    worker = DeliveryWorker(edge, ctx.database_url, settings.sip_delivery_poll_interval)
    background = [
        asyncio.create_task(worker.run(ctx.stop), name="sip-delivery"),
        asyncio.create_task(edge.credentials.run(ctx.stop), name="sip-credentials-listen"),
        asyncio.create_task(edge.mailboxes.run(ctx.stop), name="sip-mailboxes-listen"),
        asyncio.create_task(edge.bindings.run(ctx.stop), name="sip-bindings-listen"),
        asyncio.create_task(purge_stale_rows(edge, ctx.stop, PURGE_INTERVAL), name="sip-purge"),
    ]
    if started is not None:
        started.set()
    try:
        await ctx.stop.wait()
        log.info("SIP: stopping; finishing in-flight transactions")
        edge.transports.stop_accepting()
        edge.transactions.accepting = False
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.shutdown_timeout
        await asyncio.wait(background, timeout=settings.shutdown_timeout)
        # Every request being handled is a task (its transactions end with it).
        while edge.tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.warning("SIP: shutdown timeout; aborting in-flight transactions")
                break
            await asyncio.wait(set(edge.tasks), timeout=remaining)
    finally:
        for task in [*background, *edge.tasks]:
            task.cancel()
        await asyncio.gather(*background, *edge.tasks, return_exceptions=True)
        edge.transactions.close()
        edge.transports.close()
        log.info("SIP: stopped")
