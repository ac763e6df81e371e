-- Every change to the users table is announced on the polyhub_users channel
-- (delivered at commit), so services that remember users (the directory read
-- model) forget the changed ones at once, whichever process or person
-- changed them. The payload is "<id> <name>" for an insert or a delete and
-- "<id> <old name> <new name>" for an update, names folded to lower case as
-- the unique index folds them: an insert must also end a remembered "no such
-- user" for its name. A statement that touches more than 64 rows (an import
-- batch) sends one "*" instead, and listeners forget everything: a bounded
-- number of notifications per statement, whatever its size.
CREATE FUNCTION users_notify_change() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    changed bigint;
    r record;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('polyhub_users', '*');
        RETURN NULL;
    ELSIF TG_OP = 'INSERT' THEN
        SELECT count(*) INTO changed FROM new_rows;
    ELSE
        SELECT count(*) INTO changed FROM old_rows;
    END IF;
    IF changed > 64 THEN
        PERFORM pg_notify('polyhub_users', '*');
    ELSIF TG_OP = 'INSERT' THEN
        FOR r IN SELECT id, lower(username) AS name FROM new_rows LOOP
            PERFORM pg_notify('polyhub_users', r.id::text || ' ' || r.name);
        END LOOP;
    ELSIF TG_OP = 'DELETE' THEN
        FOR r IN SELECT id, lower(username) AS name FROM old_rows LOOP
            PERFORM pg_notify('polyhub_users', r.id::text || ' ' || r.name);
        END LOOP;
    ELSE
        FOR r IN
            SELECT o.id, lower(o.username) AS old_name, lower(n.username) AS new_name
            FROM old_rows o JOIN new_rows n USING (id)
        LOOP
            PERFORM pg_notify('polyhub_users', r.id::text || ' ' || r.old_name || ' ' || r.new_name);
        END LOOP;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_inserted
    AFTER INSERT ON users REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_change();
CREATE TRIGGER users_updated
    AFTER UPDATE ON users REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_change();
CREATE TRIGGER users_deleted
    AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_change();
CREATE TRIGGER users_truncated
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION users_notify_change();
