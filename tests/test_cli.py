from __future__ import annotations

import asyncpg
import pytest

from shared.digest import Algorithm, ha1
from tests.cli_helpers import imstack_env, run_imstack


@pytest.fixture
def env(database_url: str) -> dict[str, str]:
    return imstack_env(IMSTACK_DATABASE_URL=database_url, IMSTACK_DOMAIN="example.test")


def test_version_and_help() -> None:
    result = run_imstack("--version", env=imstack_env())
    assert result.returncode == 0
    assert result.stdout.startswith("imstack ")
    for command in ([], ["serve"], ["migrate"], ["user"], ["user", "add"], ["settings"]):
        shown = run_imstack(*command, "--help", env=imstack_env())
        assert shown.returncode == 0, (command, shown.stderr)
        assert "Usage" in shown.stdout


async def test_user_lifecycle_against_the_database(env: dict[str, str], database_url: str) -> None:
    added = run_imstack(
        "user",
        "add",
        "alice@Example.TEST",
        "--display-name",
        "Alice",
        "--email",
        "alice@mail.test",
        "--password-stdin",
        env=env,
        stdin="s3cret\n",
    )
    assert added.returncode == 0, added.stderr
    assert "created alice@example.test" in added.stdout
    bare = run_imstack("user", "add", "bob", "--password-stdin", env=env, stdin="pw\n")
    assert bare.returncode == 0, bare.stderr  # the default domain is filled in

    listed = run_imstack("user", "list", env=env)
    assert listed.stdout.splitlines() == [
        "alice@example.test\tactive\tAlice",
        "bob@example.test\tactive\t",
    ]
    shown = run_imstack("user", "show", "alice@example.test", env=env)
    assert "Alice" in shown.stdout and "alice@mail.test" in shown.stdout
    assert "s3cret" not in shown.stdout

    conn = await asyncpg.connect(database_url)
    try:
        row = await conn.fetchrow("SELECT * FROM users WHERE username = 'alice'")
        assert row["ha1_md5"] == ha1(Algorithm.MD5, "alice", "example.test", "s3cret")
        assert row["ha1_sha256"] == ha1(Algorithm.SHA256, "alice", "example.test", "s3cret")
        assert "s3cret" not in repr(dict(row))

        changed = run_imstack(
            "user", "passwd", "alice@example.test", "--password-stdin", env=env, stdin="new\n"
        )
        assert changed.returncode == 0, changed.stderr
        assert await conn.fetchval("SELECT ha1_md5 FROM users WHERE username = 'alice'") == ha1(
            Algorithm.MD5, "alice", "example.test", "new"
        )

        assert run_imstack("user", "disable", "alice@example.test", env=env).returncode == 0
        assert await conn.fetchval("SELECT disabled FROM users WHERE username = 'alice'")
        assert "disabled" in run_imstack("user", "list", env=env).stdout
        assert run_imstack("user", "enable", "alice@example.test", env=env).returncode == 0
        assert not await conn.fetchval("SELECT disabled FROM users WHERE username = 'alice'")

        assert run_imstack("user", "remove", "bob@example.test", env=env).returncode == 0
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
    finally:
        await conn.close()


def test_user_errors_are_one_clear_line(env: dict[str, str]) -> None:
    run_imstack("user", "add", "carol@example.test", "--password-stdin", env=env, stdin="x\n")
    again = run_imstack(
        "user", "add", "carol@example.test", "--password-stdin", env=env, stdin="x\n"
    )
    assert again.returncode == 1
    assert again.stderr.strip() == "imstack: user carol@example.test already exists"

    missing = run_imstack("user", "remove", "nobody@example.test", env=env)
    assert missing.returncode == 1
    assert missing.stderr.strip() == "imstack: no such user: nobody@example.test"

    bad = run_imstack("user", "add", "a b@example.test", "--password-stdin", env=env, stdin="x\n")
    assert bad.returncode == 2
    assert "not a valid user name" in bad.stderr

    # No terminal and no --password-stdin: refuse rather than hang or take an empty password.
    no_tty = run_imstack("user", "add", "dave@example.test", env=env)
    assert no_tty.returncode == 1
    assert "--password-stdin" in no_tty.stderr

    empty = run_imstack("user", "add", "erin@example.test", "--password-stdin", env=env, stdin="\n")
    assert empty.returncode == 1
    assert "must not be empty" in empty.stderr


@pytest.mark.parametrize("command", [["serve"], ["migrate"], ["user", "list"]])
def test_unreachable_database_exits_2_with_one_line_naming_the_masked_url(
    command: list[str],
) -> None:
    url = "postgresql://imstack:topsecret@127.0.0.1:1/imstack"
    result = run_imstack(
        *command,
        env=imstack_env(IMSTACK_DATABASE_URL=url, IMSTACK_DATABASE_CONNECT_TIMEOUT="1"),
    )
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(
        "imstack: cannot connect to the database at postgresql://imstack:***@127.0.0.1:1/imstack"
    )
    assert "topsecret" not in result.stderr
    assert "Traceback" not in result.stderr


def test_unknown_database_fails_at_once_with_exit_2(database_url: str) -> None:
    # Unknown database: a permanent error, reported without waiting for the retry timeout.
    url = database_url.replace("/imstack_test_", "/imstack_missing_")
    result = run_imstack(
        "migrate",
        env=imstack_env(IMSTACK_DATABASE_URL=url, IMSTACK_DATABASE_CONNECT_TIMEOUT="60"),
        timeout=20,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("IMSTACK_SIP_PORT", "abc"),
        ("IMSTACK_API_PORT", "70000"),
        ("IMSTACK_LOG_FORMAT", "xml"),
        ("IMSTACK_MSRP_ALLOW_INSECURE_AUTH", "maybe"),
    ],
)
def test_invalid_setting_exits_2_with_one_line_naming_the_variable(
    variable: str, value: str
) -> None:
    result = run_imstack("serve", env=imstack_env(**{variable: value}))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"imstack: invalid setting {variable}={value!r}")


def test_unknown_service_is_refused() -> None:
    result = run_imstack("serve", "mail", env=imstack_env())
    assert result.returncode == 2
    assert "unknown service 'mail'" in result.stderr
