-- Recording an upload's metadata in one round trip instead of six (BEGIN,
-- the owner's lock, the same-image check, the quota count, INSERT, COMMIT):
-- the same steps in the same order. Each statement of a volatile PL/pgSQL
-- function reads a fresh snapshot, so once the owner's row is locked the
-- count sees every upload of that owner committed before, as the separate
-- statements did. The outcome is 'existing' (the owner already stored an
-- image with this hash: that row), 'quota' (nothing stored; the owner's
-- count and bytes) or 'inserted' (the new row).
CREATE FUNCTION store_image(
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
    SELECT count(*), coalesce(sum(i.size_bytes), 0)::bigint INTO n, b
        FROM images i WHERE i.owner_id = p_owner;
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
