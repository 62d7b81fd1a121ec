"""``imstack serve relay``: the network edge — the SIP registrar/router and the MSRP relay,
side by side in one process."""

from __future__ import annotations

import asyncio
import logging

from services.relay.msrp.listener import MsrpListener
from services.relay.msrp.relay import MsrpRelay
from services.relay.sip.service import run_sip
from services.relay.tls import TlsConfigError, client_context, server_context
from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    try:
        server_context(ctx.settings)  # fail early, with one line, on a bad certificate
    except TlsConfigError as exc:
        raise RuntimeError(str(exc)) from None
    async with asyncio.TaskGroup() as group:
        group.create_task(run_sip(ctx), name="sip")
        group.create_task(run_msrp(ctx), name="msrp")


async def run_msrp(ctx: ServiceContext) -> None:
    """Serve MSRP until ``ctx.stop``, then let transfers in flight finish."""
    settings = ctx.settings
    server_ssl = server_context(settings)
    relay = MsrpRelay(
        settings, ctx.pool, server_ssl=server_ssl, client_ssl=client_context(settings)
    )
    listener = MsrpListener(relay, settings.msrp_host, settings.msrp_port, server_ssl)
    await listener.start()
    relay.start_timers()
    try:
        await ctx.stop.wait()
        listener.close()
        await drain(relay, settings.shutdown_timeout)
    finally:
        listener.close()
        relay.stop_timers()
        for conn in list(relay.connections):
            conn.abort()


async def drain(relay: MsrpRelay, limit: float) -> None:
    """Let messages in flight finish (for at most ``limit`` seconds), then close connections."""
    try:
        async with asyncio.timeout(limit):
            await relay.wait_idle()
    except TimeoutError:
        log.warning("MSRP: transfers still in flight after %.0fs; closing anyway", limit)
    for conn in list(relay.connections):
        conn.close()
