-- Offline messages (Kamailio's msilo "silo" table): MESSAGEs stored for a user who was not
-- reachable, delivered by the msilo worker when the user registers again.
--
-- Contract:
--   * Store (the relay, services/relay/sip/handover.py): INSERT a row and commit, and only then
--     answer the sender 202 Accepted. Stores for one recipient are serialised by an advisory
--     transaction lock on the recipient (shared.db.offline.lock_recipient), taken before the
--     INSERT: that makes the quota check exact and makes id order = commit order per recipient,
--     so `id` is the ordering key (storage order) and a reader never sees a gap fill in later.
--   * Deliver (msilo): the recipient's head row (lowest id not expired) is claimed FOR UPDATE
--     SKIP LOCKED; if it is 'stored' (and retry_at has passed) an outbound_messages row is
--     queued for it (source 'msilo', source_id = id) and the row becomes 'sending' with
--     outbound_id set, in the same transaction. Only the head is ever in flight, so delivery
--     is strictly in order per recipient, and a replica that finds the head locked leaves the
--     recipient to the replica holding it.
--   * Outcome: when the outbound row is 'delivered' (the UA answered 2xx) the offline row is
--     deleted; when 'failed' it goes back to 'stored' with last_status and retry_at set, and
--     the recipient's later messages wait behind it (order). A new registration clears
--     retry_at. Any msilo replica can advance a row: the state is all here.
--   * Expired rows (expires_at <= now()) are never delivered and are purged on a timer.
CREATE TABLE offline_messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recipient       text        NOT NULL CHECK (recipient ~ '^[^@:\s]+@[^@\s]+$'),
    sender_uri      text        NOT NULL CHECK (sender_uri ~* '^sips?:'),
    sender_display  text,
    call_id         text        NOT NULL DEFAULT '',
    received_at     timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz NOT NULL,
    content_type    text        NOT NULL,
    body            bytea       NOT NULL,
    extra_headers   jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(extra_headers) = 'array'),
    state           text        NOT NULL DEFAULT 'stored' CHECK (state IN ('stored', 'sending')),
    attempts        integer     NOT NULL DEFAULT 0,
    outbound_id     bigint      UNIQUE REFERENCES outbound_messages (id) ON DELETE SET NULL,
    last_status     integer     CHECK (last_status BETWEEN 100 AND 699),
    last_reason     text,
    last_attempt_at timestamptz,
    retry_at        timestamptz
);

-- The head of a recipient's queue, the quota count, the per-user listing.
CREATE INDEX offline_messages_recipient ON offline_messages (recipient, id);
CREATE INDEX offline_messages_expires_at ON offline_messages (expires_at);
