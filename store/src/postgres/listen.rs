//! What every cache invalidated by PostgreSQL notifications shares: the
//! listening loop, and the state that says whether the cache may be trusted.
//!
//! A cache is trusted only while its listener is connected. Notifications
//! sent while it is not are lost, so a lost connection empties the cache and
//! turns it off until the listener is back (and it starts empty again then).
//! Every forgetting bumps a generation; a row read from PostgreSQL is
//! remembered only if the generation did not move during its query, so a
//! read that raced a change never puts the stale row back.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sqlx::postgres::{PgListener, PgPool};

/// A cache a notification channel invalidates.
pub(super) trait Invalidated: Sync {
    /// The state [`listen`] keeps up to date.
    fn liveness(&self) -> &Liveness;
    /// Forgets what one notification names.
    fn notified(&self, payload: &str);
    /// Forgets everything (the connection came or went).
    fn forget_all(&self);
}

/// Whether a cache is in use, and the generation its forgettings bump.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    listening: AtomicBool,
    connections: AtomicU64,
    generation: AtomicU64,
}

impl Liveness {
    pub(super) fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    pub(super) fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// The generation now: read it before a query, compare it (under the
    /// cache's lock) before remembering the query's answer.
    pub(super) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Called before every forgetting, outside or inside the cache's lock.
    pub(super) fn bump(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether an answer read at `generation` may be remembered now; call
    /// it under the cache's lock, which every forgetting also takes after
    /// bumping, so none can slip in between.
    pub(super) fn may_remember(&self, generation: u64) -> bool {
        self.is_listening() && self.generation() == generation
    }
}

/// Listens on `channel` for `cache` until `stop` completes, reconnecting
/// with backoff; `what` names the cache in log lines.
pub(super) async fn listen(
    pool: &PgPool,
    channel: &str,
    what: &str,
    cache: &impl Invalidated,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    let live = cache.liveness();
    let mut wait = Duration::from_millis(100);
    loop {
        tokio::select! {
            biased;
            () = &mut stop => break,
            result = listen_once(pool, channel, what, cache) => {
                live.listening.store(false, Ordering::Release);
                cache.forget_all();
                match result {
                    Ok(()) => {
                        tracing::warn!(cache = what, "change listener lost its connection; cache off until it is back");
                        wait = Duration::from_millis(100);
                    }
                    Err(e) => tracing::debug!(cache = what, error = %e, retry_in = ?wait, "change listener cannot connect"),
                }
            }
        }
        tokio::select! {
            biased;
            () = &mut stop => break,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(Duration::from_secs(5));
    }
    live.listening.store(false, Ordering::Release);
    cache.forget_all();
}

/// One connection's worth of listening: returns when it is lost.
async fn listen_once(
    pool: &PgPool,
    channel: &str,
    what: &str,
    cache: &impl Invalidated,
) -> Result<(), sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    // Lost notifications cannot be told apart from none: a lost connection
    // ends this listener instead of reconnecting silently.
    listener.ignore_pool_close_event(true);
    listener.listen(channel).await?;
    let live = cache.liveness();
    cache.forget_all();
    live.listening.store(true, Ordering::Release);
    live.connections.fetch_add(1, Ordering::AcqRel);
    tracing::info!(cache = what, "change listener connected; cache on");
    loop {
        match listener.try_recv().await? {
            Some(notification) => cache.notified(notification.payload()),
            None => return Ok(()),
        }
    }
}
