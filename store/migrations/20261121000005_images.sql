-- Uploaded images: the metadata ListImages pages through. The bytes live in
-- the object store at object_key (users/{owner_id}/{sha256}.{ext}); the same
-- image uploaded twice by one owner is one row and one object.
CREATE TABLE images (
    id           uuid        PRIMARY KEY,
    owner_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    object_key   text        NOT NULL,
    content_type text        NOT NULL,
    size_bytes   bigint      NOT NULL CHECK (size_bytes > 0),
    width        integer     NOT NULL CHECK (width > 0),
    height       integer     NOT NULL CHECK (height > 0),
    sha256       text        NOT NULL CHECK (char_length(sha256) = 64),
    created_at   timestamptz NOT NULL,
    CONSTRAINT images_owner_sha256_key UNIQUE (owner_id, sha256)
);

-- An owner's images, newest first (ids are UUID v7: id order is creation order).
CREATE INDEX images_owner_newest ON images (owner_id, id DESC);
