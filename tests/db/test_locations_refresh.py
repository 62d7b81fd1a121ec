"""Refreshes of several AoRs in one statement decide exactly what one statement each
would (shared.db.locations.refresh_bindings, and the registrar's RefreshBatcher)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from services.relay.sip.registrar import RefreshBatcher
from shared.db.locations import (
    Binding,
    NewBinding,
    get_bindings,
    refresh_binding,
    refresh_bindings,
    upsert_binding,
)

CHANNEL = "registered"


def binding(
    aor: str, contact: str, *, call_id: str = "c1", cseq: int = 1, **kw: object
) -> NewBinding:
    values: dict[str, object] = {
        "aor": aor,
        "contact": contact,
        "transport": "udp",
        "source_host": "127.0.0.1",
        "source_port": 5070,
        "relay_instance": "test:5060",
        "connection_id": None,
        "q": 1.0,
        "instance_id": None,
        "user_agent": "ua/1",
        "call_id": call_id,
        "cseq": cseq,
        "expires": 600,
    }
    values.update(kw)
    return NewBinding(**values)  # type: ignore[arg-type]


async def prepare(conn: asyncpg.Connection) -> None:
    """a1 has one binding, a2 one (other contact), a3 one (call c1, CSeq 5), a4 three."""
    await upsert_binding(conn, binding("a1@x.test", "sip:a1@h1", q=0.5))
    await upsert_binding(conn, binding("a1@x.test", "sip:a1@h0", q=1.0))
    await upsert_binding(conn, binding("a2@x.test", "sip:a2@h1"))
    await upsert_binding(conn, binding("a3@x.test", "sip:a3@h1", cseq=5))
    for i in range(3):
        await upsert_binding(conn, binding("a4@x.test", f"sip:a4@h{i}"))


BATCH = [
    binding("a1@x.test", "sip:a1@h1", cseq=2, user_agent="ua/2", q=0.7),  # refreshed
    binding("a2@x.test", "sip:a2@elsewhere", cseq=2),  # no such binding
    binding("a3@x.test", "sip:a3@h1", cseq=5),  # CSeq not above the stored one
    binding("a4@x.test", "sip:a4@h0", cseq=2),  # over the contact limit (2)
    binding("a5@x.test", "sip:a5@h1", cseq=2),  # no binding at all
]


def seen(bindings: list[Binding]) -> list[tuple[object, ...]]:
    return [(b.aor, b.contact, b.q, b.user_agent, b.call_id, b.cseq) for b in bindings]


async def test_a_batch_of_refreshes_decides_as_each_one_alone(pool: asyncpg.Pool) -> None:
    payloads = [f'{{"type": "registered", "id": "{new.aor}"}}' for new in BATCH]
    async with pool.acquire() as conn:
        tx = conn.transaction()
        await tx.start()
        await prepare(conn)
        alone = [
            seen(await refresh_binding(conn, new, max_contacts=2, channel=CHANNEL, payload=p))
            for new, p in zip(BATCH, payloads, strict=True)
        ]
        after_alone = {new.aor: seen(await get_bindings(conn, new.aor)) for new in BATCH}
        await tx.rollback()
        tx = conn.transaction()
        await tx.start()
        await prepare(conn)
        together = await refresh_bindings(
            conn, list(zip(BATCH, payloads, strict=True)), max_contacts=2, channel=CHANNEL
        )
        after_together = {new.aor: seen(await get_bindings(conn, new.aor)) for new in BATCH}
        await tx.rollback()
    assert [seen(b) for b in together] == alone
    assert after_together == after_alone
    assert alone[0] == [
        ("a1@x.test", "sip:a1@h0", 1.0, "ua/1", "c1", 1),
        ("a1@x.test", "sip:a1@h1", pytest.approx(0.7), "ua/2", "c1", 2),
    ]
    assert alone[1:] == [[], [], [], []]


async def test_a_batch_announces_only_the_aors_it_refreshed(
    pool: asyncpg.Pool, database_url: str
) -> None:
    heard: list[str] = []
    first = asyncio.Event()

    def on_notify(*args: object) -> None:
        heard.append(str(args[3]))
        first.set()

    listener = await asyncpg.connect(database_url)
    await listener.add_listener(CHANNEL, on_notify)
    try:
        async with pool.acquire() as conn:
            await prepare(conn)
            await refresh_bindings(
                conn,
                [(new, f"payload of {new.aor}") for new in BATCH],
                max_contacts=2,
                channel=CHANNEL,
            )
        await asyncio.wait_for(first.wait(), 10)
        await asyncio.sleep(0.2)  # anything else would have come with it
    finally:
        await listener.close()
    assert heard == ["payload of a1@x.test"]


async def test_one_aor_twice_in_a_batch_is_refused(pool: asyncpg.Pool) -> None:
    new = binding("a1@x.test", "sip:a1@h1")
    with pytest.raises(ValueError):
        await refresh_bindings(pool, [(new, "p"), (new, "p")], max_contacts=2, channel=CHANNEL)


async def test_refreshes_arriving_together_share_a_statement_and_a_bad_one_fails_alone(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        for i in range(6):
            await upsert_binding(conn, binding(f"u{i}@x.test", f"sip:u{i}@h"))
    batcher = RefreshBatcher(pool, max_contacts=5, channel=CHANNEL)
    news = [binding(f"u{i}@x.test", f"sip:u{i}@h", cseq=2) for i in range(6)]
    news[3] = binding("u3@x.test", "sip:u3@h", cseq=2, user_agent="bad\x00agent")
    again = binding("u0@x.test", "sip:u0@h", cseq=3)  # u0 twice: the second goes alone
    results = await asyncio.gather(
        *(batcher.refresh(new, "p") for new in [*news, again]), return_exceptions=True
    )
    assert isinstance(results[3], asyncpg.DataError)
    for i in (1, 2, 4, 5):
        result = results[i]
        assert isinstance(result, list)
        assert seen(result) == [(f"u{i}@x.test", f"sip:u{i}@h", 1.0, "ua/1", "c1", 2)]
    cseqs = {b.cseq for b in await get_bindings(pool, "u0@x.test")}
    assert cseqs == {3}  # both u0 refreshes applied, in some order: the higher CSeq won
    assert batcher.batches == 1  # the six arrived together (the retries are not batches)
