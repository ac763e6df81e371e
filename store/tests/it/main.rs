//! hub-store's tests against the real PostgreSQL (`#[sqlx::test]`: a fresh
//! database per test) and a real MongoDB-wire server: one binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod directory_cache;
mod mongo;
mod session_cache;
mod sessions;
mod users;
