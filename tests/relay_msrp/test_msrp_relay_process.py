"""``imstack serve relay`` as a user runs it: its own process, the real database, TLS."""

from __future__ import annotations

import asyncio
import signal
import ssl
import subprocess
from pathlib import Path

from shared.msrp import parse_uri
from tests.cli_helpers import IMSTACK, imstack_env, run_imstack
from tests.relay_msrp.msrp_client import MsrpTestClient
from tests.relay_msrp.test_msrp_relay_forward import path_to
from tests.test_serve import free_port


async def test_serve_relay_with_a_selfsigned_certificate(
    database_url: str, users: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    env = imstack_env(
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_DATA_DIR=str(tmp_path),
        IMSTACK_DOMAIN="example.test",
        IMSTACK_MSRP_HOST="127.0.0.1",
        IMSTACK_MSRP_PORT=str(port),
        IMSTACK_MSRP_PUBLIC_HOST="127.0.0.1",
    )
    made = run_imstack("tls", "selfsigned", "--host", "127.0.0.1", env=env)
    assert made.returncode == 0, made.stderr
    cert = tmp_path / "tls" / "cert.pem"
    env.update(IMSTACK_TLS_CERT=str(cert), IMSTACK_TLS_KEY=str(tmp_path / "tls" / "key.pem"))
    proc = subprocess.Popen(
        [IMSTACK, "serve", "relay"],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        trust = ssl.create_default_context(cafile=str(cert))
        relay = parse_uri(f"msrps://127.0.0.1:{port};tcp")
        for _ in range(100):
            try:
                alice = await MsrpTestClient.connect("127.0.0.1", port, name="a", tls=trust)
                break
            except OSError:
                await asyncio.sleep(0.1)
        bob = await MsrpTestClient.connect("127.0.0.1", port, name="b", tls=trust)
        assert (await alice.auth(relay, "alice", users["alice"])).head.status == 200  # type: ignore[union-attr]
        assert (await bob.auth(relay, "bob", users["bob"])).head.status == 200  # type: ignore[union-attr]
        answer = await alice.send_text(path_to(alice, bob), b"through the real relay")
        assert answer is not None and answer.head.status == 200  # type: ignore[union-attr]
        assert bytes((await bob.next_request()).body) == b"through the real relay"
        await alice.close()
        await bob.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "MSRP relay listening on 127.0.0.1:" in out
