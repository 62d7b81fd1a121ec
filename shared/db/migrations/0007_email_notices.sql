-- E-mail notices of stored offline messages (msilo). A user with an e-mail address and
-- notify_email on gets at most one e-mail per IMSTACK_MSILO_EMAIL_INTERVAL summarising the
-- messages stored for them since the last one. notified_upto is the highest
-- offline_messages.id an e-mail has covered; sending never blocks or undoes storing.
ALTER TABLE users ADD COLUMN notify_email boolean NOT NULL DEFAULT true;

CREATE TABLE email_notices (
    user_id       bigint      PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    notified_upto bigint      NOT NULL DEFAULT 0,
    last_sent_at  timestamptz,
    failures      integer     NOT NULL DEFAULT 0,
    retry_at      timestamptz
);
