-- WS-Security nonces seen, for replay protection on the SOAP services.
-- One row per nonce of an authenticated message (the key is a SHA-256 of the
-- user and the nonce), kept until the message's window closes. Every
-- instance of the service shares it, so a message replayed to another
-- instance is refused too.
--
-- UNLOGGED: no WAL for a row that lives five minutes and is written on
-- every call. The cost: after a crash (or on a failover to a standby) the
-- table starts empty, so a message captured in the last window could be
-- replayed once there. docs/OPERATIONS.md says so.
CREATE UNLOGGED TABLE wsse_nonces (
    key bytea PRIMARY KEY,
    expires_at timestamptz NOT NULL
);
CREATE INDEX wsse_nonces_expires_at ON wsse_nonces (expires_at);
