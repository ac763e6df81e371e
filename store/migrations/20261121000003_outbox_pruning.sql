-- The relay deletes delivered events once they are older than the keeping
-- time; this index finds them without reading the pending ones.
CREATE INDEX outbox_delivered ON outbox (delivered_at) WHERE delivered_at IS NOT NULL;
