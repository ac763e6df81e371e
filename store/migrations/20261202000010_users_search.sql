-- The admin console searches users by the start of their username or email.
-- text_pattern_ops lets LIKE 'prefix%' use an index whatever the database's
-- collation, so a search reads one page of index, not the whole table.
CREATE INDEX users_username_prefix ON users (lower(username) text_pattern_ops);
CREATE INDEX users_email_prefix ON users (lower(email) text_pattern_ops);
