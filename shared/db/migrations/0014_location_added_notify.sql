-- Every binding that appears NOTIFYs `location_added` with its AoR (payload
-- {"type": "added", "id": "<aor>"}), whoever writes it (a relay's registrar, another relay,
-- the API, plain SQL). The SIP edge remembers which AoRs have no binding at all, so that a
-- MESSAGE for an offline user needs no query to learn it must be stored
-- (services/relay/sip/caches.py, BindingCache); this notification tells every relay
-- otherwise as soon as the binding commits.
--
-- A binding appears when a row is inserted, or when an update brings back a row whose
-- expiry had passed but that was not purged yet (a REGISTER upserting that contact). An
-- update of a binding far from its expiry (the usual refresh) cannot make an AoR that a
-- relay saw as offline have a binding, and does not NOTIFY. The margin of the condition
-- covers a relay that read the row just before the updating transaction commits (the
-- time between the trigger and the commit: far below a minute for the registrar's short
-- transactions). Notifications with the same payload in one transaction are folded into
-- one by PostgreSQL.
CREATE FUNCTION location_added_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(
        'location_added', json_build_object('type', 'added', 'id', NEW.aor)::text
    );
    RETURN NULL;
END
$$;

CREATE TRIGGER location_inserted_notify
    AFTER INSERT ON locations
    FOR EACH ROW EXECUTE FUNCTION location_added_notify();

CREATE TRIGGER location_revived_notify
    AFTER UPDATE ON locations
    FOR EACH ROW
    WHEN (OLD.expires_at <= clock_timestamp() + interval '1 minute'
          OR OLD.aor IS DISTINCT FROM NEW.aor)
    EXECUTE FUNCTION location_added_notify();
