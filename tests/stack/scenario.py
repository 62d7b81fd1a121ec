"""The fault tests' common scenario: users, a room, a load with a fault in the middle, the
audit after it.

Senders s1-s3 (registered, room members) send round-robin to on1 and on2 (registered), off1
and off2 (not registered at first) and the room (members s1-s3, on1, off1). When the fault
starts, off1 registers, so msilo is draining its stored messages while the fault hits; after
the load off2 registers. Then everything owed must arrive, or still be stored.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tests.stack.load import Audit, Auditor, Load, Peer, create_room, create_users
from tests.stack.topology import Stack

Fault = Callable[[], Awaitable[dict[str, object]]]


@dataclass
class Scenario:
    stack: Stack
    tag: str = field(default_factory=lambda: "t" + secrets.token_hex(3))
    duration: float = 4.0
    fault_at: float = 1.5
    rate: float = 8.0
    peers: dict[str, Peer] = field(default_factory=dict)
    load: Load | None = None
    room_uri: str = ""

    def name(self, short: str) -> str:
        return f"{self.tag}{short}"

    def peer(self, short: str) -> Peer:
        return self.peers[short]

    async def prepare(self) -> None:
        shorts = ["s1", "s2", "s3", "on1", "on2", "off1", "off2"]
        await create_users(self.stack, [self.name(s) for s in shorts])
        domain = self.stack.domain
        members = [f"{self.name(s)}@{domain}" for s in ("s2", "s3", "on1", "off1")]
        self.room_uri = await create_room(
            self.stack, self.name("room"), f"{self.name('s1')}@{domain}", members
        )
        for short in shorts:
            self.peers[short] = await Peer(self.stack, self.name(short)).start()
        for short in ("s1", "s2", "s3", "on1", "on2"):
            await self.peers[short].register()
        room_members = tuple(self.peers[s].aor for s in ("s1", "s2", "s3", "on1", "off1"))
        targets = [
            *((f"sip:{self.peers[s].aor}", (self.peers[s].aor,)) for s in ("on1", "off1")),
            (self.room_uri, room_members),
            *((f"sip:{self.peers[s].aor}", (self.peers[s].aor,)) for s in ("on2", "off2")),
        ]
        senders = [self.peers[s] for s in ("s1", "s2", "s3")]
        self.load = Load(self.tag, senders, targets, rate=self.rate)

    async def run(self, fault: Fault | None) -> tuple[Audit, dict[str, object]]:
        """The load, ``fault`` at ``fault_at`` seconds (off1 registers then), off2 registers
        after the load; the audit once deliveries settle."""
        assert self.load is not None
        facts: dict[str, object] = {}

        busy = asyncio.Event()
        busy.set()  # the load goes on until the fault is over

        async def at_fault() -> None:
            try:
                await asyncio.sleep(self.fault_at)
                await self.peers["off1"].register()
                if fault is not None:
                    facts.update(await fault())
                await asyncio.sleep(0.5)  # and a little after
            finally:
                busy.clear()

        began = time.monotonic()
        async with asyncio.TaskGroup() as group:
            group.create_task(self.load.run(self.duration, busy))
            group.create_task(at_fault())
        await self.peers["off2"].register()
        auditor = Auditor(self.stack, self.load, self.peers.values())
        await auditor.settle()
        audit = await auditor.audit()
        facts["seconds"] = round(time.monotonic() - began, 1)
        return audit, facts

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.close()


def record(report: dict[str, object], name: str, audit: Audit, facts: dict[str, object]) -> None:
    entry = {**audit.counts(), **facts}
    report[name] = entry
    print(f"STACK-AUDIT {name} {json.dumps(entry, sort_keys=True)}")
