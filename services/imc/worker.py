"""The imc worker: runs room commands and fans chat out, one queued MESSAGE at a time.

Woken by NOTIFY on ``room_inbox`` (the relay queued a MESSAGE to a room) and on
``outbound_done`` (the relay reports a delivery), and by a slow poll (a NOTIFY lost while the
LISTEN connection was down costs latency, never a message).

Each queued MESSAGE is handled in ONE transaction: take (delete) the oldest row of a room
(``FOR UPDATE SKIP LOCKED``), lock and read the room the command acts on, compute the
effects (:mod:`services.imc.executor`, pure), apply the room/member changes and queue the
MESSAGEs for the relay (``outbound_messages``). Replicas share the work without double
fan-out; a crash rolls everything back and the row is handled again. A message that fails
for a reason other than the database being away (a bug, a value the schema refuses) is
dropped alone, in a transaction of its own.

A chat message costs five round trips to the database whatever the room's size: BEGIN,
take the row (and, for chat, its room's lock, in the same statement), read the room with its
members, queue ONE fan-out row carrying the members with a binding and remember the message
in the history (one statement: :func:`shared.db.rooms.queue_fanout`,
``migrations/0015_outbound_fanout.sql``: the relay claims it once and sends the copies),
COMMIT. Finished rows are collected in batches, one statement each (without reading the
bodies of delivered rows back).

When history is kept (the room's history length, else ``IMSTACK_IMC_HISTORY``), each chat
message is remembered in ``room_messages`` in the same transaction, and a member who joins
or accepts gets the room's last messages queued right after the join notice (source
``imc-history``; a replay that cannot be delivered is dropped, never stored offline).

Flood control (``IMSTACK_IMC_MIN_INTERVAL``) compares a member's chat message with the
previous one they sent to the room by the time the relay received each (``received_at``,
``room_members.last_chat_at``): in the database, so it holds across imc processes and
restarts, and a backlog handled at once after an outage is not mistaken for a flood.

Chat for a member with no binding goes straight into the offline store; a chat copy that
fails later (408/480/503) is stored there by the relay in the transaction that records its
outcome. Those stored copies carry no offline notice (only the relay's store path for
MESSAGEs it receives sends notices, and it never sees room traffic), so nothing echoes back
into the room. A failed invitation is withdrawn and the inviter told (Kamailio tells the
invitee, §3.9).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from dataclasses import dataclass, field

import asyncpg

from services.imc.commands import Name, not_registered, parse_command
from services.imc.executor import (
    AddMember,
    Ban,
    Config,
    CreateRoom,
    DestroyRoom,
    Effect,
    Incoming,
    Kind,
    Refused,
    Remember,
    RemoveMember,
    Replay,
    Send,
    SetRole,
    SetTopic,
    Spoke,
    Unban,
    execute,
    history_body,
    refusal,
    target,
)
from shared.config import Settings
from shared.db import offline, rooms
from shared.db.listen import Listener, Notification
from shared.db.offline import GENERATED_HEADER
from shared.db.outbound import DONE_CHANNEL, NewOutbound, queue_message, queue_messages
from shared.db.pool import DATABASE_ERRORS
from shared.db.queue import WakeReason, Wakeup
from shared.db.rooms import INBOX_CHANNEL, InboxMessage, Room
from shared.db.types import Connection

log = logging.getLogger(__name__)

BAD_REQUEST_ERRORS = (asyncpg.IntegrityConstraintViolationError, asyncpg.DataError)
ERROR_BACKOFF = 1.0  # seconds before retrying after a database error, doubling...
MAX_ERROR_BACKOFF = 30.0  # ...up to this
OUTCOME_BATCH = 500  # finished deliveries handled per transaction
#: Final statuses that mean "not reachable now": the chat copy goes to the offline store.
UNREACHABLE = frozenset({408, 480, 503})
#: ``X-Imstack-Generated`` value on room traffic.
GENERATED_VALUE = "room"
SOURCES = [kind.value for kind in Kind]


@dataclass
class ImcStats:
    """Counters since start (logged; the API's statistics read the tables)."""

    handled: int = 0  # room MESSAGEs handled
    commands: Counter[str] = field(default_factory=Counter)  # by command name
    fanned_out: int = 0  # chat copies queued for members
    stored_offline: int = 0  # chat copies put in the offline store
    invitations_failed: int = 0
    replayed: int = 0  # history messages queued for joining members


def config_from(settings: Settings) -> Config:
    return Config(
        command_char=settings.imc_command_char,
        create_on_join=settings.imc_create_on_join,
        domain=settings.domain,
        conference_domain=settings.conference_domain,
        history=settings.imc_history,
        member_limit=settings.imc_member_limit,
        min_interval=settings.imc_min_interval,
    )


def _fanout(sends: list[Send]) -> bool:
    """Whether ``sends`` are one chat message's copies: chat, one From, body and type."""
    if not sends or sends[0].kind is not Kind.CHAT:
        return False
    first = sends[0]
    return all(
        send.kind is Kind.CHAT
        and (send.body is first.body or send.body == first.body)
        and send.from_uri == first.from_uri
        and send.content_type == first.content_type
        for send in sends
    )


def _by_id(row: asyncpg.Record) -> int:
    return int(row["id"])


class ImcWorker:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, database_url: str) -> None:
        self.settings = settings
        self.config = config_from(settings)
        self.pool = pool
        self.wakeup = Wakeup()
        self.listener = Listener(
            database_url, [INBOX_CHANNEL, DONE_CHANNEL], self._on_notify, catch_up=self._catch_up
        )
        self.stats = ImcStats()
        #: room_inbox NOTIFYs not yet matched by a MESSAGE handled, and whether to look
        #: until the inbox is empty (at start, after a poll, a reconnection or an error)
        #: rather than stop once as many MESSAGEs were handled as were NOTIFYed.
        self._inbox_pending = 0
        self._probe = True
        self._command_prefix = self.config.command_char.encode()
        self._outcomes = True  # look at finished deliveries on the next pass

    def _on_notify(self, notification: Notification) -> None:
        if notification.channel == DONE_CHANNEL:
            self._outcomes = True
        else:
            self._inbox_pending += 1
        self.wakeup.wake()

    async def _catch_up(self) -> None:
        self._outcomes = True
        self._probe = True
        self.wakeup.wake()

    async def run(self, stop: asyncio.Event) -> None:
        listening = asyncio.create_task(self.listener.run(stop), name="imc-listen")
        backoff = ERROR_BACKOFF
        try:
            while not stop.is_set():
                poll = self.settings.imc_poll_interval
                try:
                    probe, self._probe = self._probe, False
                    if probe or self._inbox_pending > 0:
                        await self.handle_queued(stop, until_empty=probe)
                    if self._outcomes:
                        self._outcomes = False
                        while await self.handle_outcomes() >= OUTCOME_BATCH:
                            pass
                    backoff = ERROR_BACKOFF
                except DATABASE_ERRORS as exc:
                    log.warning("imc: database unavailable (%s); retry in %.0fs", exc, backoff)
                    self._outcomes = True
                    self._probe = True
                    poll = backoff
                    backoff = min(backoff * 2, MAX_ERROR_BACKOFF)
                reason = await self.wakeup.wait(poll, stop)
                if reason is WakeReason.STOP:
                    break
                if reason is WakeReason.TIMEOUT:
                    self._outcomes = True
                    self._probe = True
        finally:
            await listening

    # -- room MESSAGEs ---------------------------------------------------------------

    async def handle_next(self, conn: Connection | None = None) -> bool:
        """Handle the next queued room MESSAGE (on ``conn``, else on a pooled connection);
        False when there was none to take."""
        if conn is None:
            async with self.pool.acquire() as pooled:
                return await self.handle_next(pooled)
        message: InboxMessage | None = None
        try:
            async with conn.transaction():
                message = await rooms.claim_next(conn, chat_lock=self._command_prefix)
                if message is None:
                    return False
                await self._handle(conn, message)
        except Exception as exc:
            # An outage is retried; a bug, or a request that does not fit the schema
            # (constraint, data error), would fail forever: drop that message only (the
            # transaction that took it was rolled back).
            if message is None or (
                isinstance(exc, DATABASE_ERRORS) and not isinstance(exc, BAD_REQUEST_ERRORS)
            ):
                raise
            log.exception("imc: room MESSAGE %d from %s dropped", message.id, message.sender)
            async with conn.transaction():
                await rooms.delete_inbox(conn, message.id)
        self.stats.handled += 1
        return True

    async def handle_queued(
        self, stop: asyncio.Event | None = None, *, until_empty: bool = True
    ) -> int:
        """Handle queued room MESSAGEs until there are none (or ``stop``), on one
        connection; how many. Not ``until_empty``: stop once as many were handled as were
        NOTIFYed since the inbox was last seen empty (each queued row NOTIFYs every imc when
        it commits, so no look that finds the inbox empty is needed: three round trips saved
        per wake-up). Each imc's count stays at least the number of MESSAGEs still queued,
        so with several imc processes one of them always goes on while any is left."""
        handled = 0
        async with self.pool.acquire() as conn:
            while stop is None or not stop.is_set():
                if not until_empty and self._inbox_pending <= 0:
                    break
                if not await self.handle_next(conn):
                    # Nothing to take: the inbox is empty (those NOTIFYed were taken by
                    # others), or another imc is at the head of every room that has
                    # MESSAGEs: it goes on with them, and the count is kept for the next
                    # wake-up (forgotten, it could leave a MESSAGE waiting for the poll).
                    if self._inbox_pending and await rooms.inbox_count(conn) == 0:
                        self._inbox_pending = 0
                    break
                self._inbox_pending = max(self._inbox_pending - 1, 0)
                handled += 1
        return handled

    async def _handle(self, conn: Connection, message: InboxMessage) -> None:
        incoming = Incoming(
            room=message.room,
            sender=message.sender,
            content_type=message.content_type,
            body=message.body,
            call_id=message.call_id,
            received_at=message.received_at,
        )
        command = parse_command(message.body, self.config.command_char)
        self.stats.commands[command.name.value if command else "chat"] += 1
        room: Room | None = None
        try:
            key = target(self.config, incoming, command)
        except Refused as refused:
            effects: list[Effect] = [refusal(incoming, refused)]
        else:
            if key is not None:
                if not (message.locked and key == message.room):  # (chat: locked with it)
                    await rooms.lock_room(conn, key)
                room = await rooms.get_room(conn, key)
            visible = None
            if command is not None and command.name is Name.ROOMS:
                visible = await rooms.visible_rooms(
                    conn, self.config.conference_domain, incoming.sender
                )
            last_chat = None
            if command is None and self.config.min_interval > 0 and room is not None:
                last_chat = await rooms.last_chat(conn, room.id, incoming.sender)
            effects = execute(
                self.config, incoming, room, visible_rooms=visible, last_chat=last_chat
            )
        await self._apply(conn, incoming, room, effects)

    async def _apply(
        self, conn: Connection, incoming: Incoming, room: Room | None, effects: list[Effect]
    ) -> None:
        ids: dict[str, int] = {} if room is None else {room.key: room.id}
        sends: list[Send] = []
        #: A chat message for the history: kept by the fan-out's statement (one round trip
        #: less), else on its own before anything reads the history.
        remembered: rooms.Remembered | None = None
        for effect in effects:
            if remembered is not None and isinstance(effect, Replay):
                await self._remember(conn, remembered)
                remembered = None
            match effect:
                case CreateRoom(key, owner, private):
                    ids[key] = await rooms.create_room(conn, key, owner=owner, private=private)
                    log.info("imc: room %s created by %s", key, owner)
                case DestroyRoom(key):
                    await rooms.delete_room(conn, ids[key])
                    log.info("imc: room %s destroyed by %s", key, incoming.sender)
                case AddMember(key, aor, role, invited_by):
                    await rooms.add_member(conn, ids[key], aor, role, invited_by=invited_by)
                case SetRole(key, aor, role):
                    await rooms.set_role(conn, ids[key], aor, role)
                case RemoveMember(key, aor):
                    await rooms.remove_member(conn, ids[key], aor)
                case Ban(key, aor):
                    await rooms.ban_member(conn, ids[key], aor)
                    log.info("imc: %s banned from %s by %s", aor, key, incoming.sender)
                case Unban(key, aor):
                    await rooms.unban_member(conn, ids[key], aor)
                    log.info("imc: %s unbanned from %s by %s", aor, key, incoming.sender)
                case Remember(key, sender, content_type, body, keep):
                    if remembered is not None:
                        await self._remember(conn, remembered)
                    remembered = rooms.Remembered(ids[key], sender, content_type, body, keep)
                case Replay(key, aor, limit):
                    kept = await rooms.history(conn, ids[key], limit)
                    sends.extend(
                        Send(
                            f"sip:{key}",
                            aor,
                            history_body(m.sender, m.body),
                            Kind.HISTORY,
                            m.content_type,
                        )
                        for m in kept
                    )
                    self.stats.replayed += len(kept)
                case SetTopic(key, topic):
                    await rooms.set_options(conn, ids[key], topic=topic)
                    log.info("imc: topic of %s set by %s", key, incoming.sender)
                case Spoke(key, aor, at):
                    await rooms.set_last_chat(conn, ids[key], aor, at)
                case Send():
                    sends.append(effect)
        headers = [("Supported", "kamailio/imc")]
        if incoming.call_id:
            headers.append(("In-Reply-To", incoming.call_id))
        headers.append((GENERATED_HEADER, GENERATED_VALUE))
        if _fanout(sends):
            await self._fan_out(conn, sends, headers, remembered)
            return
        if remembered is not None:
            await self._remember(conn, remembered)
        chat_to = [send.to for send in sends if send.kind is Kind.CHAT]
        online = await rooms.reachable(conn, chat_to) if chat_to else set()
        queue: list[NewOutbound] = []
        for send in sends:
            if send.kind is Kind.CHAT and send.to not in online:
                await self._store_offline(
                    conn, send.from_uri, send.to, send.content_type, send.body
                )
                continue
            queue.append(
                NewOutbound(
                    from_uri=send.from_uri,
                    to_aor=send.to,
                    body=send.body,
                    content_type=send.content_type,
                    extra_headers=headers,
                    source=send.kind.value,
                )
            )
            if send.kind is Kind.CHAT:
                self.stats.fanned_out += 1
        # One INSERT and one NOTIFY for the whole fan-out.
        await queue_messages(conn, queue)

    async def _remember(self, conn: Connection, remembered: rooms.Remembered) -> None:
        await rooms.remember(
            conn,
            remembered.room_id,
            sender=remembered.sender,
            content_type=remembered.content_type,
            body=remembered.body,
            keep=remembered.keep,
        )

    async def _fan_out(
        self,
        conn: Connection,
        sends: list[Send],
        headers: list[tuple[str, str]],
        remembered: rooms.Remembered | None,
    ) -> None:
        """A chat message's copies (the same From, body and type for every member): one
        statement queues those for the members with a binding; the others' copies go into
        the offline store."""
        first = sends[0]
        offline = await rooms.queue_fanout(
            conn,
            from_uri=first.from_uri,
            recipients=[send.to for send in sends],
            body=first.body,
            content_type=first.content_type,
            extra_headers=headers,
            source=Kind.CHAT.value,
            remember=remembered,
        )
        for to in offline:
            await self._store_offline(conn, first.from_uri, to, first.content_type, first.body)
        self.stats.fanned_out += len(sends) - len(offline)

    async def _store_offline(
        self, conn: Connection, from_uri: str, to: str, content_type: str, body: bytes
    ) -> None:
        """A chat copy for a member who cannot take it now: into the offline store, with no
        offline notice (the store's notices are for people, not for rooms)."""
        stored = await offline.store_message(
            conn,
            recipient=to,
            sender_uri=from_uri,
            sender_display=None,
            call_id="",
            content_type=content_type,
            body=body,
            extra_headers=[],
            lifetime=self.settings.msilo_expire,
            max_messages=self.settings.msilo_max_messages,
        )
        if stored is None:
            log.info("imc: room message for %s dropped: offline mailbox full", to)
        else:
            self.stats.stored_offline += 1

    # -- delivery outcomes -----------------------------------------------------------

    async def handle_outcomes(self) -> int:
        """Act on finished deliveries of imc's MESSAGEs, then forget them; how many.

        Rows that need nothing more (delivered; a chat message's fan-out row, whose copies
        that could not be delivered the relay stored offline as it recorded them) are
        deleted by ONE statement, atomic by itself, which also tells whether failed rows of
        their own wait; those are taken in a transaction that acts on them (only their
        bodies are read back)."""
        async with self.pool.acquire() as conn:
            row = await conn.fetchrow(
                """WITH gone AS (
                       DELETE FROM outbound_messages WHERE id IN (
                           SELECT id FROM outbound_messages
                           WHERE source = ANY($1::text[])
                             AND (status = 'delivered'
                                  OR (status = 'failed' AND recipients IS NOT NULL))
                           ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                       RETURNING id)
                   SELECT (SELECT count(*) FROM gone) AS gone, EXISTS (
                       SELECT 1 FROM outbound_messages
                       WHERE source = ANY($1::text[]) AND status = 'failed'
                         AND recipients IS NULL) AS failed""",
                SOURCES,
                OUTCOME_BATCH,
            )
            assert row is not None  # (an aggregate query: always one row)
            handled = int(row["gone"])
            if row["failed"]:
                handled += await self._handle_failed(conn)
        return handled

    async def _handle_failed(self, conn: Connection) -> int:
        """Take a batch of failed rows of imc's (each one MESSAGE) and act on them."""
        async with conn.transaction():
            rows = await conn.fetch(
                """DELETE FROM outbound_messages WHERE id IN (
                       SELECT id FROM outbound_messages
                       WHERE source = ANY($1::text[]) AND status = 'failed'
                         AND recipients IS NULL
                       ORDER BY id LIMIT $2 FOR UPDATE SKIP LOCKED)
                   RETURNING id, source, last_status, from_uri, to_aor, content_type, body""",
                SOURCES,
                OUTCOME_BATCH,
            )
            for row in sorted(rows, key=_by_id):
                if row["source"] == Kind.CHAT and row["last_status"] in UNREACHABLE:
                    await self._store_offline(
                        conn,
                        row["from_uri"],
                        row["to_aor"],
                        row["content_type"],
                        bytes(row["body"]),
                    )
                elif row["source"] == Kind.INVITE:
                    await self._invitation_failed(conn, row["from_uri"], row["to_aor"])
        return len(rows)

    async def _invitation_failed(self, conn: Connection, room_uri: str, invitee: str) -> None:
        key = room_uri.split(":", 1)[1]
        await rooms.lock_room(conn, key)
        inviter = await rooms.withdraw_invitation(conn, key, invitee)
        if not inviter:
            return
        self.stats.invitations_failed += 1
        log.info("imc: invitation of %s to %s failed; withdrawn", invitee, key)
        await queue_message(
            conn,
            from_uri=room_uri,
            to_aor=inviter,
            body=not_registered(invitee).encode(),
            extra_headers=[("Supported", "kamailio/imc"), (GENERATED_HEADER, GENERATED_VALUE)],
            source=Kind.NOTICE.value,
        )
