//! The session service's tests: one binary. The session API and the
//! tracker over real sockets (rest-auth beside them, to sign users in), and
//! the relay between the real PostgreSQL and a real MongoDB-wire server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod relay;
mod roles;
