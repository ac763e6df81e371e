-- The same login transaction as it was before the event log: the event in
-- a single-consumer outbox row (`outbox_before`, made by
-- outbox_before_schema.sql), with its delivery state on the row itself.
BEGIN;
SELECT 1 FROM users WHERE id = '00000000-0000-7000-8000-000000000001' AND password_hash = '$pbkdf2-sha256$i=600000,l=32$c2FsdA$AAAA' AND role = 'user' FOR SHARE;
INSERT INTO sessions (id, user_id, created_at, expires_at, last_seen_at, client_ip, user_agent) VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', now(), now() + interval '1 hour', now(), '127.0.0.1'::inet, 'pgbench');
INSERT INTO outbox_before (id, session_id, user_id, kind, payload, created_at) VALUES (gen_random_uuid(), gen_random_uuid(), '00000000-0000-7000-8000-000000000001', 'session.opened', '{"client_ip":"127.0.0.1","user_agent":"pgbench","reason":null}', now());
COMMIT;
