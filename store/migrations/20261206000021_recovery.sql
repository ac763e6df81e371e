-- Getting back in by mail (core/src/recovery.rs): password reset links and
-- verifications of a new address. A link's secret is never stored: only
-- its SHA-256 (the mailer derives the secret again from the id, which the
-- event carries). Each row works once, until `expires_at`.
CREATE TABLE password_resets (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_hash bytea       NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX password_resets_user ON password_resets (user_id, created_at);

-- One address waiting per user: asking again replaces it.
CREATE TABLE email_verifications (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    email       text        NOT NULL CHECK (length(email) <= 254),
    secret_hash bytea       NOT NULL UNIQUE CHECK (length(secret_hash) = 32),
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);

-- The last new-device notice of each user: at most one an hour, so sign-ins
-- without a device cookie do not turn the hub into a mail cannon.
CREATE TABLE device_notices (
    user_id uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    last_at timestamptz NOT NULL
);
