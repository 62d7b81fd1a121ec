from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

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
    for command in (
        [],
        ["serve"],
        ["migrate"],
        ["user"],
        ["user", "add"],
        ["settings"],
        ["room", "create"],
        ["messages", "purge"],
    ):
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
        stdin="s3cret-word-1\n",
    )
    assert added.returncode == 0, added.stderr
    assert "created alice@example.test" in added.stdout
    bare = run_imstack("user", "add", "bob", "--password-stdin", env=env, stdin="bob-secret-1\n")
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
        assert row["ha1_md5"] == ha1(Algorithm.MD5, "alice", "example.test", "s3cret-word-1")
        assert row["ha1_sha256"] == ha1(Algorithm.SHA256, "alice", "example.test", "s3cret-word-1")
        assert "s3cret" not in repr(dict(row))

        changed = run_imstack(
            "user",
            "passwd",
            "alice@example.test",
            "--password-stdin",
            env=env,
            stdin="new-secret-1\n",
        )
        assert changed.returncode == 0, changed.stderr
        assert await conn.fetchval("SELECT ha1_md5 FROM users WHERE username = 'alice'") == ha1(
            Algorithm.MD5, "alice", "example.test", "new-secret-1"
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
    carol = "carol-secret-1\n"
    run_imstack("user", "add", "carol@example.test", "--password-stdin", env=env, stdin=carol)
    again = run_imstack(
        "user", "add", "carol@example.test", "--password-stdin", env=env, stdin=carol
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


async def test_weak_passwords_are_refused_with_one_line_and_exit_1(
    env: dict[str, str], database_url: str
) -> None:
    def add(address: str, password: str, **settings: str) -> subprocess.CompletedProcess[str]:
        return run_imstack(
            "user", "add", address, "--password-stdin", env={**env, **settings}, stdin=password
        )

    short = add("alice@example.test", "nine-char\n")
    assert short.returncode == 1
    assert short.stderr.strip() == "imstack: the password must be at least 10 characters long"
    for weak in ("alexander-the-great\n", "Alexander-The-Great@EXAMPLE.test\n"):
        named = add("alexander-the-great", weak)
        assert named.returncode == 1, weak
        assert named.stderr.strip() == "imstack: the password must not be the user name or address"
    assert add("alice@example.test", "ten-chars!\n").returncode == 0

    def passwd(password: str) -> subprocess.CompletedProcess[str]:
        return run_imstack(
            "user", "passwd", "alice@example.test", "--password-stdin", env=env, stdin=password
        )

    conn = await asyncpg.connect(database_url)
    try:
        assert await conn.fetchval("SELECT count(*) FROM users") == 1
        for weak in ("short\n", "alice\n"):
            refused = passwd(weak)
            assert refused.returncode == 1
            assert refused.stderr.startswith("imstack: the password must")
        assert await conn.fetchval("SELECT ha1_md5 FROM users") == ha1(
            Algorithm.MD5, "alice", "example.test", "ten-chars!"
        )
        assert passwd("a-longer-secret\n").returncode == 0
        assert await conn.fetchval("SELECT ha1_md5 FROM users") == ha1(
            Algorithm.MD5, "alice", "example.test", "a-longer-secret"
        )
    finally:
        await conn.close()

    # The minimum is IMSTACK_PASSWORD_MIN_LENGTH; 0 is not a valid value (1: any non-empty).
    assert add("bob", "b\n", IMSTACK_PASSWORD_MIN_LENGTH="1").returncode == 0
    strict = add("carol", "fifteen-chars-!\n", IMSTACK_PASSWORD_MIN_LENGTH="16")
    assert strict.stderr.strip() == "imstack: the password must be at least 16 characters long"
    off = add("dave", "d\n", IMSTACK_PASSWORD_MIN_LENGTH="0")
    assert off.returncode == 2
    assert "IMSTACK_PASSWORD_MIN_LENGTH" in off.stderr


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


@pytest.mark.parametrize("command", [["user", "list"], ["serve"]])
def test_a_data_dir_that_cannot_be_created_is_one_line_and_exit_2(
    tmp_path: Path, command: list[str]
) -> None:
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("not a folder")
    data = in_the_way / "imstack-data"
    result = run_imstack(*command, env=imstack_env(IMSTACK_DATA_DIR=str(data)))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"imstack: cannot create the data folder {data.resolve()} (IMSTACK_DATA_DIR): "
        "Not a directory"
    ], result.stderr


def test_unknown_service_is_refused() -> None:
    result = run_imstack("serve", "mail", env=imstack_env())
    assert result.returncode == 2
    assert "unknown service 'mail'" in result.stderr


async def test_rooms_from_the_cli_are_the_apis_and_imcs_rooms(
    env: dict[str, str], database_url: str
) -> None:
    conf = "conference.example.test"
    created = run_imstack(
        "room", "create", "Lobby", "--owner", "alice", "--private", "--topic", "hi", env=env
    )
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == f"created lobby@{conf} (owner alice@example.test)"
    assert run_imstack("room", "create", "open", "--owner", "bob", env=env).returncode == 0
    again = run_imstack("room", "create", f"lobby@{conf}", "--owner", "bob", env=env)
    assert (again.returncode, again.stderr.strip()) == (
        1,
        f"imstack: the room exists already: lobby@{conf}",
    )
    bad = run_imstack("room", "create", "lobby@elsewhere.test", "--owner", "bob", env=env)
    assert bad.returncode == 1 and "invalid room" in bad.stderr

    conn = await asyncpg.connect(database_url)
    try:
        # The same rows #create makes; a member added (as #add would) shows in the listings.
        row = await conn.fetchrow("SELECT * FROM rooms WHERE name = 'lobby'")
        assert (row["domain"], row["owner"], row["private"], row["topic"]) == (
            conf,
            "alice@example.test",
            True,
            "hi",
        )
        await conn.execute(
            """INSERT INTO room_members (room_id, member, role)
               VALUES ($1, 'bob@example.test', 'member')""",
            row["id"],
        )
        listed = run_imstack("room", "list", env=env)
        assert listed.stdout.splitlines() == [
            f"lobby@{conf}\tprivate\t2\t0\thi",
            f"open@{conf}\tpublic\t1\t0\t",
        ]
        public = run_imstack("room", "list", "--public", "--member", "bob", env=env)
        assert public.stdout.splitlines() == [f"open@{conf}\tpublic\t1\t0\t"]
        shown = run_imstack("room", "show", "lobby", env=env)
        assert "owner:    alice@example.test" in shown.stdout
        assert "members:  2" in shown.stdout
        members = run_imstack("room", "members", "lobby", env=env)
        assert members.stdout.splitlines() == [
            "alice@example.test\towner\tactive\t",
            "bob@example.test\tmember\tactive\t",
        ]

        destroyed = run_imstack("room", "destroy", "lobby", env=env)
        assert destroyed.returncode == 0, destroyed.stderr
        assert destroyed.stdout.strip() == "destroyed lobby; 2 member(s) notified"
        # Told as #destroy tells them: a MESSAGE from the room to each member.
        notices = await conn.fetch("SELECT from_uri, to_aor, source FROM outbound_messages")
        assert sorted((n["from_uri"], n["to_aor"], n["source"]) for n in notices) == [
            (f"sip:lobby@{conf}", "alice@example.test", "imc"),
            (f"sip:lobby@{conf}", "bob@example.test", "imc"),
        ]
        assert await conn.fetchval("SELECT count(*) FROM rooms") == 1
    finally:
        await conn.close()
    for command in (["show", "lobby"], ["members", "lobby"], ["destroy", "lobby"]):
        missing = run_imstack("room", *command, env=env)
        assert (missing.returncode, missing.stderr.strip()) == (
            1,
            f"imstack: no such room: lobby@{conf}",
        ), command


async def test_messages_count_and_purge(env: dict[str, str], database_url: str) -> None:
    run_imstack("user", "add", "bob", "--password-stdin", env=env, stdin="bob-secret-1\n")
    conn = await asyncpg.connect(database_url)
    try:
        for age in (timedelta(days=10), timedelta(days=5), timedelta(minutes=1)):
            await conn.execute(
                """INSERT INTO offline_messages (recipient, sender_uri, call_id, received_at,
                       expires_at, content_type, body)
                   VALUES ('bob@example.test', 'sip:alice@example.test', 'c',
                           now() - $1::interval, now() + interval '1 day', 'text/plain', 'x')""",
                age,
            )
        counted = run_imstack("messages", "count", "bob", env=env)
        assert (counted.returncode, counted.stdout.strip()) == (0, "3")
        missing = run_imstack("messages", "count", "nobody", env=env)
        assert (missing.returncode, missing.stderr.strip()) == (
            1,
            "imstack: no such user: nobody@example.test",
        )
        cutoff = (datetime.now(UTC) - timedelta(days=1)).isoformat()
        purged = run_imstack("messages", "purge", "--before", cutoff, env=env)
        assert (purged.returncode, purged.stdout.strip()) == (
            0,
            "purged 2 message(s) in 1 batch(es)",
        )
        assert await conn.fetchval("SELECT count(*) FROM offline_messages") == 1
        for bad in ("yesterday", "2024-01-01T00:00:00"):
            refused = run_imstack("messages", "purge", "--before", bad, env=env)
            assert refused.returncode == 1, bad
            assert refused.stderr.startswith("imstack: --before:"), refused.stderr
        assert await conn.fetchval("SELECT count(*) FROM offline_messages") == 1
    finally:
        await conn.close()
