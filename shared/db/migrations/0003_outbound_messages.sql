-- Outbound deliveries: "send this MESSAGE to this AoR". Workers that never open a SIP
-- socket (msilo, imc, the API) queue rows here; the relay sends them and writes the outcome
-- back. Every hand-over is a committed row, so nothing is lost when a process crashes.
--
-- Contract:
--   * Queue: INSERT a row (status 'queued'), then NOTIFY channel 'outbound' with payload
--     {"type": "queued", "id": <id>} in the same transaction (shared.db.outbound.queue_message
--     does both). The relay also polls, so a lost NOTIFY only costs latency.
--   * The relay claims queued rows FOR UPDATE SKIP LOCKED, sets status 'sending' and
--     attempts + 1, commits, sends a MESSAGE (From: from_uri with from_display, To: the AoR,
--     Content-Type, extra_headers, body) to every current binding of to_aor in parallel and
--     writes the outcome: 'delivered' (the first 2xx; last_status = its code) or 'failed'
--     (last_status = the best final code: 480 when the AoR has no binding, 408 on timeout,
--     503 when the transport failed). It then NOTIFYs channel 'outbound_done' with
--     {"type": "delivered" | "failed", "id": <id>} so that the queueing worker can act
--     (msilo deletes a stored message after 'delivered', keeps it after 'failed').
--   * A row left 'sending' by a relay that died is claimed again once updated_at is older
--     than the relay's delivery lease: delivery is at least once, never silently dropped.
--   * The relay never retries a 'failed' row by itself; the queueing worker decides.
--   * extra_headers is a JSON array of [name, value] pairs appended to the request (e.g.
--     [["Date", "..."]]). Headers the relay owns (Via, From, To, Call-ID, CSeq, Contact,
--     Max-Forwards, Route, Record-Route, Content-Type, Content-Length) are ignored.
--   * source and source_id say who queued the row and for what (e.g. 'msilo', 42), so the
--     worker can match the outcome to its own row.
CREATE TABLE outbound_messages (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_uri      text        NOT NULL CHECK (from_uri ~* '^sips?:'),
    from_display  text,
    to_aor        text        NOT NULL CHECK (to_aor ~ '^[^@:\s]+@[^@\s]+$'),
    content_type  text        NOT NULL DEFAULT 'text/plain;charset=UTF-8',
    body          bytea       NOT NULL,
    extra_headers jsonb       NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(extra_headers) = 'array'),
    source        text,
    source_id     bigint,
    status        text        NOT NULL DEFAULT 'queued'
                              CHECK (status IN ('queued', 'sending', 'delivered', 'failed')),
    attempts      integer     NOT NULL DEFAULT 0,
    last_status   integer     CHECK (last_status BETWEEN 100 AND 699),
    last_reason   text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz
);

-- The relay's claim: queued rows (and stale 'sending' ones) oldest first.
CREATE INDEX outbound_messages_pending ON outbound_messages (id)
    WHERE status IN ('queued', 'sending');
CREATE INDEX outbound_messages_source ON outbound_messages (source, source_id)
    WHERE source IS NOT NULL;
