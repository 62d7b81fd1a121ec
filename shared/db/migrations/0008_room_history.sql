-- Room history (beyond Kamailio's imc, what ejabberd/Prosody room users expect): the last
-- chat messages of each room, replayed to a member who joins or accepts an invitation.
--
-- Contract:
--   * imc inserts a row per chat message it fans out (the original body and Content-Type,
--     not the "[user]: " form), in the transaction that fans it out and under the room's
--     lock, then deletes that room's rows beyond the newest IMSTACK_IMC_HISTORY: a room
--     holds at most that many. With IMSTACK_IMC_HISTORY = 0 nothing is kept or replayed
--     (rows left from before are ignored and go with their room).
--   * Replay reads the newest IMSTACK_IMC_HISTORY rows of the room, oldest first, and
--     queues each as a MESSAGE from the room, body "[<sender user>]: <body>", source
--     'imc-history' (lost when undeliverable: never stored offline).
--   * Rows go with their room (ON DELETE CASCADE).
CREATE TABLE room_messages (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    room_id      bigint      NOT NULL REFERENCES rooms (id) ON DELETE CASCADE,
    sender       text        NOT NULL CHECK (sender ~ '^[^@:\s]+@[^@\s]+$'),
    content_type text        NOT NULL,
    body         bytea       NOT NULL,
    sent_at      timestamptz NOT NULL DEFAULT now()
);

-- Replay (newest N of a room) and the trim after each insert.
CREATE INDEX room_messages_room ON room_messages (room_id, id);
