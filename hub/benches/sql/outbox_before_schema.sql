-- The outbox as it was before the event log (migrations 2, 6 and 7), as a
-- baseline for login_session.sql.
CREATE TABLE outbox_before (
    id uuid PRIMARY KEY, session_id uuid NOT NULL, user_id uuid NOT NULL, kind text NOT NULL,
    payload jsonb NOT NULL, created_at timestamptz NOT NULL, delivered_at timestamptz,
    quarantined_at timestamptz, quarantine_reason text, attempts integer NOT NULL DEFAULT 0
);
CREATE INDEX outbox_before_pending ON outbox_before (created_at, id)
    WHERE delivered_at IS NULL AND quarantined_at IS NULL;
CREATE INDEX outbox_before_delivered ON outbox_before (delivered_at) WHERE delivered_at IS NOT NULL;
