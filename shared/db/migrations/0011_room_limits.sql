-- Room options beyond Kamailio's imc: a member limit and a history length per room, and
-- the time of each member's last chat message (flood control).
--
-- Contract:
--   * rooms.member_limit: how many joined members (roles owner, admin, member; the invited
--     and the banned do not count) the room may have. NULL: the setting
--     IMSTACK_IMC_MEMBER_LIMIT applies (default 0); 0: no limit. When the room is full,
--     imc refuses #join, #create (of the existing room), #accept, #add and #invite with a
--     notice; an invitation stays open while the room is full. Lowering it below the
--     current count removes nobody: only newcomers are refused.
--   * rooms.history_length: chat messages the room keeps and replays to a member who
--     joins or accepts (0008's contract, with this number instead of IMSTACK_IMC_HISTORY).
--     NULL: IMSTACK_IMC_HISTORY; 0: nothing kept or replayed for this room.
--   * Both are set by the control API's room options; imc reads them with the room, under
--     its lock.
--   * room_members.last_chat_at: room_inbox.received_at of the member's last chat message
--     imc fanned out (NULL: none yet). A chat message received less than
--     IMSTACK_IMC_MIN_INTERVAL seconds after it is not fanned out (the sender gets a
--     notice) and does not move it. Kept in the database, so the limit holds across
--     several imc processes and restarts; it goes with the membership.
ALTER TABLE rooms
    ADD COLUMN member_limit   integer CHECK (member_limit >= 0),
    ADD COLUMN history_length integer CHECK (history_length BETWEEN 0 AND 1000);

ALTER TABLE room_members ADD COLUMN last_chat_at timestamptz;
