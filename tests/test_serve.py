"""``imstack serve`` as a user runs it: a real process, a real port, signals."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.cli_helpers import IMSTACK, imstack_env, run_imstack


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def local_ports() -> dict[str, str]:
    """Every listener of ``imstack serve`` on a free loopback port (never the real 5060/2855)."""
    return {
        "IMSTACK_SIP_HOST": "127.0.0.1",
        "IMSTACK_SIP_PORT": str(free_port()),
        "IMSTACK_SIP_TLS_PORT": str(free_port()),
        "IMSTACK_MSRP_HOST": "127.0.0.1",
        "IMSTACK_MSRP_PORT": str(free_port()),
    }


def start(env: dict[str, str], *services: str, cwd: Path | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [IMSTACK, "serve", *services],
        env=env,
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_ready(proc: subprocess.Popen[str], port: int, timeout: float = 30) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if proc.poll() is not None:
            raise AssertionError(f"imstack serve exited early:\n{proc.communicate()[0]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return time.monotonic() - began
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"not ready in {timeout}s:\n{proc.communicate()[0]}")


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> tuple[int, str]:
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        raise AssertionError(f"did not stop on {sig!r}:\n{out}") from None
    return proc.returncode, out


@pytest.mark.parametrize("services", [(), ("api",), ("relay", "msilo", "imc", "api")])
def test_serve_becomes_ready_and_exits_0_on_sigterm(
    database_url: str, services: tuple[str, ...]
) -> None:
    port = free_port()
    env = imstack_env(
        **local_ports(),
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_API_HOST="127.0.0.1",
        IMSTACK_API_PORT=str(port),
    )
    proc = start(env, *services)
    wait_ready(proc, port)
    code, out = stop(proc)
    assert code == 0, out
    assert "stopped cleanly" in out


def test_serve_logs_json_lines_when_asked(database_url: str) -> None:
    port = free_port()
    env = imstack_env(
        **local_ports(),
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_API_HOST="127.0.0.1",
        IMSTACK_API_PORT=str(port),
        IMSTACK_LOG_FORMAT="json",
    )
    proc = start(env, "api")
    wait_ready(proc, port)
    code, out = stop(proc, signal.SIGINT)
    assert code == 0

    records = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert any(r["msg"] == "stopped cleanly" and r["level"] == "INFO" for r in records)
    assert all({"ts", "level", "logger", "msg"} <= set(r) for r in records)
    # uvicorn's lines come without its colour-escaped copy of the message.
    assert any(r["logger"].startswith("uvicorn") for r in records)
    assert not any("color_message" in r for r in records)
    assert "\x1b" not in out and "\\u001b" not in out


def test_serve_exits_nonzero_when_the_api_port_is_taken(database_url: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = imstack_env(
            **local_ports(),
            IMSTACK_DATABASE_URL=database_url,
            IMSTACK_API_HOST="127.0.0.1",
            IMSTACK_API_PORT=str(port),
        )
        proc = start(env, "api")
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert "Traceback" not in out, out
    reason = f"the API cannot listen on 127.0.0.1:{port} (IMSTACK_API_PORT)"
    assert out.strip().splitlines()[-1] == f"imstack: service failed: api: {reason}"


def test_embedded_database_serves_persists_and_stops(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "imstack-data"
    env = imstack_env(
        **local_ports(),
        IMSTACK_DATA_DIR=str(data),
        IMSTACK_API_HOST="127.0.0.1",
        IMSTACK_API_PORT=str(port),
        IMSTACK_DOMAIN="example.test",
    )
    proc = start(env)
    startup = wait_ready(proc, port, timeout=60)
    # A CLI command joins the running embedded server rather than starting another.
    added = run_imstack(
        "user", "add", "alice", "--password-stdin", env=env, stdin="alice-secret-1\n"
    )
    assert added.returncode == 0, added.stderr
    code, out = stop(proc, signal.SIGINT)
    assert code == 0, out
    assert f"data in {data.resolve() / 'postgres'}" in out
    assert not (data / "postgres" / "postmaster.pid").exists(), "embedded server left running"

    # A second start reuses the data.
    proc = start(env)
    wait_ready(proc, port, timeout=60)
    listed = run_imstack("user", "list", env=env)
    assert "alice@example.test" in listed.stdout
    code, out = stop(proc)
    assert code == 0, out
    assert not (data / "postgres" / "postmaster.pid").exists()
    print(f"embedded start-up to ready: {startup:.1f}s")

    # Without a running server, a CLI command starts it for its own duration only.
    listed = run_imstack("user", "list", env=env)
    assert "alice@example.test" in listed.stdout
    assert not (data / "postgres" / "postmaster.pid").exists()


def _failed_start(env: dict[str, str], *services: str) -> list[str]:
    """``imstack serve`` that must stop at once: exit code 1, no traceback; its output lines."""
    proc = start(env, *services)
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"still running:\n{proc.communicate()[0]}") from None
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    return out.strip().splitlines()


@pytest.mark.parametrize("which", ["msrp-tcp", "sip-udp", "sip-tcp"])
def test_a_relay_port_in_use_is_one_line_naming_it(database_url: str, which: str) -> None:
    ports = local_ports()
    setting = "IMSTACK_MSRP_PORT" if which == "msrp-tcp" else "IMSTACK_SIP_PORT"
    kind = socket.SOCK_DGRAM if which == "sip-udp" else socket.SOCK_STREAM
    with socket.socket(socket.AF_INET, kind) as taken:
        taken.bind(("127.0.0.1", 0))
        if kind == socket.SOCK_STREAM:
            taken.listen()
        port = taken.getsockname()[1]
        ports[setting] = str(port)
        lines = _failed_start(imstack_env(**ports, IMSTACK_DATABASE_URL=database_url), "relay")
    what = "MSRP" if which == "msrp-tcp" else "SIP"
    reason = f"{what} cannot listen on 127.0.0.1:{port} ({setting}): Address already in use"
    assert lines[-1] == f"imstack: service failed: relay: {reason}"
    assert any(line.endswith(f"ERROR   shared.lifecycle: relay: {reason}") for line in lines)


def _pair(folder: Path) -> tuple[Path, Path]:
    from services.relay.tls import write_selfsigned

    cert, key = folder / "cert.pem", folder / "key.pem"
    write_selfsigned(cert, key, ["localhost"])
    return cert, key


@pytest.mark.parametrize(
    "case",
    ["missing-cert", "key-is-a-folder", "key-not-pem", "cert-not-pem", "mismatch", "key-empty"],
)
def test_an_unusable_tls_certificate_or_key_is_one_line_naming_it(
    database_url: str, tmp_path: Path, case: str
) -> None:
    cert, key = _pair(tmp_path / "one")
    other_cert, _ = _pair(tmp_path / "two")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("hello\n")
    settings, expected = {
        "missing-cert": (
            {"IMSTACK_TLS_CERT": str(tmp_path / "nope.pem"), "IMSTACK_TLS_KEY": str(key)},
            f"cannot read the TLS certificate {tmp_path / 'nope.pem'} (IMSTACK_TLS_CERT): "
            "No such file or directory",
        ),
        "key-is-a-folder": (
            {"IMSTACK_TLS_CERT": str(cert), "IMSTACK_TLS_KEY": str(tmp_path)},
            f"cannot read the TLS key {tmp_path} (IMSTACK_TLS_KEY): Is a directory",
        ),
        "key-not-pem": (
            {"IMSTACK_TLS_CERT": str(cert), "IMSTACK_TLS_KEY": str(garbage)},
            f"the TLS key {garbage} (IMSTACK_TLS_KEY) is not a PEM private key",
        ),
        "cert-not-pem": (
            {"IMSTACK_TLS_CERT": str(garbage), "IMSTACK_TLS_KEY": str(key)},
            f"the TLS certificate {garbage} (IMSTACK_TLS_CERT) is not a PEM certificate",
        ),
        "mismatch": (
            {"IMSTACK_TLS_CERT": str(other_cert), "IMSTACK_TLS_KEY": str(key)},
            f"cannot use the TLS certificate {other_cert} (IMSTACK_TLS_CERT) with the key {key} "
            "(IMSTACK_TLS_KEY): the key does not belong to it",
        ),
        "key-empty": (
            {"IMSTACK_TLS_CERT": str(cert), "IMSTACK_TLS_KEY": ""},
            "IMSTACK_TLS_CERT and IMSTACK_TLS_KEY must be set together",
        ),
    }[case]
    env = imstack_env(**local_ports(), **settings, IMSTACK_DATABASE_URL=database_url)
    lines = _failed_start(env, "relay")
    assert lines[-1] == f"imstack: service failed: relay: {expected}"


def test_empty_tls_settings_mean_no_tls(database_url: str) -> None:
    port = free_port()
    env = imstack_env(
        **local_ports(),
        IMSTACK_DATABASE_URL=database_url,
        IMSTACK_API_HOST="127.0.0.1",
        IMSTACK_API_PORT=str(port),
        IMSTACK_TLS_CERT="",
        IMSTACK_TLS_KEY="",
    )
    proc = start(env, "relay", "api")
    wait_ready(proc, port)
    sip_port = int(env["IMSTACK_SIP_PORT"])
    for _ in range(100):  # the relay's listeners come up beside the API
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", sip_port)) == 0:
                break
        time.sleep(0.1)
    code, out = stop(proc)
    assert code == 0, out
    listening = [line for line in out.splitlines() if "SIP listening on" in line]
    assert listening and "tls:" not in listening[0], out
