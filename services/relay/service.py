"""``imstack serve relay``: the network edge (the MSRP relay; the SIP edge joins it)."""

from __future__ import annotations

import asyncio
import logging

from services.relay.msrp.listener import MsrpListener
from services.relay.msrp.relay import MsrpRelay
from services.relay.tls import TlsConfigError, client_context, server_context
from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    settings = ctx.settings
    try:
        server_ssl = server_context(settings)
    except TlsConfigError as exc:
        raise RuntimeError(str(exc)) from None
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
