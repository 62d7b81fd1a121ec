"""REGISTER against the SIP edge over real sockets (RFC 3261 §10)."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from shared.db.locations import NewBinding, get_bindings, upsert_binding
from tests.relay_sip.conftest import SipServer, eventually


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_register_is_challenged_then_bound_and_announced(
    sip: SipServer, database_url: str, transport: str
) -> None:
    listener = await asyncpg.connect(database_url)
    announced: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("registered", lambda *args: announced.put_nowait(args[3]))
    try:
        alice = await sip.ua("alice", transport)
        request = alice.build(
            "REGISTER",
            "sip:example.test",
            headers=[("Contact", f"<{alice.contact}>"), ("Expires", "600")],
        )
        challenge, ok = await alice.send_authenticated(request)
        assert challenge.status == 401
        assert 'realm="example.test"' in (challenge.get("WWW-Authenticate") or "")
        assert ok.status == 200
        contacts = ok.get_all("Contact")
        assert len(contacts) == 1 and contacts[0].startswith(f"<{alice.contact}>;expires=")
        assert 590 <= int(contacts[0].rsplit("=", 1)[1]) <= 600
        [binding] = await get_bindings(sip.pool, "alice@example.test")
        assert binding.contact == alice.contact
        assert binding.transport == transport
        assert binding.source_port == alice.local_port
        assert binding.user_agent == "imstack-test-ua"
        assert (binding.connection_id is None) == (transport == "udp")
        payload = await asyncio.wait_for(announced.get(), 10)
        assert '"id": "alice@example.test"' in payload and '"type": "registered"' in payload
    finally:
        await listener.close()


async def test_a_wrong_password_is_refused_and_binds_nothing(sip: SipServer) -> None:
    mallory = await sip.ua("alice", password="guess")
    response = await mallory.register()
    assert response.status == 401
    assert await get_bindings(sip.pool, "alice@example.test") == []


class TestPasswordGuessing:
    @pytest.fixture
    def sip_settings(self) -> dict[str, object]:
        return {"auth_max_failures": 3, "auth_block_seconds": 1.0}

    async def test_guesses_from_one_address_are_braked(
        self, sip: SipServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """G8: after 3 wrong passwords for alice from 127.0.0.1, even the right one is refused
        403 from there until the block ends; alice from 127.0.0.2 gets in meanwhile."""
        mallory = await sip.ua("alice", password="guess")
        assert [(await mallory.register()).status for _ in range(3)] == [401, 401, 401]
        alice = await sip.ua("alice")
        blocked = await alice.register()
        assert (blocked.status, blocked.reason) == (403, "Too Many Failed Attempts")
        assert await get_bindings(sip.pool, "alice@example.test") == []
        warnings = [r.getMessage() for r in caplog.records if "not checking" in r.getMessage()]
        assert warnings == [
            "SIP: 3 failed password checks for alice from 127.0.0.1; not checking its "
            "credentials from there for 1 s (IMSTACK_AUTH_MAX_FAILURES)"
        ]

        elsewhere = await sip.ua("alice", local_host="127.0.0.2")
        assert (await elsewhere.register()).status == 200
        await asyncio.sleep(1.1)
        assert (await alice.register()).status == 200


async def test_a_disabled_user_is_forbidden(sip: SipServer) -> None:
    dave = await sip.ua("dave")
    assert (await dave.register()).status == 403


async def test_a_user_cannot_register_someone_elses_address(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    request = alice.build(
        "REGISTER",
        "sip:example.test",
        to="sip:bob@example.test",
        headers=[("Contact", f"<{alice.contact}>")],
    )
    _, final = await alice.send_authenticated(request)
    assert final.status == 403
    assert await get_bindings(sip.pool, "bob@example.test") == []


async def test_expires_zero_removes_the_binding(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    response = await alice.register(expires=0)
    assert response.status == 200
    assert response.get_all("Contact") == []
    assert await get_bindings(sip.pool, "alice@example.test") == []


async def test_several_contacts_with_q_are_listed_and_star_removes_them_all(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    other = "sip:alice-desk@127.0.0.1:5999"
    request = alice.build(
        "REGISTER",
        "sip:example.test",
        headers=[("Contact", f"<{alice.contact}>;q=0.5, <{other}>;expires=120")],
    )
    _, ok = await alice.send_authenticated(request)
    assert ok.status == 200
    listed = ok.get_all("Contact")
    assert len(listed) == 2
    assert any(c.startswith(f"<{other}>;expires=") for c in listed)
    assert any(c.startswith(f"<{alice.contact}>;") and ";q=0.5" in c for c in listed)
    bindings = await get_bindings(sip.pool, "alice@example.test")
    assert [b.contact for b in bindings] == [other, alice.contact]  # best q first

    bad = alice.build("REGISTER", "sip:example.test", headers=[("Contact", "*"), ("Expires", "60")])
    _, refused = await alice.send_authenticated(bad)
    assert refused.status == 400
    star = alice.build("REGISTER", "sip:example.test", headers=[("Contact", "*"), ("Expires", "0")])
    _, cleared = await alice.send_authenticated(star)
    assert cleared.status == 200
    assert await get_bindings(sip.pool, "alice@example.test") == []


async def test_too_brief_expiry_gets_423_with_min_expires(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    response = await alice.register(expires=10)
    assert response.status == 423
    assert response.get("Min-Expires") == str(sip.settings.registrar_min_expires)
    assert await get_bindings(sip.pool, "alice@example.test") == []


async def test_too_long_expiry_is_shortened_to_the_maximum(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    response = await alice.register(expires=10**6)
    assert response.status == 200
    [contact] = response.get_all("Contact")
    assert int(contact.rsplit("=", 1)[1]) <= sip.settings.registrar_max_expires


async def test_an_older_cseq_of_the_same_call_id_does_not_undo_a_newer_one(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register()).status == 200
    stale = alice.build(
        "REGISTER",
        "sip:example.test",
        headers=[("Contact", f"<{alice.contact}>"), ("Expires", "0")],
    )
    first = await alice.send(stale)
    old = alice.authorize(stale, first)
    old.headers.set("CSeq", "1 REGISTER")
    response = await alice.send(old)
    assert response.status == 500
    assert len(await get_bindings(sip.pool, "alice@example.test")) == 1


async def test_closing_the_tcp_connection_removes_its_binding(sip: SipServer) -> None:
    alice = await sip.ua("alice", "tcp")
    assert (await alice.register()).status == 200
    assert len(await get_bindings(sip.pool, "alice@example.test")) == 1
    await alice.close()

    async def gone() -> bool:
        return await get_bindings(sip.pool, "alice@example.test") == []

    await eventually(gone, "binding removed")


async def test_a_refresh_updates_its_binding_lists_all_and_is_announced_again(
    sip: SipServer, database_url: str
) -> None:
    listener = await asyncpg.connect(database_url)
    announced: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener("registered", lambda *args: announced.put_nowait(args[3]))
    try:
        alice = await sip.ua("alice")
        desk = "sip:alice-desk@127.0.0.1:5999"
        assert (await alice.register(600, contacts=[desk])).status == 200
        assert (await alice.register(600)).status == 200
        before = {b.contact: b for b in await get_bindings(sip.pool, "alice@example.test")}
        for _ in range(2):
            await asyncio.wait_for(announced.get(), 10)

        # The same contact again (what a UA does every few minutes), with new values.
        request = alice.build(
            "REGISTER",
            "sip:example.test",
            headers=[
                ("Contact", f"<{alice.contact}>;q=0.7"),
                ("Expires", "900"),
            ],
        )
        _, ok = await alice.send_authenticated(request)
        assert ok.status == 200
        listed = ok.get_all("Contact")
        assert len(listed) == 2  # the 200 lists every binding of the AoR, not just this one
        [mine] = [c for c in listed if c.startswith(f"<{alice.contact}>;")]
        assert 890 <= int(mine.split("expires=")[1].split(";")[0]) <= 900 and ";q=0.7" in mine
        after = {b.contact: b for b in await get_bindings(sip.pool, "alice@example.test")}
        assert after[alice.contact].id == before[alice.contact].id  # updated in place
        assert after[alice.contact].q == pytest.approx(0.7)
        assert after[alice.contact].updated_at > before[alice.contact].updated_at
        assert after[alice.contact].cseq > before[alice.contact].cseq
        assert after[desk] == before[desk]
        payload = await asyncio.wait_for(announced.get(), 10)
        assert '"id": "alice@example.test"' in payload
    finally:
        await listener.close()


async def test_a_refresh_with_an_old_cseq_is_refused_and_changes_nothing(
    sip: SipServer,
) -> None:
    alice = await sip.ua("alice")
    assert (await alice.register(600)).status == 200
    [before] = await get_bindings(sip.pool, "alice@example.test")
    stale = alice.build(
        "REGISTER",
        "sip:example.test",
        headers=[("Contact", f"<{alice.contact}>"), ("Expires", "3000")],
    )
    first = await alice.send(stale)
    old = alice.authorize(stale, first)
    old.headers.set("CSeq", f"{before.cseq} REGISTER")  # not above the stored one
    response = await alice.send(old)
    assert response.status == 500
    [after] = await get_bindings(sip.pool, "alice@example.test")
    assert after.cseq == before.cseq and after.expires_at == before.expires_at


@pytest.mark.parametrize("sip_settings", [{"registrar_max_contacts": 2}])
async def test_a_refresh_beyond_the_contact_limit_is_refused(sip: SipServer) -> None:
    alice = await sip.ua("alice")
    contacts = [alice.contact, "sip:alice-2@127.0.0.1:5998"]
    assert (await alice.register(600, contacts=contacts)).status == 200
    [binding, *_] = await get_bindings(sip.pool, "alice@example.test")
    # A third binding, written before the limit was lowered (or by a relay with another one).
    fields = {f: getattr(binding, f) for f in NewBinding.__dataclass_fields__ if f != "expires"}
    third = NewBinding(**{**fields, "contact": "sip:alice-3@127.0.0.1:5997", "expires": 600})
    await upsert_binding(sip.pool, third)
    response = await alice.register(600)  # a refresh of a binding it has: still too many
    assert response.status == 403
    assert len(await get_bindings(sip.pool, "alice@example.test")) == 3
