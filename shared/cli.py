"""The ``imstack`` command line."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from importlib.metadata import version
from typing import Annotated, NoReturn, TypeVar

import asyncpg
import typer

from shared.config import Settings, SettingsError, load_settings, settings_table
from shared.db import tokens as tokens_db
from shared.db import users as users_db
from shared.db.embedded import EmbeddedDatabaseError, EmbeddedPostgres
from shared.db.migrate import migrate as apply_migrations
from shared.db.pool import DatabaseUnavailable, retry_connect
from shared.lifecycle import SERVICES, ServiceFailed, run_services, service_main
from shared.logs import configure_logging

T = TypeVar("T")

app = typer.Typer(
    help="imstack: MSRP relay, SIP registrar and router, offline messages and chat rooms.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
user_app = typer.Typer(
    help="Manage users (named by address: alice@example.com).", no_args_is_help=True
)
app.add_typer(user_app, name="user")
token_app = typer.Typer(
    help="Control API bearer tokens (stored hashed; shown once, at creation).",
    no_args_is_help=True,
)
app.add_typer(token_app, name="token")
tls_app = typer.Typer(help="TLS certificates.", no_args_is_help=True)
app.add_typer(tls_app, name="tls")
room_app = typer.Typer(
    help="Chat rooms (as the API and the '#' commands make them; name or name@<conference "
    "domain>).",
    no_args_is_help=True,
)
app.add_typer(room_app, name="room")
messages_app = typer.Typer(
    help="Offline messages (the store msilo delivers).", no_args_is_help=True
)
app.add_typer(messages_app, name="messages")

EXIT_FAILURE = 1
EXIT_UNAVAILABLE = 2  # bad configuration or a database that cannot be reached


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    typer.echo(f"imstack: {message}", err=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"imstack {version('imstack')}")
        raise typer.Exit()


@app.callback()
def main_options(
    show_version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """imstack: MSRP relay, SIP registrar and router, offline messages and chat rooms."""


def settings_or_exit() -> Settings:
    try:
        settings = load_settings()
    except SettingsError as exc:
        for line in exc.lines:
            typer.echo(f"imstack: {line}", err=True)
        raise typer.Exit(EXIT_UNAVAILABLE) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


@contextmanager
def database(settings: Settings, *, announce: bool = False) -> Iterator[str]:
    """The database URL: the configured one, or the embedded server (started if needed)."""
    if settings.database_url:
        yield settings.database_url
        return
    embedded = EmbeddedPostgres(settings.data_dir)
    try:
        url = embedded.start()
    except EmbeddedDatabaseError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    if announce:
        typer.echo(f"imstack: embedded PostgreSQL, data in {embedded.pgdata}", err=True)
    try:
        yield url
    finally:
        embedded.stop()


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop where it is installed (it roughly doubles the relay's message rate)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(coro: Awaitable[T]) -> T:
    """Run a coroutine; a database that cannot be reached becomes one line and exit code 2."""

    async def guarded() -> T:
        return await coro

    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(guarded())
    except DatabaseUnavailable as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    except (users_db.UserError, tokens_db.TokenError) as exc:
        fail(str(exc))


async def with_connection(
    settings: Settings, url: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
) -> T:
    conn: asyncpg.Connection = await retry_connect(
        url,
        lambda: asyncpg.connect(url, timeout=10),
        timeout=settings.database_connect_timeout,
    )
    try:
        await apply_migrations(conn)
        return await work(conn)
    finally:
        await conn.close()


@app.command()
def serve(
    service: Annotated[
        list[str] | None,
        typer.Argument(
            help=f"Services to run: {', '.join(SERVICES)}. None: all of them in one process.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run the services (all of them, or those named) until SIGTERM or Ctrl-C."""
    names = service or list(SERVICES)
    unknown = [name for name in names if name not in SERVICES]
    if unknown:
        fail(
            f"unknown service {unknown[0]!r} (choose from {', '.join(SERVICES)})", EXIT_UNAVAILABLE
        )
    settings = settings_or_exit()
    with database(settings, announce=True) as url:
        try:
            run_async(run_services({n: service_main(n) for n in names}, settings, url))
        except ServiceFailed as exc:
            fail(f"service failed: {exc}")


@app.command()
def migrate() -> None:
    """Apply pending database migrations (services also do this at start)."""
    settings = settings_or_exit()
    with database(settings) as url:
        applied = run_async(with_connection(settings, url, lambda conn: _no_op()))
    del applied
    typer.echo("database is up to date")


async def _no_op() -> None:
    return None


@app.command("settings")
def show_settings() -> None:
    """Print the configuration reference (every IMSTACK_* variable) as a Markdown table."""
    typer.echo(settings_table(), nl=False)


def _address(settings: Settings, text: str) -> users_db.Address:
    try:
        return users_db.parse_address(text, settings.domain)
    except users_db.UserError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)


def _read_password(settings: Settings, addr: users_db.Address, password_stdin: bool) -> str:
    """The new password, from standard input or a prompt, checked against the password rule
    (``IMSTACK_PASSWORD_MIN_LENGTH``) before any database is touched."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        fail("no terminal to ask for the password on; pipe it in with --password-stdin")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if not password:
        fail("the password must not be empty")
    try:
        users_db.check_password(addr, password, settings.password_min_length)
    except users_db.WeakPassword as exc:
        fail(str(exc))
    return password


PasswordStdin = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]
AddressArg = Annotated[str, typer.Argument(help="The user's address, e.g. alice@example.com.")]


@user_app.command("add")
def user_add(
    address: AddressArg,
    display_name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    email: Annotated[str | None, typer.Option(help="E-mail address for notices.")] = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Create a user (password from a prompt, or --password-stdin; at least
    IMSTACK_PASSWORD_MIN_LENGTH characters, not the user name)."""
    settings = settings_or_exit()
    addr = _address(settings, address)
    password = _read_password(settings, addr, password_stdin)
    with database(settings) as url:
        run_async(
            with_connection(
                settings,
                url,
                lambda conn: users_db.create_user(
                    conn, addr, password, display_name=display_name, email=email
                ),
            )
        )
    typer.echo(f"created {addr}")


@user_app.command("list")
def user_list(
    domain: Annotated[str | None, typer.Option(help="Only users of this domain.")] = None,
) -> None:
    """List users."""
    settings = settings_or_exit()
    with database(settings) as url:
        found = run_async(
            with_connection(
                settings, url, lambda conn: users_db.list_users(conn, domain=domain, limit=10_000)
            )
        )
    for user in found:
        state = "disabled" if user.disabled else "active"
        typer.echo(f"{user.address}\t{state}\t{user.display_name or ''}")


@user_app.command("show")
def user_show(address: AddressArg) -> None:
    """Show one user (never their credentials)."""
    settings = settings_or_exit()
    addr = _address(settings, address)
    with database(settings) as url:
        user = run_async(with_connection(settings, url, lambda c: users_db.get_user(c, addr)))
    if user is None:
        fail(f"no such user: {addr}")
    typer.echo(f"address:      {user.address}")
    typer.echo(f"display name: {user.display_name or '-'}")
    typer.echo(f"e-mail:       {user.email or '-'}")
    typer.echo(f"state:        {'disabled' if user.disabled else 'active'}")
    typer.echo(f"created:      {user.created_at.isoformat(timespec='seconds')}")


@user_app.command("passwd")
def user_passwd(address: AddressArg, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password (at least IMSTACK_PASSWORD_MIN_LENGTH characters, not the user
    name)."""
    settings = settings_or_exit()
    addr = _address(settings, address)
    password = _read_password(settings, addr, password_stdin)
    with database(settings) as url:
        run_async(
            with_connection(settings, url, lambda c: users_db.set_password(c, addr, password))
        )
    typer.echo(f"password of {addr} changed")


@user_app.command("disable")
def user_disable(address: AddressArg) -> None:
    """Disable a user: registration, messages and MSRP AUTH are refused."""
    _set_disabled(address, True)


@user_app.command("enable")
def user_enable(address: AddressArg) -> None:
    """Enable a disabled user again."""
    _set_disabled(address, False)


def _set_disabled(address: str, disabled: bool) -> None:
    settings = settings_or_exit()
    addr = _address(settings, address)
    with database(settings) as url:
        run_async(
            with_connection(settings, url, lambda c: users_db.set_disabled(c, addr, disabled))
        )
    typer.echo(f"{addr} {'disabled' if disabled else 'enabled'}")


@user_app.command("remove")
def user_remove(address: AddressArg) -> None:
    """Delete a user."""
    settings = settings_or_exit()
    addr = _address(settings, address)
    with database(settings) as url:
        run_async(with_connection(settings, url, lambda c: users_db.delete_user(c, addr)))
    typer.echo(f"removed {addr}")


TokenNameArg = Annotated[str, typer.Argument(help="The token's name, e.g. monitoring.")]


@token_app.command("create")
def token_create(
    name: TokenNameArg,
    read_only: Annotated[
        bool, typer.Option("--read-only", help="The token may only read, never change.")
    ] = False,
) -> None:
    """Create a token and print it (once: only its hash is stored)."""
    settings = settings_or_exit()
    try:
        tokens_db.check_name(name)
    except tokens_db.TokenError as exc:
        fail(str(exc), EXIT_UNAVAILABLE)
    scope = tokens_db.Scope.READ if read_only else tokens_db.Scope.ADMIN
    with database(settings) as url:
        made = run_async(
            with_connection(settings, url, lambda c: tokens_db.create_token(c, name, scope))
        )
    typer.echo(f"created {scope.value} token {name!r}; it is shown only now:", err=True)
    typer.echo(made.secret)


@token_app.command("list")
def token_list() -> None:
    """List tokens (name, scope, state, created, last used); never the tokens themselves."""
    settings = settings_or_exit()
    with database(settings) as url:
        found = run_async(with_connection(settings, url, tokens_db.list_tokens))
    for token in found:
        state = "revoked" if token.revoked else "active"
        created = token.created_at.isoformat(timespec="seconds")
        used = token.last_used_at.isoformat(timespec="seconds") if token.last_used_at else "never"
        typer.echo(f"{token.name}\t{token.scope.value}\t{state}\t{created}\t{used}")


@token_app.command("revoke")
def token_revoke(name: TokenNameArg) -> None:
    """Revoke a token: a running API refuses it within IMSTACK_API_TOKEN_CACHE_SECONDS."""
    settings = settings_or_exit()
    with database(settings) as url:
        run_async(with_connection(settings, url, lambda c: tokens_db.revoke_token(c, name)))
    typer.echo(f"revoked {name}")


# -- rooms and offline messages: the API's service functions, straight on the database ----

RoomArg = Annotated[str, typer.Argument(help="The room: name, or name@<conference domain>.")]


def _room_work(
    settings: Settings, work: Callable[[asyncpg.Connection, str], Awaitable[T]], room: str
) -> T:
    """Run ``work(conn, room key)`` in one transaction; a refused room change is one line."""
    from services.api import room_ops
    from services.imc.worker import config_from

    try:
        key = room_ops.room_key(config_from(settings), room)
    except room_ops.RoomError as exc:
        fail(str(exc))

    async def in_transaction(conn: asyncpg.Connection) -> T:
        async with conn.transaction():
            return await work(conn, key)

    with database(settings) as url:
        try:
            return run_async(with_connection(settings, url, in_transaction))
        except room_ops.RoomError as exc:
            fail(str(exc))


@room_app.command("create")
def room_create(
    room: RoomArg,
    owner: Annotated[str, typer.Option(help="The owner and first member (user@domain).")],
    private: Annotated[
        bool, typer.Option("--private", help="By invitation only; listed only to members.")
    ] = False,
    topic: Annotated[str | None, typer.Option(help="The room's topic.")] = None,
) -> None:
    """Create a persistent room, as #create (and the API) does."""
    from services.api import room_ops
    from services.imc.worker import config_from

    settings = settings_or_exit()
    try:
        owner_aor = room_ops.user_address(config_from(settings), owner)
    except room_ops.RoomError as exc:
        fail(str(exc))

    async def create(conn: asyncpg.Connection, key: str) -> str:
        await room_ops.create_room(conn, key, owner=owner_aor, private=private, topic=topic)
        return key

    typer.echo(f"created {_room_work(settings, create, room)} (owner {owner_aor})")


@room_app.command("list")
def room_list(
    name: Annotated[str | None, typer.Option(help="Substring (any case) of the name.")] = None,
    member: Annotated[str | None, typer.Option(help="Only rooms this user is in.")] = None,
    private: Annotated[
        bool | None, typer.Option("--private/--public", help="Only private (or public) rooms.")
    ] = None,
) -> None:
    """List rooms: address, private or public, members, invited, topic."""
    from services.api import room_ops
    from services.imc.worker import config_from
    from shared.db import rooms as rooms_db

    settings = settings_or_exit()
    config = config_from(settings)
    try:
        aor = room_ops.user_address(config, member) if member is not None else None
    except room_ops.RoomError as exc:
        fail(str(exc))
    with database(settings) as url:
        found = run_async(
            with_connection(
                settings,
                url,
                lambda conn: rooms_db.list_rooms(
                    conn,
                    config.conference_domain,
                    name=name,
                    member=aor,
                    private=private,
                    limit=100_000,
                    offset=0,
                ),
            )
        )
    for r in found:
        kind = "private" if r.private else "public"
        typer.echo(f"{r.key}\t{kind}\t{r.member_count}\t{r.invited_count}\t{r.topic or ''}")


@room_app.command("show")
def room_show(room: RoomArg) -> None:
    """Show one room: owner, options, member counts."""
    from services.api import room_ops
    from shared.db import rooms as rooms_db

    settings = settings_or_exit()

    async def show(conn: asyncpg.Connection, key: str) -> rooms_db.RoomSummary:
        summary = await rooms_db.get_room_summary(conn, key)
        if summary is None:
            raise room_ops.RoomNotFound(f"no such room: {key}")
        return summary

    found = _room_work(settings, show, room)
    typer.echo(f"address:  {found.key}")
    typer.echo(f"owner:    {found.owner}")
    typer.echo(f"private:  {'yes' if found.private else 'no'}")
    typer.echo(f"topic:    {found.topic or '-'}")
    typer.echo(f"members:  {found.member_count}")
    typer.echo(f"invited:  {found.invited_count}")
    typer.echo(f"created:  {found.created_at.isoformat(timespec='seconds')}")


@room_app.command("destroy")
def room_destroy(room: RoomArg) -> None:
    """Destroy a room; its members are told, as #destroy does."""
    from services.api import room_ops

    settings = settings_or_exit()
    told = _room_work(settings, room_ops.destroy_room, room)
    typer.echo(f"destroyed {room}; {told} member(s) notified")


@room_app.command("members")
def room_members(room: RoomArg) -> None:
    """List a room's members: address, role, state (active or banned), invited by."""
    from services.api import room_ops
    from shared.db import rooms as rooms_db

    settings = settings_or_exit()

    async def members(conn: asyncpg.Connection, key: str) -> list[rooms_db.MemberRow]:
        summary = await rooms_db.get_room_summary(conn, key)
        if summary is None:
            raise room_ops.RoomNotFound(f"no such room: {key}")
        return await rooms_db.member_rows(conn, summary.id)

    for m in _room_work(settings, members, room):
        typer.echo(f"{m.member}\t{m.role.value}\t{m.state}\t{m.invited_by or ''}")


@messages_app.command("count")
def messages_count(address: AddressArg) -> None:
    """How many offline messages are stored for a user."""
    from services.api.routers.registrations import existing_user
    from shared.db import offline as offline_db

    settings = settings_or_exit()

    async def count(conn: asyncpg.Connection) -> int:
        addr = await existing_user(conn, address, settings.domain)
        return await offline_db.count_messages(conn, str(addr))

    with database(settings) as url:
        typer.echo(str(run_async(with_connection(settings, url, count))))


@messages_app.command("purge")
def messages_purge(
    before: Annotated[
        str,
        typer.Option(
            help="Delete every message received before this time: ISO 8601 with a zone "
            "(2026-01-31T00:00:00+00:00)."
        ),
    ],
) -> None:
    """Delete the offline messages of all users received before a date, in batches."""
    from datetime import datetime

    from services.api.message_ops import purge_before

    settings = settings_or_exit()
    try:
        when = datetime.fromisoformat(before)
    except ValueError:
        fail(f"--before: not an ISO 8601 date and time: {before!r}")
    if when.tzinfo is None:
        fail("--before: give a time zone (e.g. +00:00 or Z)")
    with database(settings) as url:
        purged, batches = run_async(
            with_connection(settings, url, lambda conn: purge_before(conn, when))
        )
    typer.echo(f"purged {purged} message(s) in {batches} batch(es)")


@tls_app.command("selfsigned")
def tls_selfsigned(
    host: Annotated[
        list[str] | None,
        typer.Option(
            help="Name or address the certificate is for (repeatable). "
            "Default: IMSTACK_DOMAIN, localhost, 127.0.0.1, ::1."
        ),
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Validity in days.")] = 365,
) -> None:
    """Write a self-signed development certificate to <IMSTACK_DATA_DIR>/tls/."""
    from services.relay.tls import write_selfsigned

    settings = settings_or_exit()
    hosts = host or list(dict.fromkeys([settings.domain, "localhost", "127.0.0.1", "::1"]))
    folder = settings.data_dir / "tls"
    cert, key = folder / "cert.pem", folder / "key.pem"
    write_selfsigned(cert, key, hosts, days)
    typer.echo(f"wrote {cert.resolve()} and {key.resolve()} for {', '.join(hosts)}")
    typer.echo("use them with:")
    typer.echo(f"  IMSTACK_TLS_CERT={cert.resolve()}")
    typer.echo(f"  IMSTACK_TLS_KEY={key.resolve()}")


def main() -> None:
    app()
