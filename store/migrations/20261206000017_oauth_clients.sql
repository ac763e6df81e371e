-- OAuth 2.0 / OpenID Connect clients, registered by operators
-- (`hub clients create`).
--
-- `secret_sha256` is the SHA-256 of a confidential client's secret (32
-- random bytes polyhub made): a slow password hash adds nothing against
-- guessing 256 bits and would cost every token request a hash. NULL for a
-- public client, which keeps no secret.
CREATE TABLE oauth_clients (
    id                        text        PRIMARY KEY
                                          CHECK (id ~ '^[A-Za-z0-9._~-]{1,64}$'),
    name                      text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    secret_sha256             bytea       CHECK (length(secret_sha256) = 32),
    redirect_uris             text[]      NOT NULL DEFAULT '{}',
    post_logout_redirect_uris text[]      NOT NULL DEFAULT '{}',
    first_party               boolean     NOT NULL DEFAULT false,
    grant_types               text[]      NOT NULL,
    scopes                    text[]      NOT NULL,
    -- How its ID tokens are signed: RS256 (the default Discovery requires)
    -- or EdDSA.
    id_token_alg              text        NOT NULL DEFAULT 'RS256'
                                          CHECK (id_token_alg IN ('RS256', 'EdDSA')),
    created_at                timestamptz NOT NULL,
    secret_rotated_at         timestamptz
);

-- Client-credentials access tokens revoked before they expire (RFC 7009).
-- The tokens are signed JWTs that resource servers verify; each use of one
-- also asks whether its `jti` is here. A row outlives its token by nothing:
-- every revocation deletes the rows whose tokens have expired.
CREATE TABLE oauth_revoked_tokens (
    jti        uuid        PRIMARY KEY,
    client_id  text        NOT NULL REFERENCES oauth_clients (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL
);

CREATE INDEX oauth_revoked_tokens_expiry ON oauth_revoked_tokens (expires_at);
CREATE INDEX oauth_revoked_tokens_client ON oauth_revoked_tokens (client_id);
