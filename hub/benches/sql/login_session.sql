-- The transaction a login runs to open its session (open_verified): the
-- user's row, the session, and its session.opened event in the event log
-- (whose trigger writes the activity log's delivery row), against one user
-- seeded by docs/BENCHMARKS.md "Remembering a device at login".
BEGIN;
SELECT 1 FROM users WHERE id = '00000000-0000-7000-8000-000000000001' AND password_hash = '$pbkdf2-sha256$i=600000,l=32$c2FsdA$AAAA' AND role = 'user' FOR SHARE;
INSERT INTO sessions (id, user_id, created_at, expires_at, last_seen_at, client_ip, user_agent) VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', now(), now() + interval '1 hour', now(), '127.0.0.1'::inet, 'pgbench');
INSERT INTO events (event_id, type, user_id, session_id, occurred_at, data) SELECT id, type, user_id, session_id, at, data FROM unnest(ARRAY[gen_random_uuid()], ARRAY['session.opened'], ARRAY['00000000-0000-7000-8000-000000000001'::uuid], ARRAY[gen_random_uuid()], ARRAY[now()], ARRAY['{"client_ip":"127.0.0.1","user_agent":"pgbench","reason":null}'::jsonb]) WITH ORDINALITY AS e(id, type, user_id, session_id, at, data, n) ORDER BY n;
COMMIT;
