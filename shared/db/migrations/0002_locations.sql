-- Location service (RFC 3261 §10): one row per binding of an address-of-record to a contact.
--
-- aor is "user@domain" (lower-case domain, like users.username/domain; no scheme), the key
-- the registrar, the router and the workers agree on; the NOTIFY "registered" carries it.
-- contact is the Contact URI as the UA registered it (compared by the registrar with the
-- RFC 3261 §19.1.4 rules, so the text is kept as sent). transport/source_host/source_port
-- are where the REGISTER came from: requests to a UDP binding go back there (RFC 3581,
-- NAT-friendly); requests to a TCP/TLS binding go over connection_id, held by the relay
-- process relay_instance. Such a binding is deleted when its connection closes (and when
-- that relay restarts). call_id/cseq implement the §10.3 ordering rules; q and
-- instance_id (+sip.instance, RFC 5626) are kept for forking and for clients to see.
CREATE TABLE locations (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    aor            text        NOT NULL CHECK (aor ~ '^[^@:\s]+@[^@\s]+$'),
    contact        text        NOT NULL CHECK (contact <> ''),
    transport      text        NOT NULL CHECK (transport IN ('udp', 'tcp', 'tls')),
    source_host    text        NOT NULL,
    source_port    integer     NOT NULL CHECK (source_port BETWEEN 1 AND 65535),
    relay_instance text        NOT NULL,
    connection_id  text,
    q              real        NOT NULL DEFAULT 1.0 CHECK (q >= 0 AND q <= 1),
    instance_id    text,
    user_agent     text,
    call_id        text        NOT NULL,
    cseq           bigint      NOT NULL CHECK (cseq >= 0),
    expires_at     timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CHECK ((transport = 'udp') = (connection_id IS NULL)),
    UNIQUE (aor, contact)
);

-- Lookups by AoR use the unique index; these serve the purge and connection-close paths.
CREATE INDEX locations_expires_at ON locations (expires_at);
CREATE INDEX locations_connection ON locations (relay_instance, connection_id)
    WHERE connection_id IS NOT NULL;
