"""Who should get an e-mail about messages stored for them (``email_notices`` table)."""

from __future__ import annotations

from dataclasses import dataclass

from shared.db.types import Executor


@dataclass(frozen=True)
class PendingNotice:
    user_id: int
    address: str  # user@domain
    email: str
    display_name: str | None
    count: int  # messages stored since the last e-mail
    since: int  # offline_messages.id covered by the previous e-mail (exclusive bound)
    upto: int  # highest offline_messages.id covered
    senders: tuple[str, ...]  # distinct sender URIs, oldest first


async def due_notices(conn: Executor, *, interval: float, limit: int = 100) -> list[PendingNotice]:
    """Users with unannounced stored messages whose last e-mail is older than ``interval``
    seconds (and whose retry time, after an SMTP failure, has come)."""
    rows = await conn.fetch(
        """
        SELECT u.id AS user_id, u.username || '@' || u.domain AS address, u.email,
               u.display_name, count(m.id) AS count, max(m.id) AS upto,
               coalesce(n.notified_upto, 0) AS since,
               array_agg(m.sender_uri ORDER BY m.id) AS senders
        FROM users u
        LEFT JOIN email_notices n ON n.user_id = u.id
        JOIN offline_messages m ON m.recipient = u.username || '@' || u.domain
                               AND m.id > coalesce(n.notified_upto, 0)
                               AND m.expires_at > now()
        WHERE u.email IS NOT NULL AND u.email <> '' AND u.notify_email AND NOT u.disabled
          AND (n.last_sent_at IS NULL
               OR n.last_sent_at <= now() - make_interval(secs => $1))
          AND (n.retry_at IS NULL OR n.retry_at <= now())
        GROUP BY u.id, n.notified_upto
        ORDER BY min(m.id)
        LIMIT $2
        """,
        float(interval),
        limit,
    )
    return [
        PendingNotice(
            user_id=row["user_id"],
            address=row["address"],
            email=row["email"],
            display_name=row["display_name"],
            count=row["count"],
            since=row["since"],
            upto=row["upto"],
            senders=tuple(dict.fromkeys(row["senders"])),
        )
        for row in rows
    ]


async def mark_sent(conn: Executor, user_id: int, upto: int) -> None:
    await conn.execute(
        """INSERT INTO email_notices (user_id, notified_upto, last_sent_at)
           VALUES ($1, $2, now())
           ON CONFLICT (user_id) DO UPDATE
           SET notified_upto = greatest(email_notices.notified_upto, $2),
               last_sent_at = now(), failures = 0, retry_at = NULL""",
        user_id,
        upto,
    )


async def mark_failed(conn: Executor, user_id: int, *, base: float, cap: float) -> float:
    """Record an SMTP failure; the next try waits ``base`` seconds doubled per failure in a
    row, at most ``cap``. Return that wait."""
    failures = await conn.fetchval(
        """INSERT INTO email_notices (user_id, failures, retry_at)
           VALUES ($1, 1, now() + make_interval(secs => least($3::float8, $2::float8)))
           ON CONFLICT (user_id) DO UPDATE
           SET failures = email_notices.failures + 1,
               retry_at = now() + make_interval(
                   secs => least($3::float8, $2::float8 * power(2, email_notices.failures)))
           RETURNING failures""",
        user_id,
        float(base),
        float(cap),
    )
    return float(min(cap, base * 2 ** (int(failures) - 1)))
