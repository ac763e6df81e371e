-- SCIM 2.0 provisioning (RFC 7643/7644). A directory provisions users whose
-- userName is a user principal name or a UUID, so usernames widen to 1..256
-- characters (hub-core's Username says which). A user gains what SCIM
-- carries besides: `active` (false: signs in nowhere, holds no session),
-- `external_id` (the directory's own id for the user), `scim` (every other
-- attribute as the directory sent it: name, displayName, emails, phone
-- numbers, the enterprise extension), and `version`, the ETag, raised by
-- every change over SCIM.
ALTER TABLE users DROP CONSTRAINT users_username_check;
ALTER TABLE users ADD CONSTRAINT users_username_check
    CHECK (char_length(username) BETWEEN 1 AND 256);
ALTER TABLE users
    ADD COLUMN active      boolean NOT NULL DEFAULT true,
    ADD COLUMN external_id text    CHECK (char_length(external_id) <= 256),
    ADD COLUMN scim        jsonb   NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN version     bigint  NOT NULL DEFAULT 1,
    ADD COLUMN emails_text text    NOT NULL DEFAULT '';

-- Every email value of a user, lower case, one per line, the account's
-- email first: what an `emails` filter searches, with one trigram index for
-- `co`, `sw`, `ew` and `eq` alike. Kept by a trigger, so no writer (a
-- registration, an import, a SCIM change) can leave it stale.
CREATE FUNCTION users_emails_text() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.emails_text := lower(NEW.email) || coalesce((
        SELECT string_agg(E'\n' || lower(e->>'value'), '')
        FROM jsonb_array_elements(
            CASE WHEN jsonb_typeof(NEW.scim->'emails') = 'array'
                 THEN NEW.scim->'emails' ELSE '[]'::jsonb END) AS e
        WHERE e->>'value' IS NOT NULL AND lower(e->>'value') <> lower(NEW.email)), '');
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_emails_text
    BEFORE INSERT OR UPDATE OF email, scim ON users
    FOR EACH ROW EXECUTE FUNCTION users_emails_text();

UPDATE users SET emails_text = lower(email);

CREATE EXTENSION IF NOT EXISTS pg_trgm;
CREATE INDEX users_username_trgm ON users USING gin (lower(username) gin_trgm_ops);
CREATE INDEX users_emails_trgm ON users USING gin (emails_text gin_trgm_ops);
CREATE INDEX users_external_id ON users (external_id) WHERE external_id IS NOT NULL;

-- Groups a directory provisions, and their members. A group may map to a
-- role (scim.admin_groups): its members are admins while they are in it.
CREATE TABLE scim_groups (
    id           uuid        PRIMARY KEY,
    display_name text        NOT NULL CHECK (char_length(display_name) BETWEEN 1 AND 256),
    external_id  text        CHECK (char_length(external_id) <= 256),
    created_at   timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      bigint      NOT NULL DEFAULT 1
);
CREATE UNIQUE INDEX scim_groups_display_name ON scim_groups (lower(display_name));

CREATE TABLE scim_group_members (
    group_id uuid NOT NULL REFERENCES scim_groups (id) ON DELETE CASCADE,
    user_id  uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX scim_group_members_user ON scim_group_members (user_id);

-- The ETag: every change of a user's row, through SCIM or any other way
-- (a role change, a new email, a deactivation), makes a new version, so an
-- If-Match read before it is refused.
CREATE FUNCTION users_bump_version() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := OLD.version + 1;
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_version
    BEFORE UPDATE ON users
    FOR EACH ROW EXECUTE FUNCTION users_bump_version();
