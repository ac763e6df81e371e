//! hub-store's tests against the real PostgreSQL (`#[sqlx::test]`: a fresh
//! database per test), a real MongoDB-wire server and a real S3 server: one
//! binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod directory_cache;
mod events;
mod images;
mod mongo;
mod s3;
mod session_cache;
mod sessions;
mod users;

/// Polls `check` every 20 ms until it holds, for at most 5 s: a
/// notification's delivery, a listener's reconnection.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..250 {
        if check() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{what}: not within 5 s");
}
