-- Every change to a session row is announced on the polyhub_sessions channel
-- (delivered at commit), so services that remember open sessions forget the
-- changed one at once, whichever process or person changed it.
CREATE FUNCTION sessions_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('polyhub_sessions', OLD.id::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER sessions_changed
    AFTER UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION sessions_notify_change();
