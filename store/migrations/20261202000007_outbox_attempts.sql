-- Times the activity log refused each event (it was there and would not
-- take it). At `relay.max_attempts` the event is quarantined with the
-- refusal as its reason; `hub outbox retry` starts the count again.
ALTER TABLE outbox ADD COLUMN attempts integer NOT NULL DEFAULT 0;
