-- The transaction a login adds to remember its device (PgKnownDevices::remember,
-- a new device each time), against the same user and session.
BEGIN;
SELECT 1 FROM sessions WHERE id = '00000000-0000-7000-8000-0000000000aa' AND user_id = '00000000-0000-7000-8000-000000000001' AND revoked_at IS NULL FOR SHARE;
INSERT INTO known_devices (user_id, device_id, created_at, last_used_at) VALUES ('00000000-0000-7000-8000-000000000001', md5(random()::text), now(), now());
DELETE FROM known_devices WHERE user_id = '00000000-0000-7000-8000-000000000001' AND device_id NOT IN (SELECT device_id FROM known_devices WHERE user_id = '00000000-0000-7000-8000-000000000001' ORDER BY last_used_at DESC, device_id LIMIT 10);
COMMIT;
