"""E-mail notices: tell users by e-mail that messages were stored for them (aiosmtplib).

At most one e-mail per user per ``IMSTACK_MSILO_EMAIL_INTERVAL``, summarising how many
messages arrived and from whom (their text only with ``IMSTACK_MSILO_EMAIL_BODIES``). It runs
beside the delivery worker: an SMTP failure is retried with backoff and never blocks or undoes
storing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from email.message import EmailMessage

import aiosmtplib
import asyncpg

from shared.config import Settings
from shared.db.email_notices import PendingNotice, due_notices, mark_failed, mark_sent
from shared.db.offline import list_messages

log = logging.getLogger(__name__)

MAX_BODIES = 20  # stored messages quoted in one e-mail when bodies are on
FIRST_RETRY = 30.0  # seconds before the first retry after an SMTP failure (then doubled)
MAX_BACKOFF = 3600.0  # longest wait between attempts after repeated SMTP failures


class EmailNotifier:
    def __init__(self, settings: Settings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self.pool = pool
        self.sent = 0
        self.failed = 0

    @property
    def enabled(self) -> bool:
        return self.settings.smtp_host is not None

    async def run(self, stop: asyncio.Event) -> None:
        if not self.enabled:
            return
        period = max(1.0, min(60.0, self.settings.msilo_email_interval))
        while not stop.is_set():
            try:
                await self.run_once()
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                log.warning("e-mail notices: database unavailable (%s); retrying", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), period)

    async def run_once(self) -> int:
        """Send what is due now; return how many e-mails went out."""
        notices = await due_notices(self.pool, interval=self.settings.msilo_email_interval)
        sent = 0
        for notice in notices:
            if await self._send(notice):
                sent += 1
        return sent

    async def _send(self, notice: PendingNotice) -> bool:
        message = await self._compose(notice)
        s = self.settings
        try:
            await aiosmtplib.send(
                message,
                hostname=s.smtp_host,
                port=s.smtp_port,
                use_tls=s.smtp_tls,
                start_tls=s.smtp_starttls and not s.smtp_tls,
                username=s.smtp_username,
                password=s.smtp_password,
                timeout=30,
            )
        except (aiosmtplib.SMTPException, OSError, TimeoutError) as exc:
            self.failed += 1
            delay = await mark_failed(self.pool, notice.user_id, base=FIRST_RETRY, cap=MAX_BACKOFF)
            log.warning(
                "e-mail notice to %s failed (%s); next try in %.0fs", notice.email, exc, delay
            )
            return False
        await mark_sent(self.pool, notice.user_id, notice.upto)
        self.sent += 1
        log.info("e-mailed %s about %d stored message(s)", notice.address, notice.count)
        return True

    async def _compose(self, notice: PendingNotice) -> EmailMessage:
        s = self.settings
        count = notice.count
        noun = "message" if count == 1 else "messages"
        message = EmailMessage()
        message["From"] = s.smtp_from or f"imstack@{s.domain}"
        message["To"] = notice.email
        message["Subject"] = f"{count} new {noun} for {notice.address}"
        lines = [
            f"Hello {notice.display_name or notice.address},",
            "",
            f"{count} {noun} arrived for {notice.address} while you were offline, from:",
            *(f"  {sender}" for sender in notice.senders),
            "",
            "They will be delivered when your SIP client registers again.",
        ]
        if s.msilo_email_bodies:
            stored = [
                m
                for m in await list_messages(self.pool, notice.address)
                if notice.since < m.id <= notice.upto
            ]
            quoted = [m for m in stored if m.content_type.lower().startswith("text/")]
            if quoted:
                lines += ["", "Messages:"]
                for item in quoted[:MAX_BODIES]:
                    text = item.body.decode("utf-8", "replace")
                    lines.append(f"  {item.sender_uri}: {text}")
        message.set_content("\n".join(lines))
        return message
