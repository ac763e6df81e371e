-- Sessions: PostgreSQL decides whether a token's session is open. A token is
-- checked against this table on every authenticated request (primary key).
CREATE TABLE sessions (
    id           uuid        PRIMARY KEY,
    user_id      uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL,
    expires_at   timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    revoked_at   timestamptz,
    client_ip    inet,
    user_agent   text        CHECK (char_length(user_agent) <= 512)
);

-- A user's sessions, newest first; and their open ones, for "log out everywhere".
CREATE INDEX sessions_user_created ON sessions (user_id, created_at DESC);
CREATE INDEX sessions_user_open ON sessions (user_id) WHERE revoked_at IS NULL;

-- The outbox: one row per session event, written in the same transaction as
-- the change it describes, drained in order into MongoDB by the sessions
-- service's relay. `id` is the event's idempotency key downstream.
CREATE TABLE outbox (
    id           uuid        PRIMARY KEY,
    session_id   uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    kind         text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL,
    delivered_at timestamptz
);

CREATE INDEX outbox_pending ON outbox (created_at, id) WHERE delivered_at IS NULL;
