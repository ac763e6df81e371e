-- Second factors (core/src/factors.rs): a TOTP authenticator per user,
-- recovery codes, the tickets of sign-ins waiting for their second step,
-- and the per-account budget of wrong codes.

-- One authenticator per user. `confirmed_at` is NULL while the secret
-- awaits its first code; `last_step` is the last 30-second step whose code
-- was taken, so a code is taken at most once. The secret is kept as is:
-- the server computes codes from it, so it cannot be stored hashed.
CREATE TABLE user_totp (
    user_id      uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    secret       bytea       NOT NULL CHECK (length(secret) BETWEEN 16 AND 64),
    confirmed_at timestamptz,
    last_step    bigint      NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL
);

-- SHA-256 of the user id and the code; `used_at` set when taken.
CREATE TABLE recovery_codes (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  bytea       NOT NULL CHECK (length(code_hash) = 32),
    created_at timestamptz NOT NULL,
    used_at    timestamptz,
    PRIMARY KEY (user_id, code_hash)
);

-- A sign-in waiting for its second step: SHA-256 of the ticket the client
-- holds, the password hash verified at the first step (the session opens
-- only while it is still the user's), and the wrong codes it took.
CREATE TABLE mfa_tickets (
    ticket_hash bytea       PRIMARY KEY CHECK (length(ticket_hash) = 32),
    user_id     uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential  text        NOT NULL,
    enrol       boolean     NOT NULL,
    failures    integer     NOT NULL DEFAULT 0,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX mfa_tickets_user ON mfa_tickets (user_id, created_at);

-- Wrong codes per account in a fixed window.
CREATE TABLE mfa_failures (
    user_id      uuid        PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    window_start timestamptz NOT NULL,
    failures     integer     NOT NULL
);

-- Passkeys (core/src/passkeys.rs): the credential as webauthn-rs keeps it
-- (its public key and counter; nothing secret), found by its credential id
-- at a sign-in without a name.
CREATE TABLE passkeys (
    id            uuid        PRIMARY KEY,
    user_id       uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    credential_id bytea       NOT NULL UNIQUE CHECK (length(credential_id) <= 1023),
    name          text        NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    credential    jsonb       NOT NULL,
    created_at    timestamptz NOT NULL,
    last_used_at  timestamptz
);
CREATE INDEX passkeys_user ON passkeys (user_id, created_at);

-- A WebAuthn ceremony between its options and the authenticator's answer:
-- its state, taken once before `expires_at`.
CREATE TABLE webauthn_ceremonies (
    id         uuid        PRIMARY KEY,
    kind       text        NOT NULL CHECK (kind IN ('register', 'second_factor', 'sign_in')),
    user_id    uuid        REFERENCES users (id) ON DELETE CASCADE,
    state      jsonb       NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);
CREATE INDEX webauthn_ceremonies_user ON webauthn_ceremonies (user_id, kind);
