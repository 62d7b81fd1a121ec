-- Users: one profile for SIP and MSRP. Digest credentials only (RFC 7616 / RFC 8760):
-- HA1 = H(username ":" realm ":" password) with realm = the user's domain, for MD5 and
-- SHA-256. The plaintext password is never stored.
CREATE TABLE users (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username     text        NOT NULL CHECK (username <> '' AND username !~ '[@:\s]'),
    domain       text        NOT NULL CHECK (domain <> '' AND domain = lower(domain)),
    display_name text,
    email        text,
    ha1_md5      text        NOT NULL CHECK (ha1_md5 ~ '^[0-9a-f]{32}$'),
    ha1_sha256   text        NOT NULL CHECK (ha1_sha256 ~ '^[0-9a-f]{64}$'),
    disabled     boolean     NOT NULL DEFAULT false,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    UNIQUE (username, domain)
);
