"""Room commands: parsing (Kamailio's ``imc_parse_cmd``, IMC-K*), argument addresses
(IMC-M4) and the texts users see (IMC-C*, ``#help`` from ``imc_cmd.h``).

Kamailio's reply texts are kept word for word (typos included: clients and users know
them). Where Kamailio fails silently (it answers the MESSAGE 500 and says nothing), imstack
sends a notice from the room saying what went wrong and why; those texts are imstack's own.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Name(StrEnum):
    CREATE = "create"
    JOIN = "join"
    INVITE = "invite"
    ADD = "add"
    ACCEPT = "accept"
    REJECT = "reject"
    REMOVE = "remove"
    LEAVE = "leave"
    MEMBERS = "members"
    ROOMS = "rooms"
    DESTROY = "destroy"
    MODIFY = "modify"
    HELP = "help"
    BAN = "ban"  # imstack: not in Kamailio
    UNBAN = "unban"  # imstack: not in Kamailio
    TOPIC = "topic"  # imstack: not in Kamailio
    UNKNOWN = "unknown"


#: IMC-K3: names and aliases, matched without case.
NAMES: dict[str, Name] = {
    **{name.value: name for name in Name if name is not Name.UNKNOWN},
    "deny": Name.REJECT,
    "exit": Name.LEAVE,
    "list": Name.MEMBERS,
}
#: IMC-K2: Kamailio reads at most 5 parameters.
MAX_PARAMS = 5


@dataclass(frozen=True)
class Command:
    name: Name
    typed: str  # the name as typed (without the command character)
    args: tuple[str, ...]
    rest: str = ""  # the first line after the name, as typed (tabs as spaces), trimmed


def parse_command(body: bytes, command_char: str) -> Command | None:
    """The command in ``body``, or None when it is chat (the first byte is not the command
    character, IMC-K4). Only the first line is read (IMC-K2); the name ends at the first
    space, tab, CR or LF (IMC-K1)."""
    prefix = command_char.encode()
    if not body.startswith(prefix):
        return None
    text = body[len(prefix) :].decode("utf-8", errors="replace")
    line = re.split(r"[\r\n]", text, maxsplit=1)[0]
    words = line.replace("\t", " ").split(" ")
    typed = words[0]
    args = tuple(word for word in words[1:] if word)[:MAX_PARAMS]
    rest = " ".join(words[1:]).strip()
    return Command(NAMES.get(typed.lower(), Name.UNKNOWN), typed, args, rest)


# -- addresses ----------------------------------------------------------------------------

_PART = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/%]+$")  # RFC 3261 user part, unescaped
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9\-.]*[A-Za-z0-9])?$|^\[[0-9A-Fa-f:.]+\]$")


class BadAddress(ValueError):
    """An argument that is no user@host."""


def build_address(value: str, default_host: str) -> str:
    """``user@host`` for a command argument (IMC-M4 ``build_uri``): a ``sip:``/``sips:``
    scheme is dropped, a missing host is ``default_host``. The host is lower-cased."""
    text = value.strip().strip("<>")
    if text.lower().startswith(("sip:", "sips:")):
        text = text.split(":", 1)[1]
    text = text.split(";", 1)[0]
    user, at, host = text.rpartition("@")
    if not at:
        user, host = text, default_host
    if not user or not _PART.match(user) or not _HOST.match(host):
        raise BadAddress(value)
    return f"{user}@{host.lower()}"


def user_of(aor: str) -> str:
    return aor.rpartition("@")[0]


def brackets(aor: str) -> str:
    """Kamailio's ``format_uri``: the user part in square brackets, ``[alice]``."""
    return f"[{user_of(aor)}]"


# -- texts --------------------------------------------------------------------------------

#: §3.8, byte for byte (the typo "is" included). It always shows '#' (C13).
KAMAILIO_HELP = (
    "\r\n#create <room_name> - create new conference room\r\n"
    "#join [<room_name>] - join the conference room\r\n"
    "#invite <user_name> [<room_name>] - invite a user to join a conference room\r\n"
    "#add <user_name> [<room_name>] - add a user to a conference room\r\n"
    "#modify <user_name> <role> [<room_name>] - modify user role in a conference room\r\n"
    "#accept - accept invitation to join a conference room\r\n"
    "#reject - reject invitation to join a conference room\r\n"
    "#remove <user_name> [<room_name>] - remove a user from the conference room\r\n"
    "#members - list members is a conference room\r\n"
    "#rooms - list existing conference rooms\r\n"
    "#leave [<room_name>] - leave from a conference room\r\n"
    "#destroy [<room_name>] - destroy conference room\r\n"
)
#: Kamailio's help, then imstack's own commands in the same form.
HELP = KAMAILIO_HELP + (
    "#topic [<text>] - show or set the topic of the conference room\r\n"
    "#ban <user_name> [<room_name>] - ban a user from a conference room\r\n"
    "#unban <user_name> [<room_name>] - lift a user's ban from a conference room\r\n"
)

# Kamailio's texts (IMC-C*).
ROOM_CREATED = "*** Room was created"
ROOM_EXISTS = "*** Room already exists"
PRIVATE_EXISTS = "*** A private room with the same name already exists"
EXISTS_AND_MEMBER = "*** Room already exists and you are a member"
ROOM_NOT_FOUND = "*** Room not found"
ALREADY_IN = "*** You are in the room already"
PRIVATE_JOIN = "*** Private rooms are by invitation only. Room owners have been notified."
ADD_DENIED = "*** You don't have the permmission to add members to this room"
MODIFY_DENIED = "*** You don't have the permmission to modify members in this room"
REMOVED = "*** You have been removed from the room"
OWNER_CANNOT_LEAVE = (
    "*** You are the room's owner and cannot leave. Use #destroy if you wish to destroy the room."
)
DESTROYED = "*** Room has been destroyed"


def joined(aor: str) -> str:
    return f"*** {brackets(aor)} has joined the room"


def left(aor: str) -> str:
    return f"*** {brackets(aor)} has left the room"


def attempted(aor: str) -> str:
    return f"*** {brackets(aor)} attempted to join the room"


def invitation(inviter: str, char: str) -> str:
    return (
        f"*** {brackets(inviter)} invites you to join the room "
        f"(send '{char}accept' or '{char}reject')"
    )


def not_registered(aor: str) -> str:
    """C3: sent when the invitation could not be delivered (to the inviter: bug fixed)."""
    return f"{aor} is not registered.  "


def modified(aor: str, role: str) -> str:
    return f"*** sip:{aor} is now {role}"


def invalid_command(typed: str, char: str) -> str:
    return f"*** Invalid command '{typed}' (send '{char}help' for help)"


def members_list(lines: list[str]) -> str:
    return "\n".join(["Members:", *lines])


def rooms_list(names: list[str]) -> str:
    return "\n".join(["Rooms:", *(f"[{name}]" for name in names)])


# imstack's own texts for what Kamailio does not say.
NOT_A_MEMBER = "*** You are not a member of this room"
CHAT_NOT_A_MEMBER = "*** You are not a member of this room: your message was not sent"
INVITED_ONLY = "*** You are invited to this room but have not joined it yet"
NO_INVITATION = "*** You have no pending invitation to this room"
INVITE_DENIED = "*** You don't have the permission to invite users to this room"
REMOVE_DENIED = "*** You don't have the permission to remove members from this room"
DESTROY_DENIED = "*** Only the room's owner can destroy the room"
OWNER_CANNOT_BE_REMOVED = "*** The room's owner cannot be removed"
LAST_OWNER = "*** The room would have no owner left"
BANNED = "*** You are banned from this room"
BAN_DENIED = "*** You don't have the permission to ban or unban users in this room"
OWNER_CANNOT_BE_BANNED = "*** The room's owner cannot be banned"
CANNOT_BAN_YOURSELF = "*** You cannot ban yourself"
YOU_ARE_BANNED = "*** You have been banned from the room"
YOU_ARE_UNBANNED = "*** You are no longer banned from the room"
NO_TOPIC = "*** The room has no topic"
TOPIC_DENIED = "*** You don't have the permission to set the topic of this room"
TOPIC_CONTROL_CHARACTERS = "*** The topic cannot contain control characters"
#: Longest topic (characters), as the control API accepts it.
TOPIC_MAX = 500
TOPIC_TOO_LONG = f"*** The topic is too long: {TOPIC_MAX} characters at most"


def topic_is(topic: str) -> str:
    """``#topic`` without text, and the last line of a newcomer's join notice."""
    return f"*** Topic: {topic}"


def topic_changed(aor: str, topic: str) -> str:
    return f"*** {brackets(aor)} changed the topic to: {topic}"


def joined_with_topic(aor: str, topic: str | None) -> str:
    """The join notice the newcomer gets: with the room's topic, when it has one."""
    return f"{joined(aor)}\n{topic_is(topic)}" if topic else joined(aor)


def room_full(limit: int) -> str:
    """To whoever tries to join (or accept an invitation to) a room that is full."""
    return f"*** The room is full ({limit} members at most)"


def invitation_kept(limit: int) -> str:
    """``#accept`` into a full room: the invitation stays open."""
    return f"{room_full(limit)}: your invitation stays open, try again later"


def not_added_full(aor: str, limit: int) -> str:
    """``#add`` into a full room."""
    return f"{room_full(limit)}: sip:{aor} was not added"


def not_invited_full(aor: str, limit: int) -> str:
    """``#invite`` into a full room."""
    return f"{room_full(limit)}: sip:{aor} was not invited"


def too_fast(interval: float) -> str:
    """Chat sooner than IMSTACK_IMC_MIN_INTERVAL after the member's previous message."""
    return (
        f"*** You are sending messages too fast (one every {interval:g} seconds at most): "
        "your message was not sent"
    )


def missing_argument(usage: str) -> str:
    return f"*** Missing argument: {usage}"


def invalid_argument(value: str, char: str) -> str:
    return f"*** Invalid argument '{value}' (send '{char}help' for help)"


def invalid_room(value: str, domain: str) -> str:
    return f"*** Invalid room '{value}': rooms are <name> or <name>@{domain}"


def invalid_user(value: str) -> str:
    return f"*** Invalid user '{value}'"


def invalid_role(value: str) -> str:
    return f"*** Invalid role '{value}' (owner, admin or member)"


def already_member(aor: str) -> str:
    return f"*** sip:{aor} is already a member of the room"


def already_invited(aor: str) -> str:
    return f"*** sip:{aor} is already invited to the room"


def user_banned(aor: str) -> str:
    return f"*** sip:{aor} is banned from the room"


def not_banned(aor: str) -> str:
    return f"*** sip:{aor} is not banned from the room"


def was_banned(aor: str) -> str:
    return f"*** {brackets(aor)} has been banned from the room"


def was_unbanned(aor: str) -> str:
    return f"*** {brackets(aor)} is no longer banned from the room"


def not_in_room(aor: str) -> str:
    return f"*** sip:{aor} is not a member of the room"
