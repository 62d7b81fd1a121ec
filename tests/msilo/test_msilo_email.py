"""E-mail notices of stored messages, through a real SMTP server (aiosmtpd)."""

from __future__ import annotations

import email
import socket
from collections.abc import Iterator
from email.message import Message

import asyncpg
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

from services.msilo.email import EmailNotifier
from shared.config import Settings
from shared.db.offline import store_message
from shared.db.users import Address, create_user


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[Envelope] = []

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.envelopes.append(envelope)
        assert isinstance(envelope.content, bytes)
        self.messages.append(email.message_from_bytes(envelope.content))
        return "250 OK"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


async def store(pool: asyncpg.Pool, recipient: str, sender: str, text: str) -> int:
    async with pool.acquire() as conn, conn.transaction():
        new_id = await store_message(
            conn,
            recipient=recipient,
            sender_uri=sender,
            sender_display=None,
            call_id="c1",
            content_type="text/plain",
            body=text.encode(),
            extra_headers=[],
            lifetime=3600,
        )
    assert new_id is not None
    return new_id


def configured(settings: Settings, port: int, **extra: object) -> Settings:
    return settings.model_copy(
        update={
            "smtp_host": "127.0.0.1",
            "smtp_port": port,
            "smtp_starttls": False,
            "smtp_from": "noreply@example.test",
            **extra,
        }
    )


async def test_one_summary_e_mail_per_interval(
    settings: Settings, pool: asyncpg.Pool, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await create_user(
        pool, Address("bob", settings.domain), "pw", display_name="Bob", email="bob@mail.test"
    )
    await create_user(pool, Address("carol", settings.domain), "pw")  # no e-mail address
    bob = f"bob@{settings.domain}"
    await store(pool, bob, "sip:alice@example.test", "first")
    await store(pool, bob, "sip:dave@example.test", "second")
    await store(pool, f"carol@{settings.domain}", "sip:alice@example.test", "x")
    notifier = EmailNotifier(configured(settings, port, msilo_email_interval=3600), pool)

    assert await notifier.run_once() == 1
    (message,) = inbox.messages
    assert message["To"] == "bob@mail.test"
    assert message["From"] == "noreply@example.test"
    assert message["Subject"] == f"2 new messages for {bob}"
    text = message.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "sip:alice@example.test" in text and "sip:dave@example.test" in text
    assert "first" not in text  # bodies are off by default

    # Within the interval: a new message waits for the next e-mail.
    await store(pool, bob, "sip:alice@example.test", "third")
    assert await notifier.run_once() == 0
    assert len(inbox.messages) == 1


async def test_next_e_mail_covers_only_new_messages_and_bodies_when_asked(
    settings: Settings, pool: asyncpg.Pool, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await create_user(pool, Address("bob", settings.domain), "pw", email="bob@mail.test")
    bob = f"bob@{settings.domain}"
    await store(pool, bob, "sip:alice@example.test", "old news")
    notifier = EmailNotifier(
        configured(settings, port, msilo_email_interval=0, msilo_email_bodies=True), pool
    )
    assert await notifier.run_once() == 1
    assert await notifier.run_once() == 0  # nothing new
    await store(pool, bob, "sip:erin@example.test", "fresh ✓")
    assert await notifier.run_once() == 1
    latest = inbox.messages[-1]
    assert latest["Subject"] == f"1 new message for {bob}"
    text = latest.get_payload(decode=True).decode()  # type: ignore[union-attr]
    assert "sip:erin@example.test: fresh ✓" in text
    assert "old news" not in text


async def test_smtp_failure_is_retried_later_and_never_touches_stored_messages(
    settings: Settings, pool: asyncpg.Pool
) -> None:
    await create_user(pool, Address("bob", settings.domain), "pw", email="bob@mail.test")
    bob = f"bob@{settings.domain}"
    await store(pool, bob, "sip:alice@example.test", "keep me")
    dead = configured(settings, free_port(), msilo_email_interval=0)  # nothing listens
    notifier = EmailNotifier(dead, pool)
    assert await notifier.run_once() == 0
    assert notifier.failed == 1
    assert await pool.fetchval("SELECT count(*) FROM offline_messages") == 1
    retry_in = await pool.fetchval("SELECT extract(epoch FROM retry_at - now()) FROM email_notices")
    assert 20 < retry_in <= 30  # backed off, not hammering the server
    assert await notifier.run_once() == 0  # not due again yet
    assert notifier.failed == 1


async def test_users_who_opted_out_get_no_e_mail(
    settings: Settings, pool: asyncpg.Pool, smtp: tuple[Inbox, int]
) -> None:
    inbox, port = smtp
    await create_user(pool, Address("bob", settings.domain), "pw", email="bob@mail.test")
    await pool.execute("UPDATE users SET notify_email = false")
    await store(pool, f"bob@{settings.domain}", "sip:alice@example.test", "x")
    assert await EmailNotifier(configured(settings, port), pool).run_once() == 0
    assert inbox.messages == []
