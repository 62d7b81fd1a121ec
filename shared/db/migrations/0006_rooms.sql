-- Chat rooms (Kamailio's imc_rooms / imc_members), and the queue through which the relay
-- hands room traffic to the imc worker.
--
-- Contract:
--   * A room is keyed by (name, domain), both lower-case (IMC-M1: compared without case);
--     its URI is sip:<name>@<domain>. owner is the address that created it; who may do what
--     is decided by room_members.role alone (#modify can make several owners).
--   * A member is keyed by (room, lower(member)); member is "user@domain" like
--     locations.aor. role 'invited' = invited, not yet accepted (Kamailio's INVITED flag):
--     such a member gets no room traffic and cannot read #members. state 'banned' is a
--     user kept out of the room (not a member; cannot join or be added until unbanned).
--     invited_by is who sent the invitation (the failure notice goes to them).
--   * Inbound (the relay, services/relay/sip/handover.py deliver_to_room): INSERT a
--     room_inbox row and NOTIFY channel 'room_inbox' {"type": "queued", "id": <id>} in one
--     transaction, commit, and only then answer the sender 202 Accepted.
--   * imc claims the oldest row of one room (lowest id per room, FOR UPDATE SKIP LOCKED, so
--     a room's traffic is handled in order and by one worker at a time), applies it (room
--     and member changes, outbound_messages rows) and deletes it in the same transaction:
--     each MESSAGE is handled exactly once, and a crash leaves it queued.
--   * imc's outbound rows carry source 'imc' (notices), 'imc-chat' (fan-out) or
--     'imc-invite' (invitations); imc deletes them once it has acted on their outcome (a
--     failed chat delivery is moved into offline_messages; a failed invitation is
--     withdrawn and the inviter told).
CREATE TABLE rooms (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text        NOT NULL CHECK (name <> '' AND name = lower(name)
                                           AND name !~ '[@:\s]' AND name !~ '^\.'),
    domain     text        NOT NULL CHECK (domain <> '' AND domain = lower(domain)),
    owner      text        NOT NULL CHECK (owner ~ '^[^@:\s]+@[^@\s]+$'),
    private    boolean     NOT NULL DEFAULT false,
    topic      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (name, domain)
);

CREATE TABLE room_members (
    id         bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id    bigint      NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    member     text        NOT NULL CHECK (member ~ '^[^@:\s]+@[^@\s]+$'),
    role       text        NOT NULL CHECK (role IN ('owner', 'admin', 'member', 'invited')),
    state      text        NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'banned')),
    invited_by text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX room_members_room_member ON room_members (room_id, lower(member));
-- "Which rooms is this user in" (#rooms, the API).
CREATE INDEX room_members_member ON room_members (lower(member));

CREATE TABLE room_inbox (
    id             bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room           text        NOT NULL CHECK (room ~ '^[^@:\s]+@[^@\s]+$'),
    sender         text        NOT NULL CHECK (sender ~ '^[^@:\s]+@[^@\s]+$'),
    sender_display text,
    call_id        text        NOT NULL DEFAULT '',
    content_type   text        NOT NULL,
    body           bytea       NOT NULL,
    received_at    timestamptz NOT NULL DEFAULT now()
);

-- The claim: the oldest row of each room.
CREATE INDEX room_inbox_room ON room_inbox (room, id);
