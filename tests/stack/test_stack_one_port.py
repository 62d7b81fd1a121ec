"""SIP and MSRP on one port in the compose topology (IMSTACK_MSRP_PORT = IMSTACK_SIP_PORT)."""

from __future__ import annotations

from shared.msrp import parse_uri
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.stack.load import PASSWORD, Peer, create_users, send_message
from tests.stack.topology import Stack


async def test_sip_and_msrp_share_the_sip_port(stack: Stack) -> None:
    sip_port = stack.specs["relay"].port("sip")
    stack.kill("relay")
    await stack.start("relay", {"IMSTACK_MSRP_PORT": str(sip_port)})
    assert stack.msrp == stack.sip
    assert any(m.startswith("MSRP relay shares the SIP ports") for m in stack.log_messages("relay"))
    await create_users(stack, ["fay", "gus"])
    fay = await Peer(stack, "fay", transport="tcp").start()
    gus = await Peer(stack, "gus", transport="tcp").start()
    host, port = stack.sip
    relay = parse_uri(f"msrp://{host}:{port};tcp")
    one = await MsrpTestClient.connect(host, port, name="fay")
    two = await MsrpTestClient.connect(host, port, name="gus")
    try:
        # SIP over TCP on the port ...
        await fay.register()
        await gus.register()
        answer = await send_message(fay.ua, f"sip:{gus.aor}", b"sip on the shared port")
        assert answer is not None and answer.status == 200, answer
        assert gus.bodies() == [b"sip on the shared port"]
        # ... and MSRP on the same port, at the same time.
        assert (await one.auth(relay, "fay", PASSWORD)).head.status == 200  # type: ignore[union-attr]
        assert (await two.auth(relay, "gus", PASSWORD)).head.status == 200  # type: ignore[union-attr]
        assert one.use_path and one.use_path[0].port == port
        sent = await one.send_text((*one.use_path, *two.use_path, two.uri), b"msrp on it too")
        assert sent is not None and sent.head.status == 200  # type: ignore[union-attr]
        assert bytes((await two.next_request()).body) == b"msrp on it too"
    finally:
        for client in (one, two):
            await client.close()
        for peer in (fay, gus):
            await peer.close()
