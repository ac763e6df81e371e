-- The event log: one row per domain event (users' and sessions'), written
-- in the same transaction as the change it describes. `id` is the event's
-- position: `hub events tail --after ID` and later resumable subscribers
-- take it. `event_id` is its idempotency key downstream (MongoDB's _id).
-- `tx` is the writing transaction, so readers can show only events whose
-- transactions have all ended (see store/src/postgres/events.rs).
CREATE TABLE events (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    uuid        NOT NULL UNIQUE,
    type        text        NOT NULL CHECK (length(type) <= 64),
    user_id     uuid,
    session_id  uuid,
    occurred_at timestamptz NOT NULL,
    data        jsonb       NOT NULL,
    tx          xid8        NOT NULL DEFAULT pg_current_xact_id()
);

CREATE INDEX events_commit_order ON events (tx, id);
CREATE INDEX events_occurred ON events (occurred_at);

-- Who listens, and to which types: a list of exact types, `prefix.*`
-- patterns or `*`. A subscriber gets the events written after it is added.
CREATE TABLE event_subscribers (
    name       text        PRIMARY KEY CHECK (length(name) <= 64),
    types      text[]      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Each subscriber's delivery state of each event it listens to: one row per
-- (subscriber, event), written with the event (the trigger below), so one
-- subscriber being away or refusing an event holds back no other.
-- `subscriber` has no foreign key on purpose: one would make every event's
-- writer lock the subscriber's row (KEY SHARE), one hot row under every
-- login; the trigger at the end deletes a removed subscriber's rows.
CREATE TABLE event_deliveries (
    subscriber        text        NOT NULL,
    event_id          bigint      NOT NULL REFERENCES events (id) ON DELETE CASCADE,
    delivered_at      timestamptz,
    attempts          integer     NOT NULL DEFAULT 0,
    quarantined_at    timestamptz,
    quarantine_reason text,
    PRIMARY KEY (subscriber, event_id)
);

CREATE INDEX event_deliveries_pending ON event_deliveries (subscriber, event_id)
    WHERE delivered_at IS NULL AND quarantined_at IS NULL;
CREATE INDEX event_deliveries_quarantined ON event_deliveries (subscriber)
    WHERE quarantined_at IS NOT NULL;
-- Pruning asks, per old event, whether any delivery is still open, and
-- deleting an event deletes its deliveries.
CREATE INDEX event_deliveries_event ON event_deliveries (event_id);

CREATE FUNCTION event_type_matches(pattern text, type text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT pattern = '*' OR pattern = type
        OR (right(pattern, 2) = '.*' AND left(type, length(pattern) - 1) = left(pattern, -1))
$$;

-- One statement, one fan-out: an import's or a revocation's events get
-- their delivery rows in one INSERT, whatever their number.
CREATE FUNCTION events_fan_out() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO event_deliveries (subscriber, event_id)
    SELECT s.name, n.id
    FROM new_rows n JOIN event_subscribers s
      ON EXISTS (SELECT 1 FROM unnest(s.types) AS p WHERE event_type_matches(p, n.type));
    RETURN NULL;
END;
$$;

CREATE TRIGGER events_inserted
    AFTER INSERT ON events REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION events_fan_out();

CREATE FUNCTION event_subscriber_removed() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM event_deliveries WHERE subscriber = OLD.name;
    RETURN NULL;
END;
$$;

CREATE TRIGGER event_subscriber_deleted
    AFTER DELETE ON event_subscribers
    FOR EACH ROW EXECUTE FUNCTION event_subscriber_removed();

-- How far pruning has reached, in the log's reading order: a reader
-- resuming after an event below it could miss pruned events, and is told
-- so instead (store/src/postgres/events.rs).
CREATE TABLE event_log_pruned (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    tx       xid8    NOT NULL,
    id       bigint  NOT NULL
);
INSERT INTO event_log_pruned (tx, id) VALUES ('0'::xid8, 0);

-- The MongoDB activity log is the first subscriber, and takes everything.
INSERT INTO event_subscribers (name, types) VALUES ('activity', ARRAY['*']);

-- The outbox's events move into the log, in their order, with their
-- delivery state as the activity log's.
INSERT INTO events (event_id, type, user_id, session_id, occurred_at, data)
SELECT id, kind, user_id, session_id, created_at,
       jsonb_build_object('client_ip', payload -> 'client_ip',
                          'user_agent', payload -> 'user_agent',
                          'reason', payload -> 'reason')
FROM outbox ORDER BY created_at, id;

UPDATE event_deliveries d
SET delivered_at = o.delivered_at, attempts = o.attempts,
    quarantined_at = o.quarantined_at, quarantine_reason = o.quarantine_reason
FROM events e JOIN outbox o ON o.id = e.event_id
WHERE d.event_id = e.id AND d.subscriber = 'activity';

DROP TABLE outbox;
