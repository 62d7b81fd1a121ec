-- Fan-out rows: ONE outbound_messages row carries one MESSAGE for many AoRs (a room's chat
-- message for its members), instead of one row per copy. The relay claims it once and sends
-- the copies from memory; the database pays one insert, one claim and a few outcome updates
-- per room message, not an insert, two updates and a delete per copy (whose dead tuples
-- the next claim had to step over).
--
-- Contract (in addition to 0003 and 0009):
--   * recipients IS NULL: an ordinary row, one MESSAGE for to_aor (unchanged).
--   * recipients IS NOT NULL: a fan-out row. to_aor is who it is sent on behalf of (a
--     room's AoR, name@domain); the relay sends one copy (its own Via, From tag, To,
--     Call-ID and Request-URI; From, Content-Type, extra_headers and body of the row) to
--     every AoR in recipients that is not in recipients_done. Never with an order_key.
--   * While sending, the relay appends to recipients_done the AoRs whose copy has an
--     outcome (a 2xx, or a final failure), a batch at a time; recipients_delivered counts
--     the 2xx. A copy that failed because its AoR cannot take it now (408, 480, 503) is
--     stored in the offline store (From: from_uri, no display name, no extra headers) in the
--     transaction that records it in recipients_done; other failures are dropped. A relay
--     that died mid-fan-out leaves the row 'sending': whoever claims it again sends only to
--     the AoRs not in recipients_done (at least once: a copy whose 2xx arrived just before
--     the crash, not yet recorded, arrives twice).
--   * When every recipient is in recipients_done the row is finished in the same statement
--     as the last batch: status 'delivered' (last_status 200) when at least one copy was
--     delivered, else 'failed' (last_status the last failure's code); last_reason
--     '<delivered> of <recipients> delivered'; NOTIFY 'outbound_done' as for any row.
ALTER TABLE outbound_messages
    ADD COLUMN recipients           text[],
    ADD COLUMN recipients_done      text[]  NOT NULL DEFAULT '{}',
    ADD COLUMN recipients_delivered integer NOT NULL DEFAULT 0,
    ADD CONSTRAINT outbound_messages_fanout CHECK (
        recipients IS NULL OR (order_key IS NULL AND cardinality(recipients) > 0));
