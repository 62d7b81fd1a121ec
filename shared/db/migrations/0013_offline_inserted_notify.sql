-- Every new offline_messages row NOTIFYs `offline_inserted` with its recipient (payload
-- {"type": "stored", "id": "<recipient>"}), whoever stores it (the relay, msilo, imc, the
-- API). The SIP edge remembers which recipients have no stored message at all, so that a
-- MESSAGE for them needs no query to learn whether it would overtake stored ones
-- (services/relay/sip/caches.py, MailboxCache); this notification tells it otherwise as soon
-- as the row commits. Notifications with the same payload in one transaction are folded
-- into one by PostgreSQL.
CREATE FUNCTION offline_inserted_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'offline_inserted', json_build_object('type', 'stored', 'id', NEW.recipient)::text
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER offline_inserted_notify
    AFTER INSERT ON offline_messages
    FOR EACH ROW EXECUTE FUNCTION offline_inserted_notify();
