-- Control API bearer tokens made with `imstack token create`. Only the SHA-256 of the token
-- is kept: a token is 256 random bits, so a plain hash is enough (nothing to brute-force,
-- unlike a password) and lets a request find its token with one index lookup.
-- scope 'admin' may change things; 'read' may only look. A revoked token keeps its row (for
-- `imstack token list`), and its name may be given to a new token.
CREATE TABLE api_tokens (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name         text        NOT NULL CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._@-]{0,99}$'),
    token_sha256 text        NOT NULL UNIQUE CHECK (token_sha256 ~ '^[0-9a-f]{64}$'),
    scope        text        NOT NULL DEFAULT 'admin' CHECK (scope IN ('admin', 'read')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked      boolean     NOT NULL DEFAULT false
);

CREATE UNIQUE INDEX api_tokens_active_name ON api_tokens (name) WHERE NOT revoked;
