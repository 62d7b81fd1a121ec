"""The command executor, without I/O: every command, its permissions, Kamailio's reply texts
(§3.6, §3.8) and the Kamailio bugs imstack fixes (§3.9)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from services.imc import commands as text
from services.imc.commands import Name, build_address, parse_command
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
    target,
)
from shared.db.rooms import Member, Role, Room

CONFIG = Config("#", True, "example.test", "conference.example.test")
DEVS = "devs@conference.example.test"
DEVS_URI = f"sip:{DEVS}"
OWNER, ADMIN, MEMBER, INVITED = Role.OWNER, Role.ADMIN, Role.MEMBER, Role.INVITED


def aor(user: str) -> str:
    return f"{user}@example.test"


def make_room(
    *members: tuple[str, Role],
    private: bool = False,
    banned: tuple[str, ...] = (),
    key: str = DEVS,
    topic: str | None = None,
    member_limit: int | None = None,
    history_length: int | None = None,
) -> Room:
    name, _, domain = key.partition("@")
    return Room(
        id=1,
        name=name,
        domain=domain,
        owner=aor(members[0][0]),
        private=private,
        topic=topic,
        members=tuple(Member(aor(user), role) for user, role in members),
        banned=frozenset(aor(user) for user in banned),
        member_limit=member_limit,
        history_length=history_length,
    )


TEAM = make_room(("alice", OWNER), ("bob", ADMIN), ("carol", MEMBER), ("dave", INVITED))


def run(
    body: str | bytes,
    room: Room | None = TEAM,
    *,
    sender: str = "alice",
    to: str = DEVS,
    config: Config = CONFIG,
    content_type: str = "text/plain;charset=UTF-8",
    rooms: list[str] | None = None,
    received_at: datetime | None = None,
    last_chat: datetime | None = None,
) -> list[Effect]:
    data = body.encode() if isinstance(body, str) else body
    incoming = Incoming(to, aor(sender), content_type, data, "call-1", received_at)
    return execute(config, incoming, room, visible_rooms=rooms, last_chat=last_chat)


def sent(effects: list[Effect]) -> list[tuple[str, str]]:
    """(recipient user, body) of every MESSAGE, in order."""
    return [(e.to.partition("@")[0], e.body.decode()) for e in effects if isinstance(e, Send)]


def changes(effects: list[Effect]) -> list[Effect]:
    return [e for e in effects if not isinstance(e, Send)]


def notice(effects: list[Effect]) -> str:
    (only,) = [e for e in effects if isinstance(e, Send)]
    return only.body.decode()


# -- parsing ------------------------------------------------------------------------------


def test_a_command_is_a_body_starting_with_the_command_char() -> None:
    assert parse_command(b"hello #join", "#") is None
    assert parse_command(b" #join", "#") is None
    command = parse_command(b"#JOIN\tdevs  extra\r\n#second line", "#")
    assert command is not None
    assert command.name is Name.JOIN and command.typed == "JOIN"
    assert command.args == ("devs", "extra")


def test_aliases_and_unknown_names() -> None:
    for typed, name in [
        ("deny", Name.REJECT),
        ("exit", Name.LEAVE),
        ("list", Name.MEMBERS),
        ("Rooms", Name.ROOMS),
        ("frobnicate", Name.UNKNOWN),
    ]:
        command = parse_command(f"#{typed}".encode(), "#")
        assert command is not None and command.name is name


def test_at_most_five_parameters_are_read() -> None:
    command = parse_command(b"#invite a b c d e f g", "#")
    assert command is not None and command.args == ("a", "b", "c", "d", "e")


def test_another_command_char() -> None:
    config = Config("!", True, "example.test", "conference.example.test")
    assert parse_command(b"#members", "!") is None
    assert sent(run("!members", config=config))[0][1].startswith("Members:")
    assert (
        notice(run("!nope", config=config)) == "*** Invalid command 'nope' (send '!help' for help)"
    )
    # The help text always shows '#' (C13).
    assert notice(run("!help", config=config)) == text.HELP


def test_arguments_get_a_domain_as_kamailio_builds_uris() -> None:
    assert build_address("bob", "example.test") == "bob@example.test"
    assert build_address("sip:bob@Other.Example", "example.test") == "bob@other.example"
    assert build_address("<sip:bob@example.test;transport=tcp>", "x") == "bob@example.test"
    incoming = Incoming(DEVS, aor("alice"), "text/plain", b"")
    join = parse_command(b"#join chat-000", "#")
    assert target(CONFIG, incoming, join) == "chat-000@conference.example.test"
    assert target(CONFIG, incoming, parse_command(b"#join", "#")) == DEVS
    with pytest.raises(Refused):
        target(CONFIG, incoming, parse_command(b"#join devs@elsewhere.example", "#"))


# -- #create ------------------------------------------------------------------------------


def test_create_a_new_room_makes_the_sender_owner() -> None:
    effects = run("#create", None)
    assert changes(effects) == [CreateRoom(DEVS, aor("alice"), False)]
    assert sent(effects) == [("alice", "*** Room was created")]


def test_create_private_and_named_rooms() -> None:
    assert changes(run("#create private", None)) == [CreateRoom(DEVS, aor("alice"), True)]
    other = "ops@conference.example.test"
    assert changes(run("#create ops", None)) == [CreateRoom(other, aor("alice"), False)]
    assert changes(run("#create ops private", None)) == [CreateRoom(other, aor("alice"), True)]
    assert notice(run("#create ops public", None)) == (
        "*** Invalid argument 'public' (send '#help' for help)"
    )


def test_create_an_existing_room() -> None:
    assert notice(run("#create")) == "*** Room already exists and you are a member"
    private = make_room(("alice", OWNER), private=True)
    assert notice(run("#create", private, sender="erin")) == (
        "*** A private room with the same name already exists"
    )
    effects = run("#create", sender="erin")
    assert changes(effects) == [AddMember(DEVS, aor("erin"), MEMBER)]
    assert sent(effects) == [
        (user, "*** [erin] has joined the room") for user in ("alice", "bob", "carol", "erin")
    ]


# -- #join --------------------------------------------------------------------------------


def test_join_a_public_room_tells_everyone_the_joiner_included() -> None:
    effects = run("#join", sender="erin")
    assert changes(effects) == [AddMember(DEVS, aor("erin"), MEMBER)]
    assert sent(effects) == [
        (user, "*** [erin] has joined the room") for user in ("alice", "bob", "carol", "erin")
    ]


def test_join_a_missing_room_creates_it_or_says_not_found() -> None:
    effects = run("#join", None, sender="erin")
    assert changes(effects) == [CreateRoom(DEVS, aor("erin"), False)]
    assert sent(effects) == [("erin", "*** Room was created")]
    config = Config("#", False, "example.test", "conference.example.test")
    effects = run("#join", None, sender="erin", config=config)
    assert changes(effects) == [] and notice(effects) == "*** Room not found"


def test_join_twice_and_join_a_private_room() -> None:
    assert notice(run("#join", sender="carol")) == "*** You are in the room already"
    private = make_room(("alice", OWNER), ("bob", MEMBER), ("dave", INVITED), private=True)
    effects = run("#join", private, sender="erin")
    assert changes(effects) == []
    assert sent(effects) == [
        ("erin", "*** Private rooms are by invitation only. Room owners have been notified."),
        ("alice", "*** [erin] attempted to join the room"),
        ("bob", "*** [erin] attempted to join the room"),
    ]


def test_join_by_an_invited_user_accepts_the_invitation() -> None:
    effects = run("#join", sender="dave")
    assert changes(effects) == [SetRole(DEVS, aor("dave"), MEMBER)]
    assert ("dave", "*** [dave] has joined the room") in sent(effects)


# -- #invite, #accept, #reject -------------------------------------------------------------


def test_owner_and_admin_invite() -> None:
    for inviter in ("alice", "bob"):
        effects = run("#invite erin", sender=inviter)
        assert changes(effects) == [AddMember(DEVS, aor("erin"), INVITED, invited_by=aor(inviter))]
        (invite,) = [e for e in effects if isinstance(e, Send)]
        assert invite.kind is Kind.INVITE and invite.from_uri == DEVS_URI
        assert invite.body.decode() == (
            f"*** [{inviter}] invites you to join the room (send '#accept' or '#reject')"
        )


def test_invite_refusals_are_told() -> None:
    assert notice(run("#invite erin", sender="carol")) == (
        "*** You don't have the permission to invite users to this room"
    )
    assert notice(run("#invite erin", sender="erin")) == "*** You are not a member of this room"
    assert (
        notice(run("#invite carol")) == "*** sip:carol@example.test is already a member of the room"
    )
    assert notice(run("#invite dave")) == "*** sip:dave@example.test is already invited to the room"
    assert notice(run("#invite")) == "*** Missing argument: #invite <user_name> [<room_name>]"
    assert notice(run("#invite erin", None)) == "*** Room not found"
    banned = make_room(("alice", OWNER), banned=("erin",))
    assert (
        notice(run("#invite erin", banned)) == "*** sip:erin@example.test is banned from the room"
    )


def test_invite_into_another_room_by_argument() -> None:
    ops = make_room(("alice", OWNER), key="ops@conference.example.test")
    effects = run("#invite erin ops", ops)
    assert changes(effects) == [
        AddMember("ops@conference.example.test", aor("erin"), INVITED, invited_by=aor("alice"))
    ]


def test_accept_and_reject() -> None:
    effects = run("#accept", sender="dave")
    assert changes(effects) == [SetRole(DEVS, aor("dave"), MEMBER)]
    assert sent(effects) == [
        (user, "*** [dave] has joined the room") for user in ("alice", "bob", "carol", "dave")
    ]
    for command in ("#reject", "#deny"):
        effects = run(command, sender="dave")
        assert changes(effects) == [RemoveMember(DEVS, aor("dave"))] and sent(effects) == []
    assert (
        notice(run("#accept", sender="carol")) == "*** You have no pending invitation to this room"
    )
    assert notice(run("#reject", sender="erin")) == "*** You are not a member of this room"


# -- #add, #remove, #leave, #destroy -------------------------------------------------------


def test_add_by_owner_or_admin_only() -> None:
    effects = run("#add erin", sender="bob")
    assert changes(effects) == [AddMember(DEVS, aor("erin"), MEMBER)]
    assert ("erin", "*** [erin] has joined the room") in sent(effects)
    assert ("dave", "*** [erin] has joined the room") not in sent(effects)  # invited: nothing
    assert notice(run("#add erin", sender="carol")) == (
        "*** You don't have the permmission to add members to this room"
    )
    assert notice(run("#add carol")).endswith("is already a member of the room")


def test_remove() -> None:
    effects = run("#remove carol", sender="bob")
    assert changes(effects) == [RemoveMember(DEVS, aor("carol"))]
    assert sent(effects) == [
        ("carol", "*** You have been removed from the room"),
        ("alice", "*** [carol] has left the room"),
        ("bob", "*** [carol] has left the room"),
    ]
    assert notice(run("#remove alice", sender="bob")) == "*** The room's owner cannot be removed"
    assert notice(run("#remove bob", sender="carol")) == (
        "*** You don't have the permission to remove members from this room"
    )
    assert notice(run("#remove erin")) == "*** sip:erin@example.test is not a member of the room"


def test_leave_and_exit() -> None:
    for command in ("#leave", "#exit"):
        effects = run(command, sender="carol")
        assert sent(effects) == [
            (user, "*** [carol] has left the room") for user in ("alice", "bob", "carol")
        ]
        assert changes(effects) == [RemoveMember(DEVS, aor("carol"))]
    assert notice(run("#leave")) == (
        "*** You are the room's owner and cannot leave. "
        "Use #destroy if you wish to destroy the room."
    )
    assert notice(run("#leave", sender="erin")) == "*** You are not a member of this room"


def test_destroy_by_the_owner_only() -> None:
    effects = run("#destroy")
    assert sent(effects) == [
        (user, "*** Room has been destroyed") for user in ("alice", "bob", "carol")
    ]
    assert changes(effects) == [DestroyRoom(DEVS)]
    assert notice(run("#destroy", sender="bob")) == "*** Only the room's owner can destroy the room"
    assert notice(run("#destroy", None)) == "*** Room not found"


# -- #members, #rooms, #modify, #help, unknown --------------------------------------------


def test_members_marks_owner_and_admins_and_hides_the_invited() -> None:
    room = make_room(("alice", OWNER), ("carol", MEMBER), ("bob", ADMIN), ("dave", INVITED))
    for command in ("#members", "#list"):
        assert sent(run(command, room, sender="carol")) == [
            ("carol", "Members:\n*[alice]\n[carol]\n~[bob]")
        ]


def test_invited_users_cannot_read_members() -> None:  # Kamailio lets them (§3.9)
    assert notice(run("#members", sender="dave")) == (
        "*** You are invited to this room but have not joined it yet"
    )
    assert notice(run("#members", sender="erin")) == "*** You are not a member of this room"


def test_rooms_lists_what_the_worker_says_is_visible() -> None:
    effects = run("#rooms", None, sender="erin", rooms=["devs", "ops"])
    assert sent(effects) == [("erin", "Rooms:\n[devs]\n[ops]")]
    assert sent(run("#rooms", None, rooms=[])) == [("alice", "Rooms:")]


def test_modify_sets_the_role_and_tells_the_room() -> None:
    effects = run("#modify carol admin")
    assert changes(effects) == [SetRole(DEVS, aor("carol"), ADMIN)]
    assert ("carol", "*** sip:carol@example.test is now admin") in sent(effects)
    assert notice(run("#modify carol admin", sender="carol")) == (
        "*** You don't have the permmission to modify members in this room"
    )
    assert notice(run("#modify carol boss")) == "*** Invalid role 'boss' (owner, admin or member)"
    assert notice(run("#modify carol")).startswith("*** Missing argument: #modify")


def test_modify_honours_its_room_argument() -> None:  # Kamailio ignores it (C12 bug 1)
    ops = make_room(("alice", OWNER), ("erin", MEMBER), key="ops@conference.example.test")
    incoming = Incoming(DEVS, aor("alice"), "text/plain", b"#modify erin admin ops")
    command = parse_command(incoming.body, "#")
    assert target(CONFIG, incoming, command) == "ops@conference.example.test"
    effects = execute(CONFIG, incoming, ops)
    assert changes(effects) == [SetRole("ops@conference.example.test", aor("erin"), ADMIN)]


def test_modify_of_a_non_member_is_refused() -> None:  # Kamailio crashes (C12 bug 2)
    assert (
        notice(run("#modify erin admin")) == "*** sip:erin@example.test is not a member of the room"
    )


def test_modify_keeps_an_owner() -> None:
    assert notice(run("#modify alice member")) == "*** The room would have no owner left"
    effects = run("#modify bob owner")
    assert changes(effects) == [SetRole(DEVS, aor("bob"), OWNER)]


def test_help_is_kamailios_text_byte_for_byte_then_imstacks_commands() -> None:
    (help_message,) = [e for e in run("#help", None) if isinstance(e, Send)]
    kamailio, _, ours = help_message.body.partition(
        b"#destroy [<room_name>] - destroy conference room\r\n"
    )
    assert kamailio.startswith(b"\r\n#create <room_name> - create new conference room\r\n")
    assert b"#members - list members is a conference room\r\n" in kamailio
    assert kamailio.count(b"\r\n") == 12
    assert ours == (
        b"#topic [<text>] - show or set the topic of the conference room\r\n"
        b"#ban <user_name> [<room_name>] - ban a user from a conference room\r\n"
        b"#unban <user_name> [<room_name>] - lift a user's ban from a conference room\r\n"
    )
    assert help_message.from_uri == DEVS_URI and help_message.to == aor("alice")


def test_unknown_command() -> None:
    assert notice(run("#dance now")) == "*** Invalid command 'dance' (send '#help' for help)"


# -- chat ---------------------------------------------------------------------------------


def test_chat_goes_to_every_member_but_the_sender_and_the_invited() -> None:
    effects = run("hi all", sender="bob", content_type="text/plain;charset=UTF-8")
    assert sent(effects) == [("alice", "[bob]: hi all"), ("carol", "[bob]: hi all")]
    assert all(
        isinstance(e, Send)
        and e.kind is Kind.CHAT
        and e.from_uri == DEVS_URI
        and e.content_type == "text/plain;charset=UTF-8"
        for e in effects
    )


def test_chat_keeps_the_content_type() -> None:
    effects = run("<b>hi</b>", content_type="text/html")
    assert {e.content_type for e in effects if isinstance(e, Send)} == {"text/html"}


@pytest.mark.parametrize(
    "content_type", ["message/imdn+xml", "application/im-iscomposing+xml;charset=utf-8"]
)
def test_delivery_notifications_and_typing_are_never_chat(content_type: str) -> None:
    assert run("<imdn/>", content_type=content_type) == []


def test_chat_from_outsiders_and_the_invited_is_refused() -> None:
    assert notice(run("hi", sender="erin")) == (
        "*** You are not a member of this room: your message was not sent"
    )
    assert notice(run("hi", sender="dave")) == (
        "*** You are invited to this room but have not joined it yet"
    )
    assert notice(run("hi", None)) == "*** Room not found"


def test_a_request_uri_that_is_no_room_name_is_refused() -> None:
    incoming = Incoming(".hidden@conference.example.test", aor("alice"), "text/plain", b"#create")
    with pytest.raises(Refused):
        target(CONFIG, incoming, parse_command(incoming.body, "#"))
    assert sent(execute(CONFIG, incoming, None)) == [
        (
            "alice",
            "*** Invalid room '.hidden@conference.example.test': rooms are <name> or "
            "<name>@conference.example.test",
        )
    ]


# -- #ban, #unban ---------------------------------------------------------------------------


def test_ban_a_member_puts_them_out_and_tells_them_then_the_room() -> None:
    for requester in ("alice", "bob"):
        effects = run("#ban carol", sender=requester)
        assert changes(effects) == [Ban(DEVS, aor("carol"))]
        assert sent(effects) == [
            ("carol", "*** You have been banned from the room"),
            ("alice", "*** [carol] has been banned from the room"),
            ("bob", "*** [carol] has been banned from the room"),
        ]


def test_ban_an_invited_user_or_an_outsider_beforehand() -> None:
    effects = run("#ban dave")
    assert changes(effects) == [Ban(DEVS, aor("dave"))]
    assert ("dave", "*** You have been banned from the room") in sent(effects)
    effects = run("#ban sip:Erin@Example.Test", sender="bob")
    assert changes(effects) == [Ban(DEVS, "Erin@example.test")]
    assert ("carol", "*** [Erin] has been banned from the room") in sent(effects)


def test_ban_refusals_are_told() -> None:
    assert notice(run("#ban bob", sender="carol")) == (
        "*** You don't have the permission to ban or unban users in this room"
    )
    assert notice(run("#ban bob", sender="dave")) == (
        "*** You don't have the permission to ban or unban users in this room"
    )
    assert notice(run("#ban bob", sender="erin")) == "*** You are not a member of this room"
    assert notice(run("#ban alice", sender="bob")) == "*** The room's owner cannot be banned"
    assert notice(run("#ban bob", sender="bob")) == "*** You cannot ban yourself"
    assert notice(run("#ban")) == "*** Missing argument: #ban <user_name> [<room_name>]"
    assert notice(run("#ban erin", None)) == "*** Room not found"
    banned = make_room(("alice", OWNER), banned=("erin",))
    assert notice(run("#ban erin", banned)) == "*** sip:erin@example.test is banned from the room"


def test_unban_lets_the_user_back_and_says_so() -> None:
    room = make_room(("alice", OWNER), ("bob", ADMIN), ("carol", MEMBER), banned=("erin",))
    effects = run("#unban ERIN", room, sender="bob")
    assert changes(effects) == [Unban(DEVS, "ERIN@example.test")]
    assert sent(effects) == [
        ("ERIN", "*** You are no longer banned from the room"),
        ("alice", "*** [ERIN] is no longer banned from the room"),
        ("bob", "*** [ERIN] is no longer banned from the room"),
        ("carol", "*** [ERIN] is no longer banned from the room"),
    ]
    assert notice(run("#unban erin", room, sender="carol")) == (
        "*** You don't have the permission to ban or unban users in this room"
    )
    assert notice(run("#unban carol", room)) == (
        "*** sip:carol@example.test is not banned from the room"
    )
    assert notice(run("#unban")) == "*** Missing argument: #unban <user_name> [<room_name>]"


def test_ban_and_unban_in_another_room_by_argument() -> None:
    ops = make_room(("alice", OWNER), ("erin", MEMBER), key="ops@conference.example.test")
    incoming = Incoming(DEVS, aor("alice"), "text/plain", b"#ban erin ops")
    assert target(CONFIG, incoming, parse_command(incoming.body, "#")) == ops.key
    assert changes(execute(CONFIG, incoming, ops)) == [Ban(ops.key, aor("erin"))]


def test_a_banned_user_cannot_join_create_chat_or_be_added_or_invited() -> None:
    room = make_room(("alice", OWNER), ("bob", ADMIN), banned=("erin",))
    for command in ("#join", "#create"):
        effects = run(command, room, sender="erin")
        assert changes(effects) == [] and notice(effects) == "*** You are banned from this room"
    assert notice(run("hi", room, sender="erin")) == "*** You are banned from this room"
    for command in ("#add erin", "#invite erin"):
        assert notice(run(command, room, sender="bob")) == (
            "*** sip:erin@example.test is banned from the room"
        )
    # The banned are no members: no fan-out to them, and #members does not show them.
    assert sent(run("hi", room)) == [("bob", "[alice]: hi")]
    assert sent(run("#members", room)) == [("alice", "Members:\n*[alice]\n~[bob]")]


# -- history ------------------------------------------------------------------------------

HISTORY = Config("#", True, "example.test", "conference.example.test", history=20)


def test_chat_is_remembered_when_history_is_kept() -> None:
    effects = run("hi all", sender="bob", config=HISTORY, content_type="text/html")
    assert changes(effects) == [Remember(DEVS, aor("bob"), "text/html", b"hi all", 20)]
    assert sent(effects) == [("alice", "[bob]: hi all"), ("carol", "[bob]: hi all")]
    assert changes(run("hi all", sender="bob")) == []  # history 0: nothing kept
    assert changes(run("<imdn/>", config=HISTORY, content_type="message/imdn+xml")) == []


def test_joining_or_accepting_replays_the_history_after_the_join_notice() -> None:
    for sender, command in (("erin", "#join"), ("erin", "#create"), ("dave", "#accept")):
        effects = run(command, sender=sender, config=HISTORY)
        assert effects[-1] == Replay(DEVS, aor(sender), 20)
        assert ("alice", f"*** [{sender}] has joined the room") in sent(effects)
    effects = run("#join", sender="dave", config=HISTORY)  # #join as #accept
    assert effects[-1] == Replay(DEVS, aor("dave"), 20)


def test_no_replay_without_history_nor_for_those_who_did_not_join() -> None:
    assert not any(isinstance(e, Replay) for e in run("#join", sender="erin"))
    for sender, command in (
        ("carol", "#join"),  # already in
        ("alice", "#add erin"),  # added by someone else
        ("alice", "#invite erin"),  # not accepted yet
    ):
        effects = run(command, sender=sender, config=HISTORY)
        assert not any(isinstance(e, Replay) for e in effects), command
    private = make_room(("alice", OWNER), private=True)
    assert not any(isinstance(e, Replay) for e in run("#join", private, config=HISTORY))
    assert not any(isinstance(e, Replay) for e in run("#join", None, config=HISTORY))


# -- #topic -------------------------------------------------------------------------------


def test_topic_without_text_shows_it_or_says_there_is_none() -> None:
    assert notice(run("#topic", sender="carol")) == "*** The room has no topic"
    room = make_room(("alice", OWNER), ("carol", MEMBER), topic="Release 2.0 planning")
    for sender in ("alice", "carol", "erin"):  # a public room's topic is public
        effects = run("#TOPIC  ", room, sender=sender)
        assert changes(effects) == []
        assert sent(effects) == [(sender, "*** Topic: Release 2.0 planning")]
        assert [e.from_uri for e in effects if isinstance(e, Send)] == [DEVS_URI]
    assert notice(run("#topic", None)) == "*** Room not found"
    # An empty topic (the API accepts "") is no topic.
    empty = make_room(("alice", OWNER), topic="")
    assert notice(run("#topic", empty)) == "*** The room has no topic"
    assert sent(run("#join", empty, sender="erin"))[-1] == (
        "erin",
        "*** [erin] has joined the room",
    )


def test_a_private_rooms_topic_is_for_its_members_and_invited_only() -> None:
    room = make_room(
        ("alice", OWNER), ("dave", INVITED), private=True, topic="secret", banned=("erin",)
    )
    assert notice(run("#topic", room, sender="dave")) == "*** Topic: secret"
    assert notice(run("#topic", room, sender="frank")) == "*** You are not a member of this room"
    assert notice(run("#topic", room, sender="erin")) == "*** You are banned from this room"


def test_owner_and_admin_set_the_topic_and_every_member_is_told() -> None:
    for setter in ("alice", "bob"):
        effects = run("#topic  Release\t2.0:  ship it #now  \r\nsecond line", sender=setter)
        assert changes(effects) == [SetTopic(DEVS, "Release 2.0:  ship it #now")]
        told = f"*** [{setter}] changed the topic to: Release 2.0:  ship it #now"
        assert sent(effects) == [(user, told) for user in ("alice", "bob", "carol")]


def test_setting_the_topic_is_refused_with_a_reason() -> None:
    assert notice(run("#topic hello", sender="carol")) == (
        "*** You don't have the permission to set the topic of this room"
    )
    assert notice(run("#topic hello", sender="dave")) == (
        "*** You don't have the permission to set the topic of this room"
    )
    assert notice(run("#topic hello", sender="erin")) == "*** You are not a member of this room"
    assert notice(run("#topic hello", None)) == "*** Room not found"
    assert notice(run("#topic " + "x" * 501)) == (
        "*** The topic is too long: 500 characters at most"
    )
    assert changes(run("#topic " + "x" * 500)) == [SetTopic(DEVS, "x" * 500)]
    assert notice(run("#topic bell\x07")) == "*** The topic cannot contain control characters"


def test_topic_acts_on_the_request_uri_room_whatever_the_text() -> None:
    incoming = Incoming(DEVS, aor("alice"), "text/plain", b"#topic ops@conference.example.test")
    assert target(CONFIG, incoming, parse_command(incoming.body, "#")) == DEVS


def test_the_newcomers_join_notice_gives_the_topic() -> None:
    room = replace(TEAM, topic="Release 2.0")
    with_topic = "*** [erin] has joined the room\n*** Topic: Release 2.0"
    for sender, command in (("erin", "#join"), ("erin", "#create"), ("alice", "#add erin")):
        assert sent(run(command, room, sender=sender)) == [
            ("alice", "*** [erin] has joined the room"),
            ("bob", "*** [erin] has joined the room"),
            ("carol", "*** [erin] has joined the room"),
            ("erin", with_topic),
        ]
    for command in ("#accept", "#join"):
        effects = run(command, room, sender="dave")
        assert ("dave", "*** [dave] has joined the room\n*** Topic: Release 2.0") in sent(effects)
        assert ("alice", "*** [dave] has joined the room") in sent(effects)


# -- member limit ---------------------------------------------------------------------------

LIMITED = Config("#", True, "example.test", "conference.example.test", member_limit=3)


def test_a_full_room_refuses_newcomers_with_a_notice() -> None:
    # TEAM: alice, bob, carol joined (3), dave invited (does not count).
    full = "*** The room is full (3 members at most)"
    for sender, command in (("erin", "#join"), ("erin", "#create")):
        effects = run(command, sender=sender, config=LIMITED)
        assert changes(effects) == [] and sent(effects) == [(sender, full)]
        assert [e.from_uri for e in effects if isinstance(e, Send)] == [DEVS_URI]
    for command in ("#accept", "#join"):
        effects = run(command, sender="dave", config=LIMITED)
        assert changes(effects) == []
        assert sent(effects) == [("dave", f"{full}: your invitation stays open, try again later")]
    assert sent(run("#add erin", config=LIMITED)) == [
        ("alice", f"{full}: sip:erin@example.test was not added")
    ]
    assert sent(run("#invite erin", sender="bob", config=LIMITED)) == [
        ("bob", f"{full}: sip:erin@example.test was not invited")
    ]
    # Below the limit all is as before.
    roomy = Config("#", True, "example.test", "conference.example.test", member_limit=4)
    assert changes(run("#join", sender="erin", config=roomy)) == [
        AddMember(DEVS, aor("erin"), MEMBER)
    ]
    assert changes(run("#accept", sender="dave", config=roomy)) == [
        SetRole(DEVS, aor("dave"), MEMBER)
    ]


def test_the_rooms_own_limit_wins_over_the_default_and_0_is_none() -> None:
    room = replace(TEAM, member_limit=0)
    assert changes(run("#join", room, sender="erin", config=LIMITED)) == [
        AddMember(DEVS, aor("erin"), MEMBER)
    ]
    room = replace(TEAM, member_limit=2)  # already beyond: nobody is removed, nobody joins
    assert notice(run("#join", room, sender="erin")) == "*** The room is full (2 members at most)"
    assert sent(run("hi", room, sender="carol")) == [
        ("alice", "[carol]: hi"),
        ("bob", "[carol]: hi"),
    ]


def test_a_private_rooms_invitation_rule_comes_before_its_limit() -> None:
    private = make_room(("alice", OWNER), private=True, member_limit=1)
    assert sent(run("#join", private, sender="erin")) == [
        ("erin", "*** Private rooms are by invitation only. Room owners have been notified."),
        ("alice", "*** [erin] attempted to join the room"),
    ]


def test_the_rooms_history_length_wins_over_the_default() -> None:
    room = replace(TEAM, history_length=5)
    assert changes(run("hi", room, config=HISTORY)) == [
        Remember(DEVS, aor("alice"), "text/plain;charset=UTF-8", b"hi", 5)
    ]
    assert run("#join", room, sender="erin")[-1] == Replay(DEVS, aor("erin"), 5)
    off = replace(TEAM, history_length=0)
    assert changes(run("hi", off, config=HISTORY)) == []
    assert not any(isinstance(e, Replay) for e in run("#join", off, sender="erin", config=HISTORY))


# -- flood control ----------------------------------------------------------------------------

FLOOD = Config("#", True, "example.test", "conference.example.test", min_interval=2.0)
T0 = datetime(2026, 11, 26, 12, 0, 0, tzinfo=UTC)


def test_chat_sooner_than_the_interval_is_refused_with_a_notice() -> None:
    later = T0 + timedelta(seconds=1.5)
    effects = run("again", sender="bob", config=FLOOD, received_at=later, last_chat=T0)
    assert changes(effects) == []
    assert sent(effects) == [
        (
            "bob",
            "*** You are sending messages too fast (one every 2 seconds at most): "
            "your message was not sent",
        )
    ]


def test_chat_after_the_interval_is_sent_and_its_time_recorded() -> None:
    later = T0 + timedelta(seconds=2)
    for last in (T0, None):
        effects = run("again", sender="bob", config=FLOOD, received_at=later, last_chat=last)
        assert sent(effects) == [("alice", "[bob]: again"), ("carol", "[bob]: again")]
        assert changes(effects) == [Spoke(DEVS, aor("bob"), later)]


def test_flood_control_off_and_what_it_never_counts() -> None:
    # 0: off, nothing recorded.
    effects = run("hi", sender="bob", received_at=T0, last_chat=T0)
    assert len(sent(effects)) == 2 and changes(effects) == []
    # Commands and typing notifications are not chat.
    assert notice(run("#members", sender="bob", config=FLOOD, received_at=T0, last_chat=T0))
    assert (
        run(
            "<x/>",
            sender="bob",
            config=FLOOD,
            content_type="application/im-iscomposing+xml",
            received_at=T0,
            last_chat=T0,
        )
        == []
    )
