//! Open sessions remembered in memory, forgotten the moment PostgreSQL says
//! they changed.
//!
//! Every authenticated request asks whether its session is open. Asking
//! PostgreSQL each time costs a round trip that dominates a token check, so
//! [`CachedSessions`] keeps the sessions it found open. It trusts them only
//! while it is listening: a trigger on `sessions` sends the id of every
//! updated or deleted row on the `polyhub_sessions` channel (NOTIFY, sent at
//! commit), and the listener forgets that id. While the listening connection
//! is down the cache is empty and bypassed, and it starts empty again when
//! the connection is back, because notifications sent in between are lost.
//!
//! Changes made through this repository are also forgotten locally as soon as
//! they commit, so within one process a revoked token is refused by the very
//! next request. Another process's revocation reaches this one with its
//! notification: the time PostgreSQL takes to deliver it, milliseconds.
//!
//! A connection that dies silently (a partition without a reset) is not seen
//! at once, so no entry is trusted for longer than `max_age` either: past it
//! the session is read again. That bounds staleness in the worst case.
//!
//! A lookup that started before a notification and finishes after it must
//! not put the stale row back: every forgetting bumps a generation, and a row
//! is remembered only if the generation did not move during its query.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{
    CredentialChange, Error, PasswordHash, Session, SessionEvent, SessionId, SessionQuery,
    SessionRepository, User, UserId,
};
use sqlx::postgres::{PgListener, PgPool};
use time::OffsetDateTime;

use super::PgSessionRepository;

/// The channel the `sessions_changed` trigger notifies.
pub const CHANNEL: &str = "polyhub_sessions";

/// Sessions in PostgreSQL, open ones remembered while invalidation is live.
#[derive(Debug)]
pub struct CachedSessions {
    inner: PgSessionRepository,
    pool: PgPool,
    open: Mutex<HashMap<SessionId, (Session, Instant)>>,
    capacity: usize,
    max_age: Duration,
    generation: AtomicU64,
    listening: AtomicBool,
    connections: AtomicU64,
}

impl CachedSessions {
    /// At most `capacity` sessions are remembered (past that the cache
    /// starts again empty), each for at most `max_age`.
    pub fn new(pool: PgPool, capacity: usize, max_age: Duration) -> Self {
        Self {
            inner: PgSessionRepository::new(pool.clone()),
            pool,
            open: Mutex::new(HashMap::new()),
            capacity,
            max_age,
            generation: AtomicU64::new(0),
            listening: AtomicBool::new(false),
            connections: AtomicU64::new(0),
        }
    }

    /// Whether the cache is in use (its listener is connected).
    pub fn is_listening(&self) -> bool {
        self.listening.load(Ordering::Acquire)
    }

    /// How many times the listener has connected (reconnections included).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Acquire)
    }

    /// How many open sessions are remembered now.
    pub fn cached(&self) -> usize {
        self.open.lock().map(|open| open.len()).unwrap_or(0)
    }

    fn forget(&self, id: SessionId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    fn forget_user(&self, user: UserId) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, (s, _)| s.user_id != user);
        }
    }

    fn forget_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut open) = self.open.lock() {
            open.clear();
        }
    }

    fn remember(&self, session: &Session, generation: u64) {
        if !self.is_listening() {
            return;
        }
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        // Checked under the lock: a forgetting takes the same lock after
        // bumping the generation, so it cannot slip in between.
        if self.generation.load(Ordering::Acquire) != generation {
            return;
        }
        if open.len() >= self.capacity {
            open.clear();
        }
        open.insert(session.id, (session.clone(), Instant::now()));
    }

    /// Listens for session changes until `stop` completes, reconnecting with
    /// backoff; the cache is used only while this runs and is connected.
    pub async fn listen(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut wait = Duration::from_millis(100);
        loop {
            tokio::select! {
                biased;
                () = &mut stop => break,
                result = self.listen_once() => {
                    self.listening.store(false, Ordering::Release);
                    self.forget_all();
                    match result {
                        Ok(()) => {
                            tracing::warn!("session-change listener lost its connection; cache off until it is back");
                            wait = Duration::from_millis(100);
                        }
                        Err(e) => tracing::debug!(error = %e, retry_in = ?wait, "session-change listener cannot connect"),
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
        self.listening.store(false, Ordering::Release);
        self.forget_all();
    }

    /// One connection's worth of listening: returns when it is lost.
    async fn listen_once(&self) -> Result<(), sqlx::Error> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        // Lost notifications cannot be told apart from none: a lost
        // connection ends this listener instead of reconnecting silently.
        listener.ignore_pool_close_event(true);
        listener.listen(CHANNEL).await?;
        self.forget_all();
        self.listening.store(true, Ordering::Release);
        self.connections.fetch_add(1, Ordering::AcqRel);
        tracing::info!("session-change listener connected; open sessions are cached");
        loop {
            match listener.try_recv().await? {
                Some(notification) => match SessionId::parse(notification.payload()) {
                    Ok(id) => self.forget(id),
                    Err(_) => self.forget_all(),
                },
                None => return Ok(()),
            }
        }
    }
}

#[async_trait]
impl SessionRepository for CachedSessions {
    async fn open(&self, session: &Session, event: &SessionEvent) -> Result<(), Error> {
        self.inner.open(session, event).await
    }

    async fn open_verified(
        &self,
        session: &Session,
        event: &SessionEvent,
        credential: &PasswordHash,
    ) -> Result<bool, Error> {
        self.inner.open_verified(session, event, credential).await
    }

    async fn change_credentials(&self, change: &CredentialChange) -> Result<u64, Error> {
        let changed = self.inner.change_credentials(change).await;
        if change.password_hash.is_some() {
            self.forget_user(change.user);
        }
        changed
    }

    async fn find_open(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, Error> {
        if self.is_listening() {
            let cached = self
                .open
                .lock()
                .ok()
                .and_then(|open| open.get(&id).cloned());
            if let Some((session, at)) = cached
                && at.elapsed() < self.max_age
            {
                return Ok(session.is_open_at(now).then_some(session));
            }
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found = self.inner.find_open(id, now).await?;
        if let Some(session) = &found {
            self.remember(session, generation);
        }
        Ok(found)
    }

    async fn find_open_with_user(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<(Session, User)>, Error> {
        self.inner.find_open_with_user(id, now).await
    }

    async fn revoke(&self, id: SessionId, at: OffsetDateTime, reason: &str) -> Result<bool, Error> {
        let revoked = self.inner.revoke(id, at, reason).await;
        self.forget(id);
        revoked
    }

    async fn revoke_all(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: OffsetDateTime,
        reason: &str,
    ) -> Result<u64, Error> {
        let revoked = self.inner.revoke_all(user, keep, at, reason).await;
        self.forget_user(user);
        revoked
    }

    async fn find(&self, id: SessionId) -> Result<Option<Session>, Error> {
        self.inner.find(id).await
    }

    async fn list(&self, user: UserId, query: &SessionQuery) -> Result<Vec<Session>, Error> {
        self.inner.list(user, query).await
    }

    async fn touch(&self, session: &Session, event: &SessionEvent) -> Result<bool, Error> {
        let touched = self.inner.touch(session, event).await;
        self.forget(session.id);
        touched
    }
}
