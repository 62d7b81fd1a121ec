"""``imstack serve relay``: the network edge — the SIP registrar/router and the MSRP relay,
side by side in one process."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
from collections.abc import Callable

from services.relay.guesses import GuessGuard
from services.relay.msrp.connection import MsrpConnection
from services.relay.msrp.listener import MsrpListener
from services.relay.msrp.relay import MsrpRelay
from services.relay.msrp.session_publisher import relay_publishers
from services.relay.sip.service import run_sip
from services.relay.tls import client_context, server_context
from shared.config import Settings
from shared.lifecycle import ServiceContext, StartupError

log = logging.getLogger(__name__)


async def run(ctx: ServiceContext) -> None:
    settings = ctx.settings
    server_ssl = server_context(settings)  # TlsConfigError: one line naming the file
    # Failed password checks over SIP and MSRP add up (per user and address).
    guard = GuessGuard(settings.auth_max_failures, settings.auth_block_seconds)
    relay = MsrpRelay(
        settings,
        ctx.pool,
        server_ssl=server_ssl,
        client_ssl=client_context(settings),
        guard=guard,
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
        group.create_task(_run_sip(ctx, msrp_factory, guard), name="sip")
        group.create_task(run_msrp(ctx, relay, listen=not shared), name="msrp")
        group.create_task(stats.run(ctx.stop), name="relay-stats")
        group.create_task(sessions.run(ctx.stop), name="msrp-sessions-publish")


async def _run_sip(
    ctx: ServiceContext,
    msrp_factory: Callable[[bool], asyncio.Protocol] | None,
    guard: GuessGuard,
) -> None:
    """``run_sip``; a port it cannot bind at start is a ``StartupError`` naming it."""
    started = asyncio.Event()
    try:
        await run_sip(ctx, started=started, msrp_factory=msrp_factory, guard=guard)
    except OSError as exc:
        reason = None if started.is_set() else cannot_listen("SIP", exc, ctx.settings)
        if reason is None:
            raise
        raise StartupError(reason) from None


#: Why binding a listening socket fails: the address is taken, not ours, or a privileged port.
BIND_ERRNOS = frozenset({errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES})


def cannot_listen(what: str, exc: OSError, settings: Settings) -> str | None:
    """``<what> cannot listen on <host>:<port> (<setting>): <reason>`` when ``exc`` (or its
    cause: uvloop wraps the bind error) is a failure to bind; None for any other error."""
    chain: list[BaseException] = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    code = next((e.errno for e in chain if isinstance(e, OSError) and e.errno in BIND_ERRNOS), None)
    if code is None:
        return None
    named = next((m for m in (_ADDRESS.search(str(e)) for e in chain) if m), None)
    if named is not None:
        host, port = named.group(1), int(named.group(2))
    elif what == "MSRP":
        host, port = settings.msrp_host, settings.msrp_port
    else:
        host, port = settings.sip_host, settings.sip_port
    if what == "MSRP":
        ports = {settings.msrp_port: "IMSTACK_MSRP_PORT"}
    else:
        ports = {
            settings.sip_tls_port: "IMSTACK_SIP_TLS_PORT",
            settings.sip_port: "IMSTACK_SIP_PORT",
        }
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    setting = f" ({ports[port]})" if port in ports else ""
    return f"{what} cannot listen on {where}{setting}: {os.strerror(code)}"


#: The ``('host', port`` of an address tuple in an error message.
_ADDRESS = re.compile(r"\('([^']*)', (\d+)")


async def run_msrp(ctx: ServiceContext, relay: MsrpRelay, *, listen: bool = True) -> None:
    """Serve MSRP until ``ctx.stop``, then let transfers in flight finish. Without ``listen``
    the connections arrive through the SIP listeners (shared port)."""
    settings = ctx.settings
    listener = MsrpListener(relay, settings.msrp_host, settings.msrp_port, relay.server_ssl)
    if listen:
        try:
            await listener.start()
        except OSError as exc:
            reason = cannot_listen("MSRP", exc, settings)
            if reason is None:
                raise
            raise StartupError(reason) from None
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
