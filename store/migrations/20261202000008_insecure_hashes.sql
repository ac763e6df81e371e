-- Imported insecure hashes (bare MD5/SHA digests, `$insecure-...`) are
-- counted in /metrics on every scrape: a partial index keeps the count
-- cheap whatever the number of users.
CREATE INDEX users_insecure_hash ON users (id) WHERE password_hash LIKE '$insecure-%';
