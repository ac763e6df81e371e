-- An event the relay cannot read is set aside (quarantined) instead of
-- stalling every event behind it; `hub outbox retry` puts it back once the
-- row is fixed. Pending means neither delivered nor quarantined.
ALTER TABLE outbox ADD COLUMN quarantined_at timestamptz, ADD COLUMN quarantine_reason text;
DROP INDEX outbox_pending;
CREATE INDEX outbox_pending ON outbox (created_at, id)
    WHERE delivered_at IS NULL AND quarantined_at IS NULL;
CREATE INDEX outbox_quarantined ON outbox (quarantined_at) WHERE quarantined_at IS NOT NULL;
