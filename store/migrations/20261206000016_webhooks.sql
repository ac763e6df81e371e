-- Webhook endpoints: URLs that receive the event log's events, signed per
-- Standard Webhooks. Each endpoint is a subscriber of the log named
-- `webhook:<id>` (event_subscribers), so its delivery state is its own
-- event_deliveries rows; this table holds what the subscriber row cannot:
-- where to send, the signing secrets and whether it is failing.
--
-- `secret` is the raw key (the `whsec_` string's bytes): the sender must
-- compute HMACs with it, so it cannot be stored hashed. It never leaves
-- the database except in the answer that creates or rotates it.
-- `previous_secret` signs beside it until `previous_until` (a rotation's
-- grace period).
CREATE TABLE webhook_endpoints (
    id              uuid        PRIMARY KEY,
    url             text        NOT NULL CHECK (length(url) <= 2048),
    types           text[]      NOT NULL,
    description     text        NOT NULL DEFAULT '' CHECK (length(description) <= 200),
    secret          bytea       NOT NULL,
    previous_secret bytea,
    previous_until  timestamptz,
    created_at      timestamptz NOT NULL,
    created_by      uuid,
    -- Set by the first failed delivery of a run, cleared by a success.
    failing_since   timestamptz,
    last_error      text        CHECK (length(last_error) <= 500),
    disabled_at     timestamptz,
    disabled_reason text
);

-- A subscriber's name must fit event_subscribers' check (64): "webhook:" +
-- a UUID is 44.

-- A webhook endpoint's queue is delivered by one instance at a time, under
-- a lease taken in a short transaction (store/src/postgres/leased.rs): no
-- transaction stays open while a receiver is waited on.
ALTER TABLE event_subscribers
    ADD COLUMN lease_owner uuid,
    ADD COLUMN lease_until timestamptz;
