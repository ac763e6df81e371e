-- The OpenID Connect code flow: codes, the grants they open, refresh
-- tokens and consents. Every secret (a code, a refresh token) is stored as
-- its SHA-256 only: 32 random bytes need no slow hash.

-- Authorization codes: single use, 60 s. A used code is kept an hour with
-- the grant its exchange opened, so a second presentation revokes it
-- (RFC 6749 §10.5); each insert deletes the rows past that hour.
CREATE TABLE oauth_codes (
    code_sha256     bytea       PRIMARY KEY CHECK (length(code_sha256) = 32),
    client_id       text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id         uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- The browser session that signed in and allowed it: the grant opens
    -- beside it, only while it is still open.
    browser_session uuid        NOT NULL,
    redirect_uri    text        NOT NULL,
    scopes          text[]      NOT NULL,
    nonce           text        CHECK (length(nonce) <= 512),
    code_challenge  text        CHECK (length(code_challenge) <= 128),
    auth_time       timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    used_at         timestamptz,
    grant_session   uuid
);

CREATE INDEX oauth_codes_expiry ON oauth_codes (expires_at);

-- A grant: the polyhub session a code's exchange opened for a client. Its
-- access tokens are that session's, so ending the session ends the grant.
CREATE TABLE oauth_grants (
    session_id uuid        PRIMARY KEY REFERENCES sessions (id) ON DELETE CASCADE,
    client_id  text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    scopes     text[]      NOT NULL,
    auth_time  timestamptz NOT NULL,
    created_at timestamptz NOT NULL
);

CREATE INDEX oauth_grants_user_client ON oauth_grants (user_id, client_id);

-- Refresh tokens, rotated on every use. A used one is kept (a day) so that
-- presenting it again is recognised as reuse and ends the grant.
CREATE TABLE oauth_refresh_tokens (
    token_sha256 bytea       PRIMARY KEY CHECK (length(token_sha256) = 32),
    session_id   uuid        NOT NULL REFERENCES oauth_grants (session_id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    used_at      timestamptz
);

CREATE INDEX oauth_refresh_tokens_grant ON oauth_refresh_tokens (session_id, used_at);

-- What each user allowed each (not first-party) client.
CREATE TABLE oauth_consents (
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    client_id  text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    scopes     text[]      NOT NULL,
    granted_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, client_id)
);
