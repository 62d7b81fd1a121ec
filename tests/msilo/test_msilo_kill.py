"""msilo as its own OS process, SIGKILLed in the middle of a long delivery and restarted:
every stored message still arrives, in storage order; a message is delivered twice only if
its 2xx came just before a kill (the outcome was not yet applied), at most once per kill."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.db.offline import count_messages, store_message
from tests.cli_helpers import IMSTACK, imstack_env
from tests.relay_sip.conftest import SipServer
from tests.relay_sip.sip_ua import SipUA

BOB = "bob@example.test"
MESSAGES = 1000
KILLS = 2  # at a third and at two thirds of the delivery
OVERALL_TIMEOUT = 150.0  # seconds for the whole delivery: generous, never a measurement

Arrival = tuple[str, bytes]  # (Call-ID, body) of a MESSAGE bob received


async def answer_everything(bob: SipUA, arrivals: list[Arrival]) -> None:
    """Bob's client: answer each MESSAGE 200 at once, remembering what came."""
    while True:
        request = await bob.requests.get()
        if request.method == "MESSAGE":
            arrivals.append((request.get("Call-ID") or "", request.body))
        bob.answer(request, 200)


async def wait_for(check: Callable[[], bool], what: str, deadline: float) -> None:
    loop = asyncio.get_running_loop()
    while not check():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@pytest.fixture
async def msilo_process(
    sip: SipServer, database_url: str, tmp_path: Path
) -> AsyncIterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start ``imstack serve msilo`` processes on the test database; killed at the end."""
    env = imstack_env(
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_DOMAIN=sip.settings.domain,
        IMSTACK_DATA_DIR=str(tmp_path / "msilo-data"),
        IMSTACK_MSILO_ADD_DATE="false",  # bodies arrive byte-exact: easy to compare
        IMSTACK_LOG_LEVEL="INFO",
    )
    started: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"msilo-{len(started)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [IMSTACK, "serve", "msilo"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child has its own descriptor
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                await asyncio.to_thread(proc.wait, 10)


async def test_sigkilled_msilo_restarted_loses_nothing_and_keeps_the_order(
    sip: SipServer, msilo_process: Callable[[], subprocess.Popen[bytes]]
) -> None:
    bodies = [f"stored {n:04d}".encode() for n in range(MESSAGES)]
    async with sip.pool.acquire() as conn, conn.transaction():
        for body in bodies:
            await store_message(
                conn,
                recipient=BOB,
                sender_uri="sip:alice@example.test",
                sender_display=None,
                call_id="kill-test",
                content_type="text/plain",
                body=body,
                extra_headers=[],
                lifetime=3600,
            )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + OVERALL_TIMEOUT
    msilo = msilo_process()
    bob = await sip.ua("bob", "tcp")
    arrivals: list[Arrival] = []
    answering = asyncio.create_task(answer_everything(bob, arrivals))
    try:
        assert (await bob.register()).status == 200
        for kill in range(1, KILLS + 1):
            await wait_for(
                lambda k=kill: len(arrivals) >= MESSAGES * k // (KILLS + 1),  # type: ignore[misc]
                f"delivery before kill {kill}",
                deadline,
            )
            assert msilo.poll() is None, "msilo exited by itself"
            msilo.send_signal(signal.SIGKILL)
            assert await asyncio.to_thread(msilo.wait, 10) == -signal.SIGKILL
            msilo = msilo_process()

        await wait_for(lambda: len({b for _, b in arrivals}) >= MESSAGES, "every body", deadline)
        while await count_messages(sip.pool, BOB):  # deleted after each 2xx is applied
            assert loop.time() < deadline, "stored messages left behind"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)  # a late duplicate would arrive now
    finally:
        answering.cancel()

    first_call: dict[bytes, str] = {}
    duplicates: list[bytes] = []
    previous: bytes | None = None
    for call_id, body in arrivals:
        if body not in first_call:
            first_call[body] = call_id
        elif call_id != first_call[body]:  # a new transaction, not a retransmission
            # Only the message in flight at a kill is offered again, right after itself.
            assert body == previous, f"{body!r} delivered again out of turn"
            duplicates.append(body)
        previous = body
    assert list(first_call) == bodies  # none lost, none foreign, storage order
    assert len(duplicates) <= KILLS, duplicates
    assert msilo.poll() is None
