"""What a room MESSAGE does: pure functions from (room state, message) to effects.

No I/O here. The worker (:mod:`services.imc.worker`) calls :func:`target` to learn which room
to lock and read, then :func:`execute` with that room (and, for ``#rooms``, the rooms the
sender may see), and applies the effects in order in one transaction: room and member
changes, then MESSAGEs queued for the relay.

Semantics and texts follow Kamailio's imc (``kamailio-and-rfc.md`` §3.6, IMC-C1..C15), with
its bugs fixed (§3.9): the invite-failure notice goes to the inviter (worker), ``#modify``
honours its room argument and refuses non-members, ``#rooms`` lists private rooms only to
their members, invited users cannot read ``#members``; and errors Kamailio keeps silent are
told to the sender in a notice from the room.

Beyond Kamailio: ``#ban``/``#unban`` (owners and admins; a banned user is out of the room
and cannot join, be added or be invited until unbanned), room history (when the room's
history length — ``rooms.history_length``, else ``Config.history`` — is > 0 chat is
remembered, and whoever joins or accepts gets the last messages replayed), ``#topic``
(anyone may read the topic of a public room, members and the invited that of a private one;
owners and admins set it, the room is told; a newcomer's join notice ends with it), a member
limit (``rooms.member_limit``, else ``Config.member_limit``; 0: none): joined members
(owners, admins, members; not the invited) never exceed it — ``#join``, ``#create`` of an
existing room, ``#accept``, ``#add`` and ``#invite`` are refused with a notice when the room
is full, and flood control: a member's chat less than ``Config.min_interval`` seconds after
their previous chat message in the room (both timed when the relay received them) is not
sent, and they are told.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from services.imc import commands as text
from services.imc.commands import BadAddress, Command, Name, build_address, parse_command
from shared.db.rooms import Member, Role, Room

#: Bodies that are about messages, not messages: never broadcast as chat (linphone sends an
#: IMDN for every message it receives; a room that broadcast them would melt down).
NOT_CHAT_TYPES = frozenset({"message/imdn+xml", "application/im-iscomposing+xml"})
NOTICE_TYPE = "text/plain;charset=UTF-8"
MANAGERS = frozenset({Role.OWNER, Role.ADMIN})


@dataclass(frozen=True)
class Config:
    command_char: str
    create_on_join: bool
    domain: str  # the SIP domain: user arguments without a host are its users
    conference_domain: str  # rooms live here
    history: int = 0  # chat messages kept per room and replayed on joining; 0: none
    member_limit: int = 0  # joined members per room, unless the room sets it; 0: no limit
    min_interval: float = 0.0  # seconds between one member's chat messages in a room; 0: off


@dataclass(frozen=True)
class Incoming:
    """A MESSAGE addressed to a room URI."""

    room: str  # name@domain of the Request-URI
    sender: str  # user@domain, authenticated
    content_type: str
    body: bytes
    call_id: str = ""
    received_at: datetime | None = None  # when the relay took it (flood control)

    @property
    def room_uri(self) -> str:
        return f"sip:{self.room}"


# -- effects ------------------------------------------------------------------------------


class Kind(StrEnum):
    """What a queued MESSAGE is; the worker acts on the outcome accordingly."""

    NOTICE = "imc"  # lost when undeliverable
    CHAT = "imc-chat"  # stored offline when the member is unreachable
    INVITE = "imc-invite"  # withdrawn (and the inviter told) when undeliverable
    HISTORY = "imc-history"  # a replayed room message: lost when undeliverable


@dataclass(frozen=True)
class CreateRoom:
    room: str
    owner: str
    private: bool


@dataclass(frozen=True)
class DestroyRoom:
    room: str


@dataclass(frozen=True)
class AddMember:
    room: str
    aor: str
    role: Role
    invited_by: str | None = None


@dataclass(frozen=True)
class SetRole:
    room: str
    aor: str
    role: Role


@dataclass(frozen=True)
class RemoveMember:
    room: str
    aor: str


@dataclass(frozen=True)
class Ban:
    """``aor`` is out of the room (its membership, if any, becomes a ban)."""

    room: str
    aor: str


@dataclass(frozen=True)
class Unban:
    room: str
    aor: str


@dataclass(frozen=True)
class Remember:
    """Keep a chat message in the room's history (the original body)."""

    room: str
    sender: str
    content_type: str
    body: bytes
    keep: int = 0  # the room's history length: older messages are forgotten


@dataclass(frozen=True)
class Replay:
    """Send ``aor`` the room's last ``limit`` messages (the worker reads them), in order,
    here."""

    room: str
    aor: str
    limit: int = 0


@dataclass(frozen=True)
class SetTopic:
    room: str
    topic: str


@dataclass(frozen=True)
class Spoke:
    """``aor``'s chat message received ``at`` was sent to the room (flood control)."""

    room: str
    aor: str
    at: datetime


@dataclass(frozen=True)
class Send:
    from_uri: str
    to: str  # user@domain
    body: bytes
    kind: Kind = Kind.NOTICE
    content_type: str = NOTICE_TYPE


Effect = (
    CreateRoom
    | DestroyRoom
    | AddMember
    | SetRole
    | RemoveMember
    | Ban
    | Unban
    | Remember
    | Replay
    | SetTopic
    | Spoke
    | Send
)


class Refused(Exception):
    """The command cannot be carried out; ``notice`` goes back to the sender."""

    def __init__(self, notice: str, from_uri: str | None = None) -> None:
        super().__init__(notice)
        self.notice = notice
        self.from_uri = from_uri


# -- which room ---------------------------------------------------------------------------

#: Position of the room argument per command (None: the command takes none).
ROOM_ARG: dict[Name, int | None] = {
    Name.CREATE: 0,  # special-cased: [room] [private]
    Name.JOIN: 0,
    Name.INVITE: 1,
    Name.ADD: 1,
    Name.ACCEPT: 0,
    Name.REJECT: 0,
    Name.REMOVE: 1,
    Name.LEAVE: 0,
    Name.MEMBERS: 0,
    Name.DESTROY: 0,
    Name.MODIFY: 2,  # Kamailio reads param[3] here (C12 bug (1)); the room is the 3rd
    Name.BAN: 1,
    Name.UNBAN: 1,
    Name.TOPIC: None,  # special-cased: the room is always the Request-URI's (text follows)
    Name.ROOMS: None,
    Name.HELP: None,
    Name.UNKNOWN: None,
}

USAGE: dict[Name, str] = {
    Name.INVITE: "#invite <user_name> [<room_name>]",
    Name.ADD: "#add <user_name> [<room_name>]",
    Name.REMOVE: "#remove <user_name> [<room_name>]",
    Name.MODIFY: "#modify <user_name> <role> [<room_name>]",
    Name.BAN: "#ban <user_name> [<room_name>]",
    Name.UNBAN: "#unban <user_name> [<room_name>]",
}


def _room_arg(config: Config, value: str) -> str:
    try:
        key = build_address(value, config.conference_domain).lower()
    except BadAddress:
        raise Refused(text.invalid_room(value, config.conference_domain)) from None
    name, _, domain = key.rpartition("@")
    if domain != config.conference_domain or name.startswith("."):
        raise Refused(text.invalid_room(value, config.conference_domain))
    return key


def _create_args(config: Config, incoming: Incoming, args: tuple[str, ...]) -> tuple[str, bool]:
    """C1: ``#create`` → R-URI, public; ``#create private`` → R-URI, private;
    ``#create room`` → room, public; ``#create room private``; anything else is an error."""
    if not args:
        return _room_arg(config, incoming.room), False
    if len(args) == 1:
        if args[0].lower() == "private":
            return _room_arg(config, incoming.room), True
        return _room_arg(config, args[0]), False
    if args[1].lower() != "private" or len(args) > 2:
        raise Refused(text.invalid_argument(" ".join(args[1:]), config.command_char))
    return _room_arg(config, args[0]), True


def target(config: Config, incoming: Incoming, command: Command | None) -> str | None:
    """The room (name@domain) the MESSAGE acts on: the worker locks and reads it. None for
    commands that act on no single room. Raises :class:`Refused` for a bad room argument."""
    if command is None:
        return _room_arg(config, incoming.room)
    if command.name is Name.CREATE:
        return _create_args(config, incoming, command.args)[0]
    if command.name is Name.TOPIC:
        return _room_arg(config, incoming.room)
    position = ROOM_ARG[command.name]
    if position is None:
        return None
    if len(command.args) > position:
        return _room_arg(config, command.args[position])
    return _room_arg(config, incoming.room)


def _user_arg(config: Config, command: Command) -> str:
    if not command.args:
        raise Refused(text.missing_argument(USAGE[command.name]))
    try:
        return build_address(command.args[0], config.domain)
    except BadAddress:
        raise Refused(text.invalid_user(command.args[0])) from None


# -- execution ----------------------------------------------------------------------------


def execute(
    config: Config,
    incoming: Incoming,
    room: Room | None,
    *,
    visible_rooms: list[str] | None = None,
    last_chat: datetime | None = None,
) -> list[Effect]:
    """The effects of ``incoming`` on ``room`` (the room :func:`target` named, as it is now;
    None when it does not exist). ``visible_rooms``: for ``#rooms``, the names the sender
    may see. ``last_chat``: for chat, when the sender's previous chat message in the room
    was received (None: never, or not known)."""
    command = parse_command(incoming.body, config.command_char)
    try:
        if command is None:
            return _chat(config, incoming, room, last_chat)
        return _command(config, incoming, command, room, visible_rooms or [])
    except Refused as refused:
        return [refusal(incoming, refused)]


def refusal(incoming: Incoming, refused: Refused) -> Send:
    """The notice telling the sender why nothing happened."""
    return _notice(refused.from_uri or incoming.room_uri, incoming.sender, refused.notice)


def _notice(from_uri: str, to: str, body: str) -> Send:
    return Send(from_uri, to, body.encode())


def _broadcast(room_uri: str, members: list[Member], body: str) -> list[Effect]:
    """IMC broadcast: every member except the invited (Kamailio skips INVITED/DELETED)."""
    return [_notice(room_uri, m.aor, body) for m in members if m.role is not Role.INVITED]


def _existing(room: Room | None) -> Room:
    if room is None:
        raise Refused(text.ROOM_NOT_FOUND)  # silent in Kamailio (IMC-X1)
    return room


def _member(room: Room, aor: str) -> Member:
    member = room.find(aor)
    if member is None:
        raise Refused(text.NOT_A_MEMBER, room.uri)
    return member


def _manager(room: Room, aor: str, denied: str) -> Member:
    member = _member(room, aor)
    if member.role not in MANAGERS:
        raise Refused(denied, room.uri)
    return member


def history_body(sender: str, body: bytes) -> bytes:
    """C15's fan-out body, ``[user]: <body>`` (also how history is replayed)."""
    return f"{text.brackets(sender)}: ".encode() + body


def history_length(config: Config, room: Room) -> int:
    """Chat messages the room keeps: its own setting, else IMSTACK_IMC_HISTORY."""
    return config.history if room.history_length is None else room.history_length


def member_limit(config: Config, room: Room) -> int:
    """Joined members the room may have: its own setting, else IMSTACK_IMC_MEMBER_LIMIT;
    0: no limit."""
    return config.member_limit if room.member_limit is None else room.member_limit


def _full(config: Config, room: Room) -> int:
    """The room's member limit when it is reached (no one more may join), else 0."""
    limit = member_limit(config, room)
    joined = sum(1 for m in room.members if m.role is not Role.INVITED)
    return limit if limit and joined >= limit else 0


def _replay(config: Config, room: Room, aor: str) -> list[Effect]:
    keep = history_length(config, room)
    return [Replay(room.key, aor, keep)] if keep > 0 else []


def _welcome(room: Room, after: list[Member], aor: str) -> list[Effect]:
    """The join broadcast (Kamailio's text to every member, the newcomer included); the
    newcomer's copy also gives the room's topic."""
    everyone, newcomer = text.joined(aor), text.joined_with_topic(aor, room.topic)
    return [
        _notice(room.uri, m.aor, newcomer if m.is_(aor) else everyone)
        for m in after
        if m.role is not Role.INVITED
    ]


def _too_soon(config: Config, incoming: Incoming, last_chat: datetime | None) -> bool:
    if config.min_interval <= 0 or last_chat is None or incoming.received_at is None:
        return False
    return (incoming.received_at - last_chat).total_seconds() < config.min_interval


def _chat(
    config: Config, incoming: Incoming, room: Room | None, last_chat: datetime | None = None
) -> list[Effect]:
    """C15: fan-out to every member but the invited and the sender, ``[user]: <body>``;
    remembered for the history when it is kept."""
    media_type = incoming.content_type.split(";", 1)[0].strip().lower()
    if media_type in NOT_CHAT_TYPES or not incoming.body:
        return []
    if room is None:
        raise Refused(text.ROOM_NOT_FOUND)
    sender = room.find(incoming.sender)
    if sender is None:
        if incoming.sender.lower() in room.banned:
            raise Refused(text.BANNED, room.uri)
        raise Refused(text.CHAT_NOT_A_MEMBER, room.uri)
    if sender.role is Role.INVITED:
        raise Refused(text.INVITED_ONLY, room.uri)
    if _too_soon(config, incoming, last_chat):
        raise Refused(text.too_fast(config.min_interval), room.uri)
    body = history_body(sender.aor, incoming.body)
    effects: list[Effect] = [
        Send(room.uri, m.aor, body, Kind.CHAT, incoming.content_type)
        for m in room.members
        if m.role is not Role.INVITED and not m.is_(incoming.sender)
    ]
    keep = history_length(config, room)
    if keep > 0:
        effects.append(Remember(room.key, sender.aor, incoming.content_type, incoming.body, keep))
    if config.min_interval > 0 and incoming.received_at is not None:
        effects.append(Spoke(room.key, sender.aor, incoming.received_at))
    return effects


def _command(
    config: Config,
    incoming: Incoming,
    command: Command,
    room: Room | None,
    visible_rooms: list[str],
) -> list[Effect]:
    sender = incoming.sender
    char = config.command_char
    match command.name:
        case Name.CREATE:
            return _create(config, incoming, command, room)
        case Name.JOIN:
            key = target(config, incoming, command)
            assert key is not None
            return _join(config, incoming, key, room)
        case Name.INVITE:
            return _invite(config, incoming, command, _existing(room))
        case Name.ADD:
            return _add(config, incoming, command, _existing(room))
        case Name.ACCEPT:
            room = _existing(room)
            member = _member(room, sender)
            if member.role is not Role.INVITED:
                raise Refused(text.NO_INVITATION, room.uri)
            if limit := _full(config, room):
                raise Refused(text.invitation_kept(limit), room.uri)
            after = _replace(room, member, Role.MEMBER)
            return [
                SetRole(room.key, member.aor, Role.MEMBER),
                *_welcome(room, after, member.aor),
                *_replay(config, room, member.aor),
            ]
        case Name.REJECT:
            room = _existing(room)
            member = _member(room, sender)
            if member.role is not Role.INVITED:
                raise Refused(text.NO_INVITATION, room.uri)
            return [RemoveMember(room.key, member.aor)]  # C6: no message
        case Name.REMOVE:
            return _remove(config, incoming, command, _existing(room))
        case Name.LEAVE:
            room = _existing(room)
            member = _member(room, sender)
            if member.role is Role.OWNER:
                return [_notice(room.uri, sender, text.OWNER_CANNOT_LEAVE)]
            if member.role is Role.INVITED:
                return [RemoveMember(room.key, member.aor)]  # never joined: like #reject
            # C8: the broadcast first (the leaver gets it too), then the removal.
            return [
                *_broadcast(room.uri, list(room.members), text.left(member.aor)),
                RemoveMember(room.key, member.aor),
            ]
        case Name.MEMBERS:
            room = _existing(room)
            member = _member(room, sender)
            if member.role is Role.INVITED:
                raise Refused(text.INVITED_ONLY, room.uri)
            marks = {Role.OWNER: "*", Role.ADMIN: "~"}
            lines = [
                f"{marks.get(m.role, '')}{text.brackets(m.aor)}"
                for m in room.members
                if m.role is not Role.INVITED
            ]
            return [_notice(room.uri, sender, text.members_list(lines))]
        case Name.ROOMS:
            return [_notice(incoming.room_uri, sender, text.rooms_list(visible_rooms))]
        case Name.DESTROY:
            room = _existing(room)
            member = _member(room, sender)
            if member.role is not Role.OWNER:
                raise Refused(text.DESTROY_DENIED, room.uri)
            return [
                *_broadcast(room.uri, list(room.members), text.DESTROYED),
                DestroyRoom(room.key),
            ]
        case Name.MODIFY:
            return _modify(config, incoming, command, _existing(room))
        case Name.BAN:
            return _ban(config, incoming, command, _existing(room))
        case Name.UNBAN:
            return _unban(config, incoming, command, _existing(room))
        case Name.TOPIC:
            return _topic(incoming, command, _existing(room))
        case Name.HELP:
            return [_notice(incoming.room_uri, sender, text.HELP)]
        case Name.UNKNOWN:
            return [_notice(incoming.room_uri, sender, text.invalid_command(command.typed, char))]
    raise AssertionError(command.name)  # pragma: no cover


def _replace(room: Room, member: Member, role: Role) -> list[Member]:
    return [Member(m.aor, role) if m is member else m for m in room.members]


def _create(
    config: Config, incoming: Incoming, command: Command, room: Room | None
) -> list[Effect]:
    key, private = _create_args(config, incoming, command.args)
    uri = f"sip:{key}"
    sender = incoming.sender
    if room is None:
        return [CreateRoom(key, sender, private), _notice(uri, sender, text.ROOM_CREATED)]
    if sender.lower() in room.banned:
        raise Refused(text.BANNED, room.uri)
    if room.private:
        return [_notice(incoming.room_uri, sender, text.PRIVATE_EXISTS)]
    if room.find(sender) is not None:
        return [_notice(incoming.room_uri, sender, text.EXISTS_AND_MEMBER)]
    if limit := _full(config, room):
        raise Refused(text.room_full(limit), room.uri)
    after = [*room.members, Member(sender, Role.MEMBER)]
    return [
        AddMember(room.key, sender, Role.MEMBER),
        *_welcome(room, after, sender),
        *_replay(config, room, sender),
    ]


def _join(config: Config, incoming: Incoming, key: str, room: Room | None) -> list[Effect]:
    sender = incoming.sender
    uri = f"sip:{key}"
    if room is None:
        if not config.create_on_join:
            return [_notice(incoming.room_uri, sender, text.ROOM_NOT_FOUND)]
        return [CreateRoom(key, sender, False), _notice(uri, sender, text.ROOM_CREATED)]
    if sender.lower() in room.banned:
        raise Refused(text.BANNED, room.uri)
    member = room.find(sender)
    if member is not None:
        if member.role is Role.INVITED:
            # Kamailio clears INVITED silently (C2); say so, as #accept does.
            if limit := _full(config, room):
                raise Refused(text.invitation_kept(limit), room.uri)
            after = _replace(room, member, Role.MEMBER)
            return [
                SetRole(room.key, member.aor, Role.MEMBER),
                *_welcome(room, after, member.aor),
                *_replay(config, room, member.aor),
            ]
        return [_notice(room.uri, sender, text.ALREADY_IN)]
    if room.private:
        return [
            _notice(room.uri, sender, text.PRIVATE_JOIN),
            *_broadcast(room.uri, list(room.members), text.attempted(sender)),
        ]
    if limit := _full(config, room):
        raise Refused(text.room_full(limit), room.uri)
    after = [*room.members, Member(sender, Role.MEMBER)]
    return [
        AddMember(room.key, sender, Role.MEMBER),
        *_welcome(room, after, sender),
        *_replay(config, room, sender),
    ]


def _check_newcomer(room: Room, aor: str) -> None:
    existing = room.find(aor)
    if existing is not None:
        if existing.role is Role.INVITED:
            raise Refused(text.already_invited(existing.aor), room.uri)
        raise Refused(text.already_member(existing.aor), room.uri)
    if aor.lower() in room.banned:
        raise Refused(text.user_banned(aor), room.uri)


def _invite(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """C3: OWNER or ADMIN; the invitee is added as invited and asked to accept."""
    inviter = _manager(room, incoming.sender, text.INVITE_DENIED)
    invitee = _user_arg(config, command)
    _check_newcomer(room, invitee)
    if limit := _full(config, room):
        raise Refused(text.not_invited_full(invitee, limit), room.uri)
    body = text.invitation(inviter.aor, config.command_char).encode()
    return [
        AddMember(room.key, invitee, Role.INVITED, invited_by=inviter.aor),
        Send(room.uri, invitee, body, Kind.INVITE),
    ]


def _add(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """C4: OWNER or ADMIN add a user directly as a plain member."""
    _manager(room, incoming.sender, text.ADD_DENIED)
    user = _user_arg(config, command)
    _check_newcomer(room, user)
    if limit := _full(config, room):
        raise Refused(text.not_added_full(user, limit), room.uri)
    after = [*room.members, Member(user, Role.MEMBER)]
    return [AddMember(room.key, user, Role.MEMBER), *_welcome(room, after, user)]


def _remove(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """C7: OWNER or ADMIN; not the owner. The target is told, then the room."""
    _manager(room, incoming.sender, text.REMOVE_DENIED)
    user = _user_arg(config, command)
    target_member = room.find(user)
    if target_member is None:
        raise Refused(text.not_in_room(user), room.uri)
    if target_member.role is Role.OWNER:
        raise Refused(text.OWNER_CANNOT_BE_REMOVED, room.uri)
    after = [m for m in room.members if m is not target_member]
    return [
        RemoveMember(room.key, target_member.aor),
        _notice(room.uri, target_member.aor, text.REMOVED),
        *_broadcast(room.uri, after, text.left(target_member.aor)),
    ]


ROLES = {"owner": Role.OWNER, "admin": Role.ADMIN, "member": Role.MEMBER}


def _modify(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """C12: OWNER or ADMIN set a member's role to exactly owner, admin or member."""
    _manager(room, incoming.sender, text.MODIFY_DENIED)
    if len(command.args) < 2:
        raise Refused(text.missing_argument(USAGE[Name.MODIFY]), room.uri)
    user = _user_arg(config, command)
    typed_role = command.args[1]
    role = ROLES.get(typed_role.lower())
    if role is None:
        raise Refused(text.invalid_role(typed_role), room.uri)
    member = room.find(user)
    if member is None:
        raise Refused(text.not_in_room(user), room.uri)  # Kamailio crashes here (C12 (2))
    after = _replace(room, member, role)
    if not any(m.role is Role.OWNER for m in after):
        raise Refused(text.LAST_OWNER, room.uri)
    return [
        SetRole(room.key, member.aor, role),
        *_broadcast(room.uri, after, text.modified(member.aor, typed_role)),
    ]


def _ban(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """OWNER or ADMIN put a user out of the room until unbanned (not an owner, not
    themselves). A member's membership becomes the ban, so fan-out skips them at once; a
    user who is not in the room can be banned beforehand. The user is told, then the room."""
    _manager(room, incoming.sender, text.BAN_DENIED)
    user = _user_arg(config, command)
    if user.lower() == incoming.sender.lower():
        raise Refused(text.CANNOT_BAN_YOURSELF, room.uri)
    if user.lower() in room.banned:
        raise Refused(text.user_banned(user), room.uri)
    member = room.find(user)
    if member is not None:
        if member.role is Role.OWNER:
            raise Refused(text.OWNER_CANNOT_BE_BANNED, room.uri)
        user = member.aor
    after = [m for m in room.members if m is not member]
    return [
        Ban(room.key, user),
        _notice(room.uri, user, text.YOU_ARE_BANNED),
        *_broadcast(room.uri, after, text.was_banned(user)),
    ]


def _unban(config: Config, incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """OWNER or ADMIN lift a ban: the user may join (or be added, or invited) again."""
    _manager(room, incoming.sender, text.BAN_DENIED)
    user = _user_arg(config, command)
    if user.lower() not in room.banned:
        raise Refused(text.not_banned(user), room.uri)
    return [
        Unban(room.key, user),
        _notice(room.uri, user, text.YOU_ARE_UNBANNED),
        *_broadcast(room.uri, list(room.members), text.was_unbanned(user)),
    ]


_CONTROL = frozenset(chr(c) for c in (*range(0x20), 0x7F))


def _topic(incoming: Incoming, command: Command, room: Room) -> list[Effect]:
    """``#topic``: the room's topic (anyone for a public room; members and the invited for
    a private one). ``#topic <text>``: OWNER or ADMIN set it (the first line, trimmed);
    every member is told, the setter included."""
    sender = incoming.sender
    if not command.rest:
        if sender.lower() in room.banned:
            raise Refused(text.BANNED, room.uri)
        if room.private and room.find(sender) is None:
            raise Refused(text.NOT_A_MEMBER, room.uri)
        reply = text.topic_is(room.topic) if room.topic else text.NO_TOPIC
        return [_notice(room.uri, sender, reply)]
    setter = _manager(room, sender, text.TOPIC_DENIED)
    topic = command.rest
    if len(topic) > text.TOPIC_MAX:
        raise Refused(text.TOPIC_TOO_LONG, room.uri)
    if _CONTROL.intersection(topic):
        raise Refused(text.TOPIC_CONTROL_CHARACTERS, room.uri)
    return [
        SetTopic(room.key, topic),
        *_broadcast(room.uri, list(room.members), text.topic_changed(setter.aor, topic)),
    ]
