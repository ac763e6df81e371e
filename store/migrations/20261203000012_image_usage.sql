-- Each owner's image count and bytes as stored, kept by a trigger on
-- images, so the quota check in store_image reads one row instead of
-- counting the owner's images on every upload (up to
-- images.max_images_per_user rows, 1,000 by default). The trigger follows
-- every insert, delete (a user's deletion cascades here) and update of
-- images, whoever makes it.
CREATE TABLE image_usage (
    owner_id uuid   PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    images   bigint NOT NULL CHECK (images >= 0),
    bytes    bigint NOT NULL CHECK (bytes >= 0)
);

INSERT INTO image_usage (owner_id, images, bytes)
    SELECT owner_id, count(*), sum(size_bytes) FROM images GROUP BY owner_id;

CREATE FUNCTION image_usage_follow() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        UPDATE image_usage u SET images = u.images - 1, bytes = u.bytes - OLD.size_bytes
            WHERE u.owner_id = OLD.owner_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO image_usage AS u (owner_id, images, bytes)
            VALUES (NEW.owner_id, 1, NEW.size_bytes)
            ON CONFLICT (owner_id)
            DO UPDATE SET images = u.images + 1, bytes = u.bytes + EXCLUDED.bytes;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER images_usage AFTER INSERT OR DELETE OR UPDATE OF owner_id, size_bytes
    ON images FOR EACH ROW EXECUTE FUNCTION image_usage_follow();

-- store_image as before (the owner's row locked, the same image answered
-- with its row, the quota, the insert), the quota now read from the
-- owner's usage row.
CREATE OR REPLACE FUNCTION store_image(
    p_id uuid,
    p_owner uuid,
    p_key text,
    p_content_type text,
    p_size bigint,
    p_width integer,
    p_height integer,
    p_sha256 text,
    p_created timestamptz,
    p_max_images bigint,
    p_max_bytes bigint
) RETURNS TABLE (
    outcome text,
    used_images bigint,
    used_bytes bigint,
    id uuid,
    owner_id uuid,
    object_key text,
    content_type text,
    size_bytes bigint,
    width integer,
    height integer,
    sha256 text,
    created_at timestamptz
)
LANGUAGE plpgsql VOLATILE AS $$
#variable_conflict use_column
DECLARE
    n bigint;
    b bigint;
BEGIN
    PERFORM 1 FROM users WHERE users.id = p_owner FOR NO KEY UPDATE;
    RETURN QUERY
        SELECT 'existing'::text, NULL::bigint, NULL::bigint, i.id, i.owner_id, i.object_key,
               i.content_type, i.size_bytes, i.width, i.height, i.sha256, i.created_at
        FROM images i WHERE i.owner_id = p_owner AND i.sha256 = p_sha256;
    IF FOUND THEN
        RETURN;
    END IF;
    SELECT u.images, u.bytes INTO n, b FROM image_usage u WHERE u.owner_id = p_owner;
    IF NOT FOUND THEN
        n := 0;
        b := 0;
    END IF;
    IF n >= p_max_images OR b > p_max_bytes - p_size THEN
        RETURN QUERY SELECT 'quota'::text, n, b, NULL::uuid, NULL::uuid, NULL::text, NULL::text,
                            NULL::bigint, NULL::integer, NULL::integer, NULL::text,
                            NULL::timestamptz;
        RETURN;
    END IF;
    RETURN QUERY
        INSERT INTO images AS i (id, owner_id, object_key, content_type, size_bytes, width,
                                 height, sha256, created_at)
        VALUES (p_id, p_owner, p_key, p_content_type, p_size, p_width, p_height, p_sha256,
                p_created)
        RETURNING 'inserted'::text, n, b, i.id, i.owner_id, i.object_key, i.content_type,
                  i.size_bytes, i.width, i.height, i.sha256, i.created_at;
END
$$;
