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
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{
    CredentialChange, Error, PasswordHash, Role, Session, SessionEvent, SessionId, SessionQuery,
    SessionRepository, User, UserId,
};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use super::PgSessionRepository;
use super::directory_cache::CachedUsers;
use super::listen::{Invalidated, Liveness, listen};

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
    live: Liveness,
    /// The users read model, told of credential changes made here and fed
    /// the users that profile reads bring back.
    directory: Option<Arc<CachedUsers>>,
}

impl CachedSessions {
    /// At most `capacity` sessions are remembered (past that the cache
    /// starts again empty), each for at most `max_age`; with a `capacity`
    /// of 0 none is, and only the directory (if any) is served.
    pub fn new(pool: PgPool, capacity: usize, max_age: Duration) -> Self {
        Self {
            inner: PgSessionRepository::new(pool.clone()),
            pool,
            open: Mutex::new(HashMap::new()),
            capacity,
            max_age,
            live: Liveness::default(),
            directory: None,
        }
    }

    /// The same cache, answering profile reads (a session and its user)
    /// from `directory` too, and telling it of credential changes at once.
    #[must_use]
    pub fn with_directory(mut self, directory: Arc<CachedUsers>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Whether the cache is in use (its listener is connected).
    pub fn is_listening(&self) -> bool {
        self.live.is_listening()
    }

    /// How many times the listener has connected (reconnections included).
    pub fn connections(&self) -> u64 {
        self.live.connections()
    }

    /// How many open sessions are remembered now.
    pub fn cached(&self) -> usize {
        self.open.lock().map(|open| open.len()).unwrap_or(0)
    }

    fn forget(&self, id: SessionId) {
        self.live.bump();
        if let Ok(mut open) = self.open.lock() {
            open.remove(&id);
        }
    }

    fn forget_sessions_of(&self, user: UserId) {
        self.live.bump();
        if let Ok(mut open) = self.open.lock() {
            open.retain(|_, (s, _)| s.user_id != user);
        }
    }

    fn remember(&self, session: &Session, generation: u64) {
        if self.capacity == 0 {
            return;
        }
        let Ok(mut open) = self.open.lock() else {
            return;
        };
        if !self.live.may_remember(generation) {
            return;
        }
        if open.len() >= self.capacity {
            open.clear();
        }
        open.insert(session.id, (session.clone(), Instant::now()));
    }

    /// The session if it is remembered and fresh; None when the cache is
    /// off or does not have it.
    fn recall(&self, id: SessionId) -> Option<Session> {
        if !self.is_listening() {
            return None;
        }
        let (session, at) = self.open.lock().ok()?.get(&id).cloned()?;
        (at.elapsed() < self.max_age).then_some(session)
    }

    /// Listens for session changes until `stop` completes, reconnecting with
    /// backoff; the cache is used only while this runs and is connected.
    pub async fn listen(&self, stop: impl std::future::Future<Output = ()>) {
        listen(&self.pool, CHANNEL, "sessions", self, stop).await;
    }
}

impl Invalidated for CachedSessions {
    fn liveness(&self) -> &Liveness {
        &self.live
    }

    fn notified(&self, payload: &str) {
        match SessionId::parse(payload) {
            Ok(id) => self.forget(id),
            Err(_) => self.forget_all(),
        }
    }

    fn forget_all(&self) {
        self.live.bump();
        if let Ok(mut open) = self.open.lock() {
            open.clear();
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
        role: Role,
    ) -> Result<bool, Error> {
        self.inner
            .open_verified(session, event, credential, role)
            .await
    }

    async fn open_beside(
        &self,
        parent: Option<SessionId>,
        session: &Session,
        event: &SessionEvent,
        role: Role,
    ) -> Result<bool, Error> {
        self.inner.open_beside(parent, session, event, role).await
    }

    async fn change_credentials(&self, change: &CredentialChange) -> Result<u64, Error> {
        let changed = self.inner.change_credentials(change).await;
        if change.password_hash.is_some() {
            self.forget_sessions_of(change.user);
        }
        if let Some(directory) = &self.directory {
            directory.forget_user(change.user);
        }
        changed
    }

    async fn find_open(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, Error> {
        if let Some(session) = self.recall(id) {
            return Ok(session.is_open_at(now).then_some(session));
        }
        let generation = self.live.generation();
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
        let Some(directory) = &self.directory else {
            return self.inner.find_open_with_user(id, now).await;
        };
        if let Some(session) = self.recall(id)
            && let Some(user) = directory.recall_id(session.user_id)
        {
            return Ok(session.is_open_at(now).then_some((session, user)));
        }
        let (generation, users_generation) = (self.live.generation(), directory.generation());
        let found = self.inner.find_open_with_user(id, now).await?;
        if let Some((session, user)) = &found {
            self.remember(session, generation);
            directory.remember_user(user, users_generation);
        }
        Ok(found)
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
        self.forget_sessions_of(user);
        revoked
    }

    async fn change_role(
        &self,
        user: UserId,
        role: Role,
        at: OffsetDateTime,
    ) -> Result<u64, Error> {
        let changed = self.inner.change_role(user, role, at).await;
        self.forget_sessions_of(user);
        if let Some(directory) = &self.directory {
            directory.forget_user(user);
        }
        changed
    }

    fn forget_user(&self, user: UserId) {
        self.forget_sessions_of(user);
        if let Some(directory) = &self.directory {
            directory.forget_user(user);
        }
    }

    async fn find(&self, id: SessionId) -> Result<Option<Session>, Error> {
        self.inner.find(id).await
    }

    async fn list(&self, user: UserId, query: &SessionQuery) -> Result<Vec<Session>, Error> {
        self.inner.list(user, query).await
    }

    async fn count_open(
        &self,
        user: UserId,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, Error> {
        self.inner.count_open(user, now, limit).await
    }

    async fn touch(&self, session: &Session, event: &SessionEvent) -> Result<bool, Error> {
        let touched = self.inner.touch(session, event).await;
        self.forget(session.id);
        touched
    }
}
