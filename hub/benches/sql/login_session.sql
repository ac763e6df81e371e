-- The transaction a login already runs to open its session (open_verified),
-- against one user and session seeded by docs/BENCHMARKS.md "Remembering a
-- device at login".
BEGIN;
SELECT 1 FROM users WHERE id = '00000000-0000-7000-8000-000000000001' AND password_hash = '$pbkdf2-sha256$i=600000,l=32$c2FsdA$AAAA' AND role = 'user' FOR SHARE;
WITH s AS (INSERT INTO sessions (id, user_id, created_at, expires_at, last_seen_at, client_ip, user_agent) VALUES (gen_random_uuid(), '00000000-0000-7000-8000-000000000001', now(), now() + interval '1 hour', now(), '127.0.0.1'::inet, 'pgbench') RETURNING id)
INSERT INTO outbox (id, session_id, user_id, kind, payload, created_at) SELECT gen_random_uuid(), s.id, '00000000-0000-7000-8000-000000000001', 'session.opened', '{"kind":"session.opened"}', now() FROM s;
COMMIT;
