-- The devices each user has signed in from. A device token (the
-- polyhub_device cookie) counts at login only while its device is here, so
-- what forgets a user's devices -- a password change, a role change, a
-- "sign out everywhere" -- ends every device token minted before it, in the
-- same transaction as the change. Rows per user are capped by the hub
-- (auth.devices_per_user, the least recently used go first) and go with
-- the user.
CREATE TABLE known_devices (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    device_id    text NOT NULL CHECK (length(device_id) <= 64),
    created_at   timestamptz NOT NULL,
    last_used_at timestamptz NOT NULL,
    PRIMARY KEY (user_id, device_id)
);
