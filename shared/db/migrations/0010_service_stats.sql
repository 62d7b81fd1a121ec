-- Statistics across services. The services are separate processes (DESIGN.md), so what lives
-- only in one process's memory reaches the control API through these two tables.
--
-- service_stats: one row per running service instance (service, instance), upserted every
-- IMSTACK_STATS_INTERVAL seconds and once more at shutdown by that instance's publisher
-- (shared/stats.py). counters are the instance's monotonically increasing event counts
-- since it started ({"name": n} or, for a labelled family, {"name": {"label": n}}); gauges
-- are current values ({"name": x}). The publisher sets stale_at a few intervals ahead:
-- readers ignore a row whose stale_at has passed (the instance died or hangs), and any
-- publisher deletes rows stale for long. Counts that are truths in the database (stored
-- messages, rooms, members, bindings) are not published: readers count the tables.
CREATE TABLE service_stats (
    service    text        NOT NULL CHECK (service ~ '^[a-z][a-z0-9_-]{0,31}$'),
    instance   text        NOT NULL CHECK (instance <> '' AND length(instance) <= 300),
    counters   jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(counters) = 'object'),
    gauges     jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(gauges) = 'object'),
    started_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    stale_at   timestamptz NOT NULL,
    PRIMARY KEY (service, instance)
);

CREATE INDEX service_stats_stale_at ON service_stats (stale_at);

-- msrp_sessions: the MSRP relay's live sessions (RFC 4976 §5: a Use-Path issued after a
-- successful AUTH), like Kamailio's msrp.cmaplist. The relay process relay_instance (the
-- same key as locations.relay_instance and its service_stats row) inserts a row soon after
-- it issues a session, deletes it when the session expires or its connection closes, and
-- writes the byte counts (those of the session's connection) once per stats interval. A
-- relay deletes its previous run's rows when it starts and its rows when it stops; rows of
-- a relay whose service_stats row is stale are not shown, and are deleted later.
CREATE TABLE msrp_sessions (
    session_id     text        PRIMARY KEY CHECK (session_id <> ''),
    relay_instance text        NOT NULL,
    aor            text        NOT NULL CHECK (aor ~ '^[^@:\s]+@[^@\s]+$'),
    peer           text        NOT NULL,
    transport      text        NOT NULL CHECK (transport IN ('tcp', 'tls')),
    use_path       text        NOT NULL,
    client_uri     text        NOT NULL,
    created_at     timestamptz NOT NULL,
    expires_at     timestamptz NOT NULL,
    bytes_in       bigint      NOT NULL DEFAULT 0 CHECK (bytes_in >= 0),
    bytes_out      bigint      NOT NULL DEFAULT 0 CHECK (bytes_out >= 0),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX msrp_sessions_instance ON msrp_sessions (relay_instance);
CREATE INDEX msrp_sessions_aor ON msrp_sessions (aor, created_at);
