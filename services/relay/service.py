"""``imstack serve relay``: the network edge — the SIP registrar/router and the MSRP relay,
side by side in one process."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from services.relay.msrp.connection import MsrpConnection
from services.relay.msrp.listener import MsrpListener
from services.relay.msrp.relay import MsrpRelay
from services.relay.msrp.session_publisher import relay_publishers
from services.relay.sip.service import run_sip
from services.relay.tls import TlsConfigError, client_context, server_context
from shared.lifecycle import ServiceContext

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    settings = ctx.settings
    try:
        server_ssl = server_context(settings)
    except TlsConfigError as exc:  # one line naming the files, not a traceback
        raise RuntimeError(str(exc)) from None
    relay = MsrpRelay(
        settings, ctx.pool, server_ssl=server_ssl, client_ssl=client_context(settings)
    )
    # SIP and MSRP on one port: the SIP TCP and TLS listeners take MSRP connections too.
    shared = settings.msrp_port in (settings.sip_port, settings.sip_tls_port)
    msrp_factory: Callable[[bool], asyncio.Protocol] | None = None
    if shared:
        relay.local_ports.update({settings.sip_port, settings.sip_tls_port})

        def msrp_factory(secure: bool) -> asyncio.Protocol:
            return MsrpConnection(relay, secure=secure)

    stats, sessions = relay_publishers(relay, ctx.pool, settings)
    async with asyncio.TaskGroup() as group:
        group.create_task(run_sip(ctx, msrp_factory=msrp_factory), name="sip")
        group.create_task(run_msrp(ctx, relay, listen=not shared), name="msrp")
        group.create_task(stats.run(ctx.stop), name="relay-stats")
        group.create_task(sessions.run(ctx.stop), name="msrp-sessions-publish")


async def run_msrp(ctx: ServiceContext, relay: MsrpRelay, *, listen: bool = True) -> None:
    """Serve MSRP until ``ctx.stop``, then let transfers in flight finish. Without ``listen``
    the connections arrive through the SIP listeners (shared port)."""
    settings = ctx.settings
    listener = MsrpListener(relay, settings.msrp_host, settings.msrp_port, relay.server_ssl)
    if listen:
        await listener.start()
    else:
        log.info("MSRP relay shares the SIP ports %d/%d", settings.sip_port, settings.sip_tls_port)
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
