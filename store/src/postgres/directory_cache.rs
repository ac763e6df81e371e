//! The directory read model: users remembered in memory, forgotten the
//! moment PostgreSQL says they changed.
//!
//! A SOAP lookup asks for a user by name and `/profile` asks for one by id,
//! on every request, and a user row changes seldom. [`CachedUsers`] keeps
//! the users it read, by id and by lower-case name, and the names it found
//! no user for. It trusts them only while it is listening (see
//! [`super::listen`]): triggers on `users` send, at commit, the id and the
//! names of every inserted, updated or deleted row on the `polyhub_users`
//! channel, or `*` for a statement of more than 64 rows; the listener
//! forgets the user and both names, so a registration ends a remembered
//! "no such user" for its name, and an email or role change is never
//! answered stale once the notification is in.
//!
//! Changes made through this repository (or told to it by the session
//! cache, which changes credentials) are forgotten locally as they commit,
//! so within one process the very next request sees them; another
//! process's change arrives with its notification, in milliseconds. No
//! entry is trusted for longer than `max_age`, which bounds staleness if the
//! listening connection dies silently.
//!
//! Memory is bounded: at most `capacity` users (past that the users start
//! again empty) and an eighth of that in missing names (likewise), so a
//! client asking for names at random churns only the missing names.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{
    Email, Error, ImportOutcome, NewUser, PasswordHash, User, UserId, UserRepository, Username,
};
use sqlx::postgres::PgPool;

use super::PgUserRepository;
use super::listen::{Invalidated, Liveness, listen};

/// The channel the `users_*` triggers notify.
pub const CHANNEL: &str = "polyhub_users";

#[derive(Debug, Default)]
struct Entries {
    users: HashMap<UserId, (User, Instant)>,
    /// Lower-case name -> id, for the users above.
    names: HashMap<String, UserId>,
    /// Names no user had when last asked.
    missing: HashMap<String, Instant>,
}

/// How the directory's reads were answered, for /metrics.
#[derive(Debug, Default)]
struct Counts {
    hits: AtomicU64,
    misses: AtomicU64,
    bypassed: AtomicU64,
}

/// What [`CachedUsers::stats`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectoryStats {
    pub listening: bool,
    /// How many times the listener has connected (reconnections included).
    pub connections: u64,
    pub users: usize,
    pub missing: usize,
    pub capacity: usize,
    /// Reads answered from memory.
    pub hits: u64,
    /// Reads that went to PostgreSQL while the cache was on.
    pub misses: u64,
    /// Reads that went to PostgreSQL because the cache was off.
    pub bypassed: u64,
}

/// Users in PostgreSQL, remembered by id and name while invalidation is live.
#[derive(Debug)]
pub struct CachedUsers {
    inner: PgUserRepository,
    pool: PgPool,
    entries: Mutex<Entries>,
    capacity: usize,
    max_age: Duration,
    live: Liveness,
    counts: Counts,
}

impl CachedUsers {
    /// At most `capacity` users (and `capacity / 8` missing names) are
    /// remembered, each for at most `max_age`.
    pub fn new(pool: PgPool, capacity: usize, max_age: Duration) -> Self {
        Self {
            inner: PgUserRepository::new(pool.clone()),
            pool,
            entries: Mutex::new(Entries::default()),
            capacity: capacity.max(1),
            max_age,
            live: Liveness::default(),
            counts: Counts::default(),
        }
    }

    /// Whether the cache is in use (its listener is connected).
    pub fn is_listening(&self) -> bool {
        self.live.is_listening()
    }

    /// How many times the listener has connected (reconnections included).
    pub fn connections(&self) -> u64 {
        self.live.connections()
    }

    pub fn stats(&self) -> DirectoryStats {
        let (users, missing) = self
            .entries
            .lock()
            .map(|e| (e.users.len(), e.missing.len()))
            .unwrap_or((0, 0));
        DirectoryStats {
            listening: self.is_listening(),
            connections: self.connections(),
            users,
            missing,
            capacity: self.capacity,
            hits: self.counts.hits.load(Ordering::Relaxed),
            misses: self.counts.misses.load(Ordering::Relaxed),
            bypassed: self.counts.bypassed.load(Ordering::Relaxed),
        }
    }

    /// Listens for user changes until `stop` completes, reconnecting with
    /// backoff; the cache is used only while this runs and is connected.
    pub async fn listen(&self, stop: impl std::future::Future<Output = ()>) {
        listen(&self.pool, CHANNEL, "directory", self, stop).await;
    }

    /// The generation to read before a query whose answer is then given to
    /// [`Self::remember_user`].
    pub(super) fn generation(&self) -> u64 {
        self.live.generation()
    }

    /// Forgets `id` and the name it was remembered under.
    pub(super) fn forget_user(&self, id: UserId) {
        self.live.bump();
        if let Ok(mut entries) = self.entries.lock()
            && let Some((user, _)) = entries.users.remove(&id)
        {
            entries.names.remove(user.username.as_str());
        }
    }

    fn forget_name(&self, name: &str) {
        self.live.bump();
        if let Ok(mut entries) = self.entries.lock() {
            if let Some(id) = entries.names.remove(name) {
                entries.users.remove(&id);
            }
            entries.missing.remove(name);
        }
    }

    /// The user with `id`, if remembered and fresh and the cache is on.
    pub(super) fn recall_id(&self, id: UserId) -> Option<User> {
        if !self.is_listening() {
            self.counts.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let found = self.entries.lock().ok().and_then(|e| {
            e.users
                .get(&id)
                .filter(|(_, at)| at.elapsed() < self.max_age)
                .map(|(user, _)| user.clone())
        });
        self.count(found.is_some());
        found
    }

    /// What is remembered of `name`: `Some(Some(user))`, `Some(None)` for a
    /// name known to be free, `None` when it must be asked.
    fn recall_name(&self, name: &str) -> Option<Option<User>> {
        if !self.is_listening() {
            self.counts.bypassed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let found = self.entries.lock().ok().and_then(|e| {
            if let Some(id) = e.names.get(name) {
                return e
                    .users
                    .get(id)
                    .filter(|(_, at)| at.elapsed() < self.max_age)
                    .map(|(user, _)| Some(user.clone()));
            }
            e.missing
                .get(name)
                .filter(|at| at.elapsed() < self.max_age)
                .map(|_| None)
        });
        self.count(found.is_some());
        found
    }

    fn count(&self, hit: bool) {
        let counter = if hit {
            &self.counts.hits
        } else {
            &self.counts.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Remembers `user` as read at `generation`, unless something was
    /// forgotten since.
    pub(super) fn remember_user(&self, user: &User, generation: u64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if !self.live.may_remember(generation) {
            return;
        }
        if entries.users.len() >= self.capacity {
            entries.users.clear();
            entries.names.clear();
        }
        entries
            .names
            .insert(user.username.as_str().to_owned(), user.id);
        entries
            .users
            .insert(user.id, (user.clone(), Instant::now()));
    }

    fn remember_missing(&self, name: &str, generation: u64) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if !self.live.may_remember(generation) {
            return;
        }
        if entries.missing.len() >= (self.capacity / 8).max(1) {
            entries.missing.clear();
        }
        entries.missing.insert(name.to_owned(), Instant::now());
    }
}

impl Invalidated for CachedUsers {
    fn liveness(&self) -> &Liveness {
        &self.live
    }

    /// `<id> <name> [<new name>]`, or `*` for everything.
    fn notified(&self, payload: &str) {
        let mut parts = payload.split(' ');
        let Some(Ok(id)) = parts.next().map(UserId::parse) else {
            self.forget_all();
            return;
        };
        self.forget_user(id);
        for name in parts {
            self.forget_name(name);
        }
    }

    fn forget_all(&self) {
        self.live.bump();
        if let Ok(mut entries) = self.entries.lock() {
            *entries = Entries::default();
        }
    }
}

#[async_trait]
impl UserRepository for CachedUsers {
    async fn insert(&self, user: NewUser) -> Result<User, Error> {
        let name = user.username.as_str().to_owned();
        let inserted = self.inner.insert(user).await;
        // Whether or not it went in, the name's "missing" may be stale now.
        self.forget_name(&name);
        inserted
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        if let Some(user) = self.recall_id(id) {
            return Ok(Some(user));
        }
        let generation = self.generation();
        let found = self.inner.find_by_id(id).await?;
        if let Some(user) = &found {
            self.remember_user(user, generation);
        }
        Ok(found)
    }

    async fn find_by_username(&self, username: &Username) -> Result<Option<User>, Error> {
        if let Some(known) = self.recall_name(username.as_str()) {
            return Ok(known);
        }
        let generation = self.generation();
        let found = self.inner.find_by_username(username).await?;
        match &found {
            Some(user) => self.remember_user(user, generation),
            None => self.remember_missing(username.as_str(), generation),
        }
        Ok(found)
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        self.inner.find_by_email(email).await
    }

    async fn search(
        &self,
        prefix: &str,
        after: Option<&Username>,
        limit: u32,
    ) -> Result<Vec<User>, Error> {
        self.inner.search(prefix, after, limit).await
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        expected: &PasswordHash,
        hash: &PasswordHash,
    ) -> Result<bool, Error> {
        let done = self.inner.replace_password_hash(id, expected, hash).await;
        self.forget_user(id);
        done
    }

    async fn import(&self, users: &[User], dry_run: bool) -> Result<Vec<ImportOutcome>, Error> {
        let done = self.inner.import(users, dry_run).await;
        if !dry_run {
            for user in users {
                self.forget_name(user.username.as_str());
            }
        }
        done
    }

    async fn count_insecure_hashes(&self) -> Result<u64, Error> {
        self.inner.count_insecure_hashes().await
    }

    async fn update_email(&self, id: UserId, email: &Email) -> Result<(), Error> {
        let done = self.inner.update_email(id, email).await;
        self.forget_user(id);
        done
    }
}
