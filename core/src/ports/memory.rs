//! In-memory fakes of every port, for tests of the use cases and of the
//! adapters' routers where a server adds nothing. Each keeps its port's
//! contract as the real store does (the tests below check the same
//! behaviours as hub-store's), so a test passing here means the same there.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::*;
use crate::error::ErrorCode;
use crate::events::{EventLog, LoggedEvent, Subscriber};

/// In-memory users. Each change writes its event to the event log it shares
/// with the [`InMemorySessions`] built on it, while it still holds the
/// users' lock (as the real store writes both in one transaction).
#[derive(Debug, Default)]
pub struct InMemoryUsers {
    users: Mutex<HashMap<UserId, User>>,
    /// Known devices by user, each with when it was last used.
    devices: Mutex<HashMap<UserId, Vec<(String, OffsetDateTime)>>>,
    /// The sessions and the event log (locked after `users`, never before).
    tables: Arc<Mutex<SessionTables>>,
}

impl InMemoryUsers {
    /// Appends events to the log; called with the users' lock held.
    fn log(&self, events: impl IntoIterator<Item = DomainEvent>) -> Result<(), Error> {
        let mut tables = lock_tables(&self.tables)?;
        for event in events {
            tables.push(event);
        }
        Ok(())
    }

    fn forget_devices(&self, user: UserId) {
        if let Ok(mut devices) = self.devices.lock() {
            devices.remove(&user);
        }
    }

    /// Sets the role; false when it already was the user's. The last
    /// admin keeps the role.
    fn set_role(&self, id: UserId, role: Role, at: OffsetDateTime) -> Result<bool, Error> {
        self.with(|users| {
            let admins = users.values().filter(|u| u.role == Role::Admin).count();
            match users.get_mut(&id) {
                Some(u) if u.role == role => Ok(false),
                Some(u) if u.role == Role::Admin && admins == 1 => {
                    Err(Error::with_message(ErrorCode::Forbidden, super::LAST_ADMIN))
                }
                Some(u) => {
                    u.role = role;
                    let change = UserChange::RoleChanged { role };
                    self.log([UserEvent::new(Some(id), at, change).into()])?;
                    Ok(true)
                }
                None => Err(Error::new(ErrorCode::UserNotFound)),
            }
        })?
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<UserId, User>) -> T) -> Result<T, Error> {
        let mut guard = self
            .users
            .lock()
            .map_err(|_| Error::internal("in-memory user store poisoned"))?;
        Ok(f(&mut guard))
    }

    /// The user part of a credential change, all or nothing.
    fn apply(&self, change: &super::CredentialChange) -> Result<(), Error> {
        self.with(|users| {
            let taken = change.email.as_ref().is_some_and(|email| {
                users
                    .values()
                    .any(|u| u.id != change.user && u.email == *email)
            });
            if taken {
                return Err(Error::new(ErrorCode::EmailTaken));
            }
            let Some(user) = users.get_mut(&change.user) else {
                return Err(Error::new(ErrorCode::UserNotFound));
            };
            if user.password_hash != change.expected {
                return Err(Error::new(ErrorCode::InvalidCredentials));
            }
            if let Some(email) = &change.email {
                user.email = email.clone();
            }
            if let Some(hash) = &change.password_hash {
                user.password_hash = hash.clone();
            }
            user.updated_at = change.at;
            self.log(change.events().into_iter().map(DomainEvent::from))
        })?
    }
}

#[async_trait]
impl UserRepository for InMemoryUsers {
    async fn insert(&self, new: NewUser) -> Result<User, Error> {
        self.with(|users| {
            if users.values().any(|u| u.username == new.username) {
                return Err(Error::new(ErrorCode::UsernameTaken));
            }
            if users.values().any(|u| u.email == new.email) {
                return Err(Error::new(ErrorCode::EmailTaken));
            }
            self.log([new.created_event().into()])?;
            let user = User::from(new);
            users.insert(user.id, user.clone());
            Ok(user)
        })?
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        self.with(|users| users.get(&id).cloned())
    }

    async fn find_by_username(&self, username: &Username) -> Result<Option<User>, Error> {
        self.with(|users| users.values().find(|u| &u.username == username).cloned())
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        self.with(|users| users.values().find(|u| &u.email == email).cloned())
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        expected: &PasswordHash,
        hash: &PasswordHash,
    ) -> Result<bool, Error> {
        self.with(|users| match users.get_mut(&id) {
            Some(u) if &u.password_hash == expected => {
                u.password_hash = hash.clone();
                true
            }
            _ => false,
        })
    }

    async fn import(&self, imported: &[User], dry_run: bool) -> Result<Vec<ImportOutcome>, Error> {
        self.with(|users| {
            let mut outcomes = Vec::new();
            let mut added: Vec<User> = Vec::new();
            for user in imported {
                let all = || users.values().chain(added.iter());
                let outcome = if all().any(|u| u.username == user.username) {
                    ImportOutcome::UsernamePresent
                } else if all().any(|u| u.email == user.email) {
                    ImportOutcome::EmailTaken
                } else {
                    added.push(user.clone());
                    ImportOutcome::Imported
                };
                outcomes.push(outcome);
            }
            if !dry_run && !added.is_empty() {
                // When the import ran, as the real store does.
                let count = added.len() as u64;
                let change = UserChange::Imported { count };
                self.log([UserEvent::new(None, SystemClock.now(), change).into()])?;
                for user in added {
                    users.insert(user.id, user);
                }
            }
            Ok(outcomes)
        })?
    }

    async fn count_insecure_hashes(&self) -> Result<u64, Error> {
        self.with(|users| {
            users
                .values()
                .filter(|u| u.password_hash.is_insecure())
                .count() as u64
        })
    }

    async fn search(
        &self,
        prefix: &str,
        after: Option<&Username>,
        limit: u32,
    ) -> Result<Vec<User>, Error> {
        let prefix = prefix.to_lowercase();
        self.with(|users| {
            let mut found: Vec<User> = users
                .values()
                .filter(|u| {
                    u.username.as_str().starts_with(&prefix)
                        || u.email.as_str().starts_with(&prefix)
                })
                .filter(|u| after.is_none_or(|a| u.username.as_str() > a.as_str()))
                .cloned()
                .collect();
            found.sort_by(|a, b| a.username.as_str().cmp(b.username.as_str()));
            found.truncate(limit as usize);
            found
        })
    }

    async fn update_email(&self, id: UserId, email: &Email) -> Result<(), Error> {
        self.with(|users| {
            if users.values().any(|u| &u.email == email && u.id != id) {
                return Err(Error::new(ErrorCode::EmailTaken));
            }
            match users.get_mut(&id) {
                Some(u) => {
                    u.email = email.clone();
                    let change = UserChange::EmailChanged {
                        email: email.as_str().to_owned(),
                    };
                    self.log([UserEvent::new(Some(id), SystemClock.now(), change).into()])
                }
                None => Err(Error::new(ErrorCode::UserNotFound)),
            }
        })?
    }
}

/// In-memory sessions. Each change writes its event to the event log under
/// the same lock (as the real store does in one transaction), which
/// [`InMemorySessions::outbox`] drains (one subscriber) and
/// [`InMemorySessions::event_log`] reads. It reads the users it is given,
/// as the real store joins its users table, and shares their log.
#[derive(Debug)]
pub struct InMemorySessions {
    state: Arc<Mutex<SessionTables>>,
    users: Arc<InMemoryUsers>,
}

impl Default for InMemorySessions {
    fn default() -> Self {
        Self::with_users(Arc::default())
    }
}

/// The sessions and the event log, behind one lock.
#[derive(Debug, Default)]
struct SessionTables {
    sessions: HashMap<SessionId, Session>,
    outbox: OutboxRows,
    /// The last position given, so positions only grow.
    positions: i64,
    /// The last claim handed out, so each claim holds its own rows.
    claims: u64,
}

impl SessionTables {
    fn push(&mut self, event: DomainEvent) {
        self.positions += 1;
        self.outbox.0.push(OutboxRow {
            position: self.positions,
            event,
            delivered_at: None,
            attempts: 0,
            quarantined: None,
            claim: None,
        });
    }
}

/// The event log, with one subscriber's delivery state on each event.
#[derive(Debug, Default)]
struct OutboxRows(Vec<OutboxRow>);

#[derive(Debug)]
struct OutboxRow {
    position: i64,
    event: DomainEvent,
    delivered_at: Option<OffsetDateTime>,
    attempts: u32,
    /// Set aside, and why.
    quarantined: Option<String>,
    /// The claim holding it, while one does.
    claim: Option<u64>,
}

impl InMemorySessions {
    pub fn with_users(users: Arc<InMemoryUsers>) -> Self {
        Self {
            state: Arc::clone(&users.tables),
            users,
        }
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut HashMap<SessionId, Session>, &mut SessionTables) -> T,
    ) -> Result<T, Error> {
        let mut guard = lock_tables(&self.state)?;
        let tables = &mut *guard;
        let mut sessions = std::mem::take(&mut tables.sessions);
        let out = f(&mut sessions, tables);
        tables.sessions = sessions;
        Ok(out)
    }

    /// Every session event in the log (pruned ones are gone), in the order
    /// written.
    pub fn events(&self) -> Vec<SessionEvent> {
        self.all_events()
            .into_iter()
            .filter_map(|event| match event {
                DomainEvent::Session(event) => Some(event),
                DomainEvent::User(_) | DomainEvent::Webhook(_) => None,
            })
            .collect()
    }

    /// Every event in the log, users' and sessions', in the order written.
    pub fn all_events(&self) -> Vec<DomainEvent> {
        self.with(|_, tables| {
            tables
                .outbox
                .0
                .iter()
                .map(|row| row.event.clone())
                .collect()
        })
        .unwrap_or_default()
    }

    /// The log as `hub events tail` reads it.
    pub fn event_log(&self) -> InMemoryOutbox {
        self.outbox()
    }

    /// The outbox these sessions write to, as a relay sees it.
    pub fn outbox(&self) -> InMemoryOutbox {
        InMemoryOutbox {
            state: Arc::clone(&self.state),
            users: Arc::clone(&self.users),
        }
    }
}

#[async_trait]
impl KnownDevices for InMemorySessions {
    async fn is_known(&self, user: UserId, device: &str) -> Result<bool, Error> {
        let devices = self
            .users
            .devices
            .lock()
            .map_err(|_| Error::internal("in-memory device store poisoned"))?;
        Ok(devices
            .get(&user)
            .is_some_and(|known| known.iter().any(|(d, _)| d == device)))
    }

    async fn remember(
        &self,
        user: UserId,
        shown: Option<&str>,
        fresh: &str,
        session: SessionId,
        at: OffsetDateTime,
        keep: u32,
    ) -> Result<Option<String>, Error> {
        let open = self.with(|sessions, _| {
            sessions
                .get(&session)
                .is_some_and(|s| s.user_id == user && s.revoked_at.is_none())
        })?;
        if !open {
            return Ok(None);
        }
        let mut devices = self
            .users
            .devices
            .lock()
            .map_err(|_| Error::internal("in-memory device store poisoned"))?;
        let known = devices.entry(user).or_default();
        let device = match shown {
            Some(shown) if known.iter().any(|(d, _)| d == shown) => shown,
            _ => fresh,
        };
        known.retain(|(d, _)| d != device);
        known.push((device.to_owned(), at));
        known.sort_by_key(|(_, used)| std::cmp::Reverse(*used));
        known.truncate(usize::try_from(keep).unwrap_or(usize::MAX));
        Ok(Some(device.to_owned()))
    }
}

#[async_trait]
impl SessionRepository for InMemorySessions {
    async fn open(&self, session: &Session, event: &SessionEvent) -> Result<(), Error> {
        self.with(|sessions, events| {
            sessions.insert(session.id, session.clone());
            events.push(event.clone().into());
        })
    }

    async fn open_verified(
        &self,
        session: &Session,
        event: &SessionEvent,
        credential: &PasswordHash,
        role: Role,
    ) -> Result<bool, Error> {
        let current = self
            .users
            .find_by_id(session.user_id)
            .await?
            .is_some_and(|u| u.password_hash == *credential && u.role == role && u.active);
        if current {
            self.open(session, event).await?;
        }
        Ok(current)
    }

    async fn open_beside(
        &self,
        parent: Option<SessionId>,
        session: &Session,
        event: &SessionEvent,
        role: Role,
    ) -> Result<bool, Error> {
        let role_holds = self
            .users
            .find_by_id(session.user_id)
            .await?
            .is_some_and(|u| u.role == role && u.active);
        let parent_open = match parent {
            Some(parent) => self.with(|sessions, _| {
                sessions
                    .get(&parent)
                    .is_some_and(|p| p.user_id == session.user_id && p.is_open_at(event.at))
            })?,
            None => true,
        };
        if !(role_holds && parent_open) {
            return Ok(false);
        }
        self.open(session, event).await?;
        Ok(true)
    }

    async fn change_credentials(&self, change: &super::CredentialChange) -> Result<u64, Error> {
        self.users.apply(change)?;
        if change.password_hash.is_none() {
            return Ok(0);
        }
        self.revoke_all(change.user, change.keep, change.at, super::PASSWORD_CHANGED)
            .await
    }

    async fn change_role(
        &self,
        user: UserId,
        role: Role,
        at: OffsetDateTime,
    ) -> Result<u64, Error> {
        if !self.users.set_role(user, role, at)? {
            return Ok(0);
        }
        self.revoke_all(user, None, at, super::ROLE_CHANGED).await
    }

    async fn find_open(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, Error> {
        self.with(|sessions, _| sessions.get(&id).filter(|s| s.is_open_at(now)).cloned())
    }

    async fn find_open_with_user(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<(Session, User)>, Error> {
        let Some(session) = self.find_open(id, now).await? else {
            return Ok(None);
        };
        Ok(self
            .users
            .find_by_id(session.user_id)
            .await?
            .map(|user| (session, user)))
    }

    async fn revoke(&self, id: SessionId, at: OffsetDateTime, reason: &str) -> Result<bool, Error> {
        self.with(|sessions, events| match sessions.get_mut(&id) {
            Some(s) if s.is_open_at(at) => {
                s.revoked_at = Some(at);
                events.push(
                    SessionEvent::new(crate::session::SessionEventKind::Revoked, s, at)
                        .because(reason)
                        .into(),
                );
                true
            }
            _ => false,
        })
    }

    async fn revoke_all(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: OffsetDateTime,
        reason: &str,
    ) -> Result<u64, Error> {
        self.users.forget_devices(user);
        self.with(|sessions, events| {
            let mut count = 0;
            for s in sessions.values_mut() {
                if s.user_id == user && Some(s.id) != keep && s.is_open_at(at) {
                    s.revoked_at = Some(at);
                    events.push(
                        SessionEvent::new(crate::session::SessionEventKind::Revoked, s, at)
                            .because(reason)
                            .into(),
                    );
                    count += 1;
                }
            }
            count
        })
    }

    async fn find(&self, id: SessionId) -> Result<Option<Session>, Error> {
        self.with(|sessions, _| sessions.get(&id).cloned())
    }

    async fn list(&self, user: UserId, query: &SessionQuery) -> Result<Vec<Session>, Error> {
        self.with(|sessions, _| {
            let mut found: Vec<Session> = sessions
                .values()
                .filter(|s| s.user_id == user)
                .filter(|s| query.include_closed || s.is_open_at(query.now))
                .filter(|s| query.before.is_none_or(|before| s.id < before))
                .cloned()
                .collect();
            found.sort_by_key(|s| std::cmp::Reverse(s.id));
            found.truncate(usize::try_from(query.limit).unwrap_or(usize::MAX));
            found
        })
    }

    async fn touch(&self, session: &Session, event: &SessionEvent) -> Result<bool, Error> {
        self.with(|sessions, events| match sessions.get_mut(&session.id) {
            Some(s) if s.is_open_at(event.at) => {
                s.last_seen_at = session.last_seen_at;
                s.expires_at = session.expires_at;
                events.push(event.clone().into());
                true
            }
            _ => false,
        })
    }
}

/// The outbox of an [`InMemorySessions`] (see [`InMemorySessions::outbox`]):
/// events claimed oldest first, each by one claim at a time, as the real
/// one's row locks do. A claim dropped without being marked lets its events
/// go, as a relay's lost connection does.
#[derive(Debug, Clone)]
pub struct InMemoryOutbox {
    state: Arc<Mutex<SessionTables>>,
    users: Arc<InMemoryUsers>,
}

impl InMemoryOutbox {
    fn with<T>(&self, f: impl FnOnce(&mut SessionTables) -> T) -> Result<T, Error> {
        lock_tables(&self.state).map(|mut tables| f(&mut tables))
    }

    /// Why the event was quarantined, while it is.
    pub fn quarantine_reason(&self, id: Uuid) -> Option<String> {
        self.with(|tables| {
            tables
                .outbox
                .0
                .iter()
                .find(|row| row.event.id() == id)
                .and_then(|row| row.quarantined.clone())
        })
        .ok()
        .flatten()
    }
}

fn lock_tables(
    state: &Mutex<SessionTables>,
) -> Result<std::sync::MutexGuard<'_, SessionTables>, Error> {
    state
        .lock()
        .map_err(|_| Error::internal("in-memory session store poisoned"))
}

/// A claimed batch: its rows carry the claim's number until it ends.
struct InMemoryClaim {
    state: Arc<Mutex<SessionTables>>,
    claim: u64,
    events: Vec<PendingEvent>,
}

impl InMemoryClaim {
    /// Ends the claim, `f` seeing each of its rows first.
    fn end(&self, mut f: impl FnMut(&mut OutboxRow)) -> Result<(), Error> {
        let mut tables = lock_tables(&self.state)?;
        for row in tables
            .outbox
            .0
            .iter_mut()
            .filter(|row| row.claim == Some(self.claim))
        {
            f(row);
            row.claim = None;
        }
        Ok(())
    }
}

impl Drop for InMemoryClaim {
    fn drop(&mut self) {
        let _ = self.end(|_| {});
    }
}

#[async_trait]
impl ClaimedEvents for InMemoryClaim {
    fn events(&self) -> &[PendingEvent] {
        &self.events
    }

    async fn delivered(self: Box<Self>, at: OffsetDateTime) -> Result<(), Error> {
        self.end(|row| row.delivered_at = Some(at))
    }

    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        refused: &[(Uuid, String)],
        at: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, Error> {
        let mut quarantined = 0;
        self.end(|row| {
            if delivered.contains(&row.event.id()) {
                row.delivered_at = Some(at);
            } else if let Some((_, why)) = refused.iter().find(|(id, _)| *id == row.event.id()) {
                row.attempts += 1;
                if row.attempts >= max_attempts {
                    row.quarantined = Some(why.clone());
                    quarantined += 1;
                }
            }
        })?;
        Ok(quarantined)
    }
}

#[async_trait]
impl Outbox for InMemoryOutbox {
    async fn claim(&self, limit: u32) -> Result<Box<dyn ClaimedEvents>, Error> {
        let (claim, events) = self.with(|tables| {
            tables.claims += 1;
            let claim = tables.claims;
            let mut free: Vec<&mut OutboxRow> = tables
                .outbox
                .0
                .iter_mut()
                .filter(|row| {
                    row.delivered_at.is_none() && row.quarantined.is_none() && row.claim.is_none()
                })
                .collect();
            free.sort_by_key(|row| row.position);
            let events: Vec<(i64, DomainEvent)> = free
                .into_iter()
                .take(usize::try_from(limit).unwrap_or(usize::MAX))
                .map(|row| {
                    row.claim = Some(claim);
                    (row.position, row.event.clone())
                })
                .collect();
            (claim, events)
        })?;
        // Made before the user lookup can fail, so its rows are let go then.
        let mut claimed = InMemoryClaim {
            state: Arc::clone(&self.state),
            claim,
            events: Vec::with_capacity(events.len()),
        };
        for (position, event) in events {
            let username = match event.user_id() {
                Some(user) => self
                    .users
                    .with(|users| users.get(&user).map(|u| u.username.clone()))?,
                None => None,
            };
            claimed.events.push(PendingEvent {
                position,
                event,
                username,
            });
        }
        Ok(Box::new(claimed))
    }

    async fn backlog(&self) -> Result<Backlog, Error> {
        self.with(|tables| {
            let mut backlog = Backlog::default();
            for row in tables.outbox.0.iter().filter(|r| r.delivered_at.is_none()) {
                if row.quarantined.is_some() {
                    backlog.quarantined += 1;
                } else {
                    backlog.pending += 1;
                    let at = row.event.at();
                    backlog.oldest = Some(backlog.oldest.map_or(at, |o| o.min(at)));
                }
            }
            backlog
        })
    }

    async fn prune(&self, before: OffsetDateTime) -> Result<u64, Error> {
        self.with(|tables| {
            let rows = &mut tables.outbox.0;
            let was = rows.len();
            // As the real one: delivered before `before`, and older than it.
            rows.retain(|row| {
                row.delivered_at.is_none_or(|at| at >= before) || row.event.at() >= before
            });
            (was - rows.len()) as u64
        })
    }

    async fn retry_quarantined(&self) -> Result<u64, Error> {
        self.with(|tables| {
            let mut count = 0;
            for row in tables
                .outbox
                .0
                .iter_mut()
                .filter(|r| r.quarantined.is_some() && r.delivered_at.is_none())
            {
                row.quarantined = None;
                row.attempts = 0;
                count += 1;
            }
            count
        })
    }
}

#[async_trait]
impl EventLog for InMemoryOutbox {
    async fn read(&self, after: Option<i64>, limit: u32) -> Result<Vec<LoggedEvent>, Error> {
        self.with(|tables| {
            let rows = &tables.outbox.0;
            let limit = usize::try_from(limit).unwrap_or(usize::MAX);
            let start = match after {
                None => rows.len().saturating_sub(limit),
                Some(after) => match rows.iter().position(|row| row.position == after) {
                    Some(found) => found + 1,
                    None => return Err(super::super::events::no_such_position(after)),
                },
            };
            Ok(rows
                .iter()
                .skip(start)
                .take(limit)
                .map(|row| LoggedEvent {
                    position: row.position,
                    event: row.event.clone(),
                })
                .collect())
        })?
    }

    /// One subscriber, the activity log's, which takes everything.
    async fn subscribers(&self) -> Result<Vec<Subscriber>, Error> {
        let backlog = self.backlog().await?;
        Ok(vec![Subscriber {
            name: "activity".to_owned(),
            types: vec!["*".to_owned()],
            pending: backlog.pending,
            oldest_pending: backlog.oldest,
            quarantined: backlog.quarantined,
        }])
    }
}

/// Authentication over in-memory users and sessions, with a signing key
/// of its own and the cheapest hashing: what the use-case tests and the
/// adapters' in-memory router tests sign users in with.
pub struct InMemoryAuth {
    pub users: Arc<InMemoryUsers>,
    pub sessions: Arc<InMemorySessions>,
    pub hashing: crate::work_pool::HashingPool,
    pub tokens: Arc<crate::token::Tokens>,
    pub authentication: crate::authentication::Authentication,
}

impl std::fmt::Debug for InMemoryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryAuth").finish_non_exhaustive()
    }
}

impl InMemoryAuth {
    /// Sessions that live `session_lifetime`; tokens 15 minutes.
    pub fn new(session_lifetime: std::time::Duration) -> Result<Self, Error> {
        use crate::token::{KeySet, TokenSettings, Tokens};
        let users = Arc::new(InMemoryUsers::default());
        let sessions = Arc::new(InMemorySessions::with_users(users.clone()));
        let hashing = crate::work_pool::HashingPool::new(
            crate::password::PasswordHasher::insecure_for_tests(1),
            crate::work_pool::WorkPoolConfig::default(),
        );
        let key = KeySet::generate()?;
        let tokens = Arc::new(Tokens::new(
            KeySet::from_pem(&key.private_pem, &[])?,
            TokenSettings {
                issuer: "polyhub".into(),
                audience: "polyhub-api".into(),
                lifetime: std::time::Duration::from_secs(900),
            },
        ));
        let authentication = crate::authentication::Authentication::new(
            users.clone(),
            sessions.clone(),
            hashing.clone(),
            tokens.clone(),
            Arc::new(SystemClock),
            session_lifetime,
            sessions.clone(),
        );
        Ok(Self {
            users,
            sessions,
            hashing,
            tokens,
            authentication,
        })
    }

    /// Registration into the same users, with the same hashing.
    pub fn registration(&self) -> crate::registration::Registration {
        crate::registration::Registration::new(
            self.users.clone(),
            self.hashing.clone(),
            Arc::new(SystemClock),
        )
    }
}

/// An in-memory [`ActivityLog`], as the MongoDB one behaves: idempotent by
/// event id, the last connection moved by openings and touches only, and
/// only forward. It can be made to be away (`UNAVAILABLE`) or to refuse
/// chosen events (as a validator refusing a document does).
#[derive(Debug, Default)]
pub struct InMemoryActivityLog {
    state: Mutex<LogState>,
    away: AtomicBool,
}

#[derive(Debug, Default)]
struct LogState {
    events: Vec<RecordedEvent>,
    last: HashMap<UserId, LastConnection>,
    refused: HashSet<Uuid>,
}

/// An event as the activity log keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub event: DomainEvent,
    /// When a relay delivered it (a batch); none when recorded singly.
    pub delivered_at: Option<OffsetDateTime>,
}

impl InMemoryActivityLog {
    /// While away, every call is `UNAVAILABLE` and nothing is kept.
    pub fn set_away(&self, away: bool) {
        self.away.store(away, Ordering::SeqCst);
    }

    /// Refuses the event (an internal error, not an outage) until
    /// [`Self::accept_all`].
    pub fn refuse(&self, event: Uuid) {
        if let Ok(mut state) = self.state.lock() {
            state.refused.insert(event);
        }
    }

    pub fn accept_all(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.refused.clear();
        }
    }

    /// Every recorded event, in the order recorded.
    pub fn events(&self) -> Vec<RecordedEvent> {
        self.state
            .lock()
            .map(|state| state.events.clone())
            .unwrap_or_default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut LogState) -> T) -> Result<T, Error> {
        if self.away.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the in-memory activity log is away"));
        }
        let mut state = self
            .state
            .lock()
            .map_err(|_| Error::internal("in-memory activity log poisoned"))?;
        Ok(f(&mut state))
    }
}

impl LogState {
    /// Keeps the event unless it is there already; whether it was new.
    fn insert(&mut self, event: &DomainEvent, delivered_at: Option<OffsetDateTime>) -> bool {
        if self.events.iter().any(|r| r.event.id() == event.id()) {
            return false;
        }
        self.events.push(RecordedEvent {
            event: event.clone(),
            delivered_at,
        });
        true
    }

    /// As the real log's upsert: only an older last connection is replaced,
    /// and a missing username keeps the one known.
    fn move_forward(&mut self, event: &DomainEvent, username: Option<&Username>) {
        let DomainEvent::Session(event) = event else {
            return;
        };
        if !matches!(
            event.kind,
            crate::session::SessionEventKind::Opened | crate::session::SessionEventKind::Touched
        ) {
            return;
        }
        let known = self.last.get(&event.user_id);
        if known.is_some_and(|last| last.at >= event.at) {
            return;
        }
        let username = username
            .cloned()
            .or_else(|| known.and_then(|last| last.username.clone()));
        self.last.insert(
            event.user_id,
            LastConnection {
                user_id: event.user_id,
                username,
                session_id: event.session_id,
                at: event.at,
            },
        );
    }

    fn refusal(event: &DomainEvent) -> Error {
        Error::internal(format!("document {} failed validation", event.id()))
    }
}

#[async_trait]
impl ActivityLog for InMemoryActivityLog {
    async fn record(
        &self,
        event: &DomainEvent,
        username: Option<&Username>,
    ) -> Result<bool, Error> {
        self.with(|state| {
            if state.refused.contains(&event.id()) {
                return Err(LogState::refusal(event));
            }
            let recorded = state.insert(event, None);
            // Also on a repeat, as the real one: moving forward twice
            // changes nothing.
            state.move_forward(event, username);
            Ok(recorded)
        })?
    }

    /// As the real one: every event it takes is kept (an unordered insert),
    /// then a refusal fails the batch before any last connection moves.
    async fn record_batch(
        &self,
        events: &[PendingEvent],
        delivered_at: OffsetDateTime,
    ) -> Result<u64, Error> {
        self.with(|state| {
            let mut recorded = 0;
            let mut refused = None;
            for pending in events {
                if state.refused.contains(&pending.event.id()) {
                    refused.get_or_insert_with(|| LogState::refusal(&pending.event));
                } else if state.insert(&pending.event, Some(delivered_at)) {
                    recorded += 1;
                }
            }
            if let Some(refused) = refused {
                return Err(refused);
            }
            for pending in events {
                state.move_forward(&pending.event, pending.username.as_ref());
            }
            Ok(recorded)
        })?
    }

    async fn last_connection(&self, user: UserId) -> Result<Option<LastConnection>, Error> {
        self.with(|state| state.last.get(&user).cloned())
    }
}

/// An in-memory [`crate::images::ImageRepository`], as the PostgreSQL one
/// behaves: the same image of one owner is one image, and the quota is
/// decided under the same lock that records (so concurrent uploads cannot
/// pass it).
#[derive(Debug, Default)]
pub struct InMemoryImages {
    images: Mutex<Vec<crate::images::StoredImage>>,
}

impl InMemoryImages {
    fn with<T>(
        &self,
        f: impl FnOnce(&mut Vec<crate::images::StoredImage>) -> T,
    ) -> Result<T, Error> {
        let mut images = self
            .images
            .lock()
            .map_err(|_| Error::internal("in-memory image store poisoned"))?;
        Ok(f(&mut images))
    }

    /// Deletes an image's row, as an operator would by hand (no port
    /// deletes images); its place in the owner's quota comes back. Whether
    /// it was there.
    pub fn delete(&self, id: Uuid) -> Result<bool, Error> {
        self.with(|images| {
            let was = images.len();
            images.retain(|image| image.id != id);
            images.len() != was
        })
    }

    /// How many images there are, all owners together.
    pub fn len(&self) -> usize {
        self.with(|images| images.len()).unwrap_or_default()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl crate::images::ImageRepository for InMemoryImages {
    async fn insert(
        &self,
        image: &crate::images::StoredImage,
        quota: &crate::images::ImageQuota,
    ) -> Result<crate::images::StoredImage, Error> {
        self.with(|images| {
            let mine = || images.iter().filter(|i| i.owner_id == image.owner_id);
            if let Some(existing) = mine().find(|i| i.sha256 == image.sha256) {
                return Ok(existing.clone());
            }
            let count = mine().count() as u64;
            let bytes: u64 = mine().map(|i| i.size_bytes).sum();
            let over_bytes = bytes
                .checked_add(image.size_bytes)
                .is_none_or(|total| total > quota.max_bytes);
            if count >= quota.max_images || over_bytes {
                return Err(Error::with_message(
                    ErrorCode::QuotaExceeded,
                    format!(
                        "the quota is {} images and {} bytes; {count} images and {bytes} bytes are stored",
                        quota.max_images, quota.max_bytes
                    ),
                ));
            }
            images.push(image.clone());
            Ok(image.clone())
        })?
    }

    async fn find_by_hash(
        &self,
        owner: UserId,
        sha256: &str,
    ) -> Result<Option<crate::images::StoredImage>, Error> {
        self.with(|images| {
            images
                .iter()
                .find(|i| i.owner_id == owner && i.sha256 == sha256)
                .cloned()
        })
    }

    async fn list(
        &self,
        owner: UserId,
        before: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<crate::images::StoredImage>, Error> {
        self.with(|images| {
            let mut page: Vec<_> = images
                .iter()
                .filter(|i| i.owner_id == owner && before.is_none_or(|b| i.id < b))
                .cloned()
                .collect();
            page.sort_by_key(|i| std::cmp::Reverse(i.id));
            page.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
            page
        })
    }
}

/// An in-memory [`ObjectStore`], as S3 behaves: a wrong SHA-256 stores
/// nothing, an object reads back streamed (in chunks of
/// [`InMemoryObjectStore::CHUNK`]) with its content type and a quoted
/// MD5 ETag, and deleting nothing is no error. It can be made to be away
/// (`UNAVAILABLE`); it is its own readiness probe.
#[derive(Debug, Default)]
pub struct InMemoryObjectStore {
    objects: Mutex<HashMap<String, Object>>,
    away: AtomicBool,
}

#[derive(Debug, Clone)]
struct Object {
    bytes: bytes::Bytes,
    content_type: String,
    etag: String,
}

impl InMemoryObjectStore {
    /// The size of the chunks an object is read back in.
    pub const CHUNK: usize = 16 * 1024;

    /// While away, every call is `UNAVAILABLE` and nothing changes.
    pub fn set_away(&self, away: bool) {
        self.away.store(away, Ordering::SeqCst);
    }

    /// Every key, sorted.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .objects
            .lock()
            .map(|objects| objects.keys().cloned().collect())
            .unwrap_or_default();
        keys.sort();
        keys
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<String, Object>) -> T) -> Result<T, Error> {
        if self.away.load(Ordering::SeqCst) {
            return Err(Error::unavailable("the in-memory object store is away"));
        }
        let mut objects = self
            .objects
            .lock()
            .map_err(|_| Error::internal("in-memory object store poisoned"))?;
        Ok(f(&mut objects))
    }
}

fn hex(digest: &[u8]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// An object's bytes, handed out a chunk at a time.
struct Chunks(bytes::Bytes);

impl futures_core::Stream for Chunks {
    type Item = Result<bytes::Bytes, Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let rest = &mut self.0;
        if rest.is_empty() {
            return std::task::Poll::Ready(None);
        }
        let chunk = rest.split_to(rest.len().min(InMemoryObjectStore::CHUNK));
        std::task::Poll::Ready(Some(Ok(chunk)))
    }
}

#[async_trait]
impl ObjectStore for InMemoryObjectStore {
    async fn put(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        content_type: &str,
        sha256: Option<&str>,
    ) -> Result<(), Error> {
        use sha2::Digest;
        if let Some(claimed) = sha256
            && claimed != hex(&sha2::Sha256::digest(&bytes))
        {
            // What S3 answers (XAmzContentSHA256Mismatch) is not an outage.
            return Err(Error::internal(format!(
                "the payload's SHA-256 is not {claimed}; {key} not stored"
            )));
        }
        let etag = format!("\"{}\"", hex(&md5::Md5::digest(&bytes)));
        self.with(|objects| {
            objects.insert(
                key.to_owned(),
                Object {
                    bytes,
                    content_type: content_type.to_owned(),
                    etag,
                },
            );
        })
    }

    async fn get(&self, key: &str) -> Result<Option<StoredObject>, Error> {
        let Some(object) = self.with(|objects| objects.get(key).cloned())? else {
            return Ok(None);
        };
        Ok(Some(StoredObject {
            content_type: object.content_type,
            length: object.bytes.len() as u64,
            etag: Some(object.etag),
            body: Box::pin(Chunks(object.bytes)),
        }))
    }

    async fn exists(&self, key: &str) -> Result<bool, Error> {
        self.with(|objects| objects.contains_key(key))
    }

    async fn delete(&self, key: &str) -> Result<(), Error> {
        self.with(|objects| {
            objects.remove(key);
        })
    }
}

#[async_trait]
impl DependencyProbe for InMemoryObjectStore {
    fn name(&self) -> &'static str {
        "s3"
    }

    async fn probe(&self) -> Result<std::time::Duration, Error> {
        self.with(|_| std::time::Duration::ZERO)
    }
}

#[cfg(test)]
mod tests {
    //! Each fake against its port's contract: the behaviours hub-store's
    //! tests check of the real implementations (store/tests/it), so the
    //! fakes cannot drift from them silently.

    use time::Duration as Span;

    use super::*;
    use crate::images::{ImageQuota, ImageRepository, StoredImage};
    use crate::password::PasswordHasher;
    use crate::session::{ClientInfo, SessionEventKind};
    use crate::user::Password;

    fn t0() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn session(user: UserId, at: OffsetDateTime) -> Session {
        Session {
            id: SessionId::generate(),
            user_id: user,
            created_at: at,
            expires_at: at + Span::hours(1),
            last_seen_at: at,
            revoked_at: None,
            client: ClientInfo::default(),
        }
    }

    fn opened(session: &Session) -> SessionEvent {
        SessionEvent::new(SessionEventKind::Opened, session, session.created_at)
    }

    async fn user(users: &InMemoryUsers, name: &str) -> UserId {
        let username = Username::parse(name).unwrap();
        let password = Password::parse("correct horse", &username).unwrap();
        let id = UserId::generate();
        users
            .insert(NewUser {
                id,
                email: Email::parse(&format!("{name}@example.com")).unwrap(),
                password_hash: PasswordHasher::insecure_for_tests(1)
                    .hash(&password)
                    .unwrap(),
                username,
                role: Role::User,
                created_at: t0(),
                created_by: None,
            })
            .await
            .unwrap();
        id
    }

    // ---- ImageRepository (store/tests/it/images.rs) ----

    fn image(owner: UserId, n: u32, size: u64) -> StoredImage {
        StoredImage {
            id: Uuid::now_v7(),
            owner_id: owner,
            key: format!("users/{owner}/{n:032x}.png"),
            content_type: "image/png".into(),
            size_bytes: size,
            width: 10,
            height: 10,
            sha256: format!("{n:064x}"),
            created_at: t0(),
        }
    }

    fn quota(max_images: u64, max_bytes: u64) -> ImageQuota {
        ImageQuota {
            max_images,
            max_bytes,
            ..ImageQuota::default()
        }
    }

    #[tokio::test]
    async fn an_image_is_stored_once_and_within_the_quota() {
        let repo = InMemoryImages::default();
        let alice = UserId::generate();
        let limits = quota(2, 1_000);
        let first = image(alice, 1, 400);
        assert_eq!(repo.insert(&first, &limits).await.unwrap(), first);
        assert_eq!(
            repo.find_by_hash(alice, &first.sha256).await.unwrap(),
            Some(first.clone())
        );
        assert_eq!(
            repo.find_by_hash(UserId::generate(), &first.sha256)
                .await
                .unwrap(),
            None
        );
        let again = StoredImage {
            id: Uuid::now_v7(),
            ..first.clone()
        };
        assert_eq!(
            repo.insert(&again, &limits).await.unwrap(),
            first,
            "the row that was there"
        );
        let too_big = repo
            .insert(&image(alice, 2, 601), &limits)
            .await
            .unwrap_err();
        assert_eq!(too_big.code(), ErrorCode::QuotaExceeded);
        assert!(
            too_big.to_string().contains("1 images and 400 bytes"),
            "{too_big}"
        );
        repo.insert(&image(alice, 3, 600), &limits).await.unwrap();
        let too_many = repo.insert(&image(alice, 4, 1), &limits).await.unwrap_err();
        assert_eq!(too_many.code(), ErrorCode::QuotaExceeded);
        // The same image again is no new image, so a full quota lets it by.
        assert_eq!(repo.insert(&again, &limits).await.unwrap(), first);
        assert_eq!(repo.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_uploads_cannot_pass_the_quota() {
        let repo = Arc::new(InMemoryImages::default());
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let limits = quota(3, u64::MAX);
        let calls: Vec<_> = (0..12)
            .map(|n| {
                let repo = Arc::clone(&repo);
                tokio::spawn(async move { repo.insert(&image(alice, 100 + n, 10), &limits).await })
            })
            .collect();
        let mut stored = 0;
        for call in calls {
            match call.await.unwrap() {
                Ok(_) => stored += 1,
                Err(e) => assert_eq!(e.code(), ErrorCode::QuotaExceeded, "{e}"),
            }
        }
        assert_eq!(stored, 3);
        assert_eq!(repo.list(alice, None, 100).await.unwrap().len(), 3);
        repo.insert(&image(bob, 1, 10), &limits).await.unwrap();
    }

    #[tokio::test]
    async fn a_deleted_image_gives_its_place_back() {
        let repo = InMemoryImages::default();
        let alice = UserId::generate();
        let limits = quota(2, 1_000);
        let first = repo.insert(&image(alice, 1, 300), &limits).await.unwrap();
        repo.insert(&image(alice, 2, 200), &limits).await.unwrap();
        let full = repo.insert(&image(alice, 3, 1), &limits).await.unwrap_err();
        assert!(
            full.to_string().contains("2 images and 500 bytes"),
            "{full}"
        );
        assert!(repo.delete(first.id).unwrap());
        assert!(!repo.delete(first.id).unwrap(), "gone already");
        repo.insert(&image(alice, 3, 1), &limits)
            .await
            .expect("the deleted image's place came back");
        assert_eq!(repo.find_by_hash(alice, &first.sha256).await.unwrap(), None);
    }

    /// Pages of an owner's images, newest first, each image exactly once,
    /// and no other owner's.
    #[tokio::test]
    async fn listing_is_newest_first_in_pages() {
        let repo = InMemoryImages::default();
        let (alice, bob) = (UserId::generate(), UserId::generate());
        let limits = ImageQuota::default();
        let mut ids = Vec::new();
        for n in 0..7 {
            ids.push(repo.insert(&image(alice, n, 1), &limits).await.unwrap().id);
            repo.insert(&image(bob, n, 1), &limits).await.unwrap();
        }
        ids.reverse();
        let (mut seen, mut before) = (Vec::new(), None);
        loop {
            let page = repo.list(alice, before, 3).await.unwrap();
            assert!(page.len() <= 3);
            assert!(page.iter().all(|i| i.owner_id == alice));
            let Some(last) = page.last() else { break };
            before = Some(last.id);
            seen.extend(page.iter().map(|i| i.id));
        }
        assert_eq!(seen, ids);
    }

    // ---- ObjectStore (store/tests/it/s3.rs) ----

    fn sha256(bytes: &[u8]) -> String {
        use sha2::Digest;
        hex(&sha2::Sha256::digest(bytes))
    }

    async fn read_all(mut body: ByteStream) -> Vec<Vec<u8>> {
        let mut chunks = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| body.as_mut().poll_next(cx)).await {
            chunks.push(chunk.unwrap().to_vec());
        }
        chunks
    }

    #[tokio::test]
    async fn a_wrong_sha256_stores_nothing() {
        let store = InMemoryObjectStore::default();
        let bytes = bytes::Bytes::from_static(b"an image's bytes, sanitized");
        store
            .put("right", bytes.clone(), "image/png", Some(&sha256(&bytes)))
            .await
            .unwrap();
        assert!(store.exists("right").await.unwrap());
        let refused = store
            .put("wrong", bytes.clone(), "image/png", Some(&"0".repeat(64)))
            .await
            .unwrap_err();
        assert_eq!(refused.kind(), crate::ErrorKind::Internal, "not an outage");
        assert!(!store.exists("wrong").await.unwrap());
        store.put("plain", bytes, "image/png", None).await.unwrap();
        assert_eq!(store.keys(), ["plain", "right"]);
    }

    #[tokio::test]
    async fn an_object_reads_back_streamed_and_goes() {
        let store = InMemoryObjectStore::default();
        let bytes: Vec<u8> = (0..40 * 1024).map(|i| (i % 251) as u8).collect();
        store
            .put("k", bytes.clone().into(), "image/webp", None)
            .await
            .unwrap();
        let object = store.get("k").await.unwrap().unwrap();
        assert_eq!(object.content_type, "image/webp");
        assert_eq!(object.length, bytes.len() as u64);
        use sha2::Digest;
        let md5 = format!("\"{}\"", hex(&md5::Md5::digest(&bytes)));
        assert_eq!(object.etag.as_deref(), Some(md5.as_str()));
        let chunks = read_all(object.body).await;
        assert_eq!(chunks.len(), 3, "streamed, never all at once");
        assert!(chunks.iter().all(|c| c.len() <= InMemoryObjectStore::CHUNK));
        assert_eq!(chunks.concat(), bytes);
        // Replaced by a second put, then deleted; deleting nothing is fine.
        store
            .put("k", "new".into(), "image/png", None)
            .await
            .unwrap();
        let object = store.get("k").await.unwrap().unwrap();
        assert_eq!(read_all(object.body).await.concat(), b"new");
        store.delete("k").await.unwrap();
        assert!(!store.exists("k").await.unwrap());
        assert!(store.get("k").await.unwrap().is_none());
        store.delete("k").await.unwrap();
    }

    #[tokio::test]
    async fn an_object_store_that_is_away_is_unavailable() {
        let store = InMemoryObjectStore::default();
        store.set_away(true);
        let away = store
            .put("k", "x".into(), "image/png", None)
            .await
            .unwrap_err();
        assert_eq!(away.code(), ErrorCode::Unavailable);
        assert_eq!(
            store.probe().await.unwrap_err().code(),
            ErrorCode::Unavailable
        );
        store.set_away(false);
        assert!(!store.exists("k").await.unwrap(), "nothing was stored");
        assert!(store.probe().await.is_ok());
    }

    // ---- Outbox (sessions/tests/it/relay.rs, store/src/postgres/outbox.rs) ----

    /// Sessions whose outbox holds the openings of `n` sessions of alice,
    /// in the log's order (alice's `user.created` delivered and pruned).
    async fn outbox_with(n: i64) -> (InMemorySessions, Vec<SessionEvent>) {
        let users = Arc::new(InMemoryUsers::default());
        let alice = user(&users, "alice").await;
        let sessions = InMemorySessions::with_users(users);
        let outbox = sessions.outbox();
        let created = outbox.claim(10).await.unwrap();
        assert_eq!(created.events()[0].event.type_name(), "user.created");
        created.delivered(t0() - Span::hours(1)).await.unwrap();
        let far = OffsetDateTime::now_utc().max(t0()) + Span::days(1);
        assert_eq!(outbox.prune(far).await.unwrap(), 1);
        let start = t0();
        let events: Vec<SessionEvent> = (0..n)
            .map(|i| opened(&session(alice, start + Span::seconds(i))))
            .collect();
        for event in &events {
            let s = session(alice, event.at);
            sessions.open(&s, event).await.unwrap();
        }
        (sessions, events)
    }

    fn ids(claim: &dyn ClaimedEvents) -> Vec<Uuid> {
        claim.events().iter().map(|p| p.event.id()).collect()
    }

    fn ids_of(events: &[SessionEvent]) -> Vec<Uuid> {
        events.iter().map(|e| e.id).collect()
    }

    #[tokio::test]
    async fn claims_are_oldest_first_and_skip_what_another_holds() {
        let (sessions, events) = outbox_with(5).await;
        let outbox = sessions.outbox();
        let first = outbox.claim(2).await.unwrap();
        assert_eq!(ids(&*first), ids_of(&events[..2]), "oldest first");
        assert_eq!(
            first.events()[0].username.as_ref().map(Username::as_str),
            Some("alice"),
            "with the user's name"
        );
        let second = outbox.claim(10).await.unwrap();
        assert_eq!(ids(&*second), ids_of(&events[2..]), "the held ones skipped");
        assert!(outbox.claim(10).await.unwrap().events().is_empty());
        let backlog = outbox.backlog().await.unwrap();
        assert_eq!((backlog.pending, backlog.oldest), (5, Some(events[0].at)));
        drop(first);
        let again = outbox.claim(10).await.unwrap();
        assert_eq!(
            ids(&*again),
            ids_of(&events[..2]),
            "a dropped claim lets go"
        );
        again.delivered(t0()).await.unwrap();
        second.delivered(t0()).await.unwrap();
        assert!(outbox.claim(10).await.unwrap().events().is_empty());
        assert_eq!(outbox.backlog().await.unwrap(), Backlog::default());
    }

    #[tokio::test]
    async fn refused_events_count_attempts_and_are_quarantined_then_retried() {
        let (sessions, events) = outbox_with(3).await;
        let outbox = sessions.outbox();
        let (a, b, c) = (events[0].id, events[1].id, events[2].id);
        let claim = outbox.claim(10).await.unwrap();
        let why = || vec![(b, "refused by the activity log".to_owned())];
        assert_eq!(claim.settle(&[a], &why(), t0(), 2).await.unwrap(), 0);
        let backlog = outbox.backlog().await.unwrap();
        assert_eq!(
            (backlog.pending, backlog.quarantined),
            (2, 0),
            "b and c wait"
        );
        let claim = outbox.claim(10).await.unwrap();
        assert_eq!(ids(&*claim), [b, c]);
        assert_eq!(claim.settle(&[], &why(), t0(), 2).await.unwrap(), 1);
        let backlog = outbox.backlog().await.unwrap();
        assert_eq!((backlog.pending, backlog.quarantined), (1, 1));
        assert_eq!(backlog.oldest, Some(events[2].at));
        assert_eq!(
            outbox.quarantine_reason(b).as_deref(),
            Some("refused by the activity log")
        );
        assert_eq!(
            ids(&*outbox.claim(10).await.unwrap()),
            [c],
            "not claimed while quarantined"
        );
        assert_eq!(outbox.retry_quarantined().await.unwrap(), 1);
        assert_eq!(outbox.quarantine_reason(b), None);
        let claim = outbox.claim(10).await.unwrap();
        assert_eq!(ids(&*claim), [b, c]);
        // Its attempts start again: one refusal does not quarantine it.
        assert_eq!(claim.settle(&[c], &why(), t0(), 2).await.unwrap(), 0);
        assert_eq!(outbox.retry_quarantined().await.unwrap(), 0);
    }

    #[tokio::test]
    async fn pruning_deletes_only_what_was_delivered_before() {
        let (sessions, events) = outbox_with(4).await;
        let outbox = sessions.outbox();
        // Delivered an hour after they happened.
        let at = events[3].at + Span::hours(1);
        outbox.claim(3).await.unwrap().delivered(at).await.unwrap();
        assert_eq!(outbox.prune(at).await.unwrap(), 0, "not before `at`");
        assert_eq!(outbox.prune(at + Span::seconds(1)).await.unwrap(), 3);
        assert_eq!(
            ids_of(&sessions.events()),
            [events[3].id],
            "the pending one stays"
        );
        assert_eq!(outbox.backlog().await.unwrap().pending, 1);
    }

    #[tokio::test]
    async fn every_session_change_reaches_the_outbox() {
        let users = Arc::new(InMemoryUsers::default());
        let alice = user(&users, "alice").await;
        let sessions = InMemorySessions::with_users(users);
        let s = session(alice, t0());
        sessions.open(&s, &opened(&s)).await.unwrap();
        assert!(sessions.revoke(s.id, t0(), "logout").await.unwrap());
        let claim = sessions.outbox().claim(10).await.unwrap();
        let kinds: Vec<_> = claim.events().iter().map(|p| p.event.type_name()).collect();
        assert_eq!(kinds, ["user.created", "session.opened", "session.revoked"]);
        assert_eq!(claim.events()[2].event.data()["reason"], "logout");
    }

    // ---- ActivityLog (store/tests/it/mongo.rs) ----

    #[tokio::test]
    async fn an_event_is_recorded_once_however_often_it_is_delivered() {
        let log = InMemoryActivityLog::default();
        let event = opened(&session(UserId::generate(), t0()));
        let event = DomainEvent::from(event);
        assert!(log.record(&event, None).await.unwrap());
        assert!(
            !log.record(&event, None).await.unwrap(),
            "a repeat is not a second event"
        );
        assert_eq!(log.events().len(), 1);
    }

    #[tokio::test]
    async fn last_connection_only_moves_forward() {
        let log = InMemoryActivityLog::default();
        let user = UserId::generate();
        let alice = Username::parse("alice").unwrap();
        let start = t0();
        let newer = session(user, start + Span::seconds(10));
        let older = session(user, start);
        log.record(&opened(&newer).into(), Some(&alice))
            .await
            .unwrap();
        log.record(&opened(&older).into(), Some(&alice))
            .await
            .unwrap();
        let last = log.last_connection(user).await.unwrap().unwrap();
        assert_eq!((last.session_id, last.at), (newer.id, newer.created_at));
        assert_eq!(last.username, Some(alice.clone()));
        let later = newer.created_at + Span::seconds(5);
        log.record(
            &SessionEvent::new(SessionEventKind::Revoked, &newer, later).into(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(
            log.last_connection(user).await.unwrap().unwrap().at,
            newer.created_at,
            "a revocation is not a connection"
        );
        let touched = SessionEvent::new(SessionEventKind::Touched, &older, later);
        log.record(&touched.into(), None).await.unwrap();
        let last = log.last_connection(user).await.unwrap().unwrap();
        assert_eq!((last.session_id, last.at), (older.id, later));
        assert_eq!(
            last.username,
            Some(alice),
            "a missing name keeps the known one"
        );
        assert!(
            log.last_connection(UserId::generate())
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn a_batch_records_new_events_and_recognises_repeats() {
        let log = InMemoryActivityLog::default();
        let user = UserId::generate();
        let at = t0();
        let pending: Vec<PendingEvent> = (0..5)
            .map(|i| PendingEvent {
                position: i + 1,
                event: opened(&session(user, at + Span::seconds(i))).into(),
                username: Some(Username::parse("alice").unwrap()),
            })
            .collect();
        assert_eq!(log.record_batch(&pending[..2], at).await.unwrap(), 2);
        assert_eq!(log.record_batch(&pending, at).await.unwrap(), 3);
        assert_eq!(log.record_batch(&pending, at).await.unwrap(), 0);
        let recorded = log.events();
        assert_eq!(recorded.len(), 5);
        assert!(recorded.iter().all(|r| r.delivered_at == Some(at)));
        let last = log.last_connection(user).await.unwrap().unwrap();
        assert_eq!(
            (last.session_id, last.at),
            (
                pending[4].event.session_id().unwrap(),
                pending[4].event.at()
            )
        );
    }

    #[tokio::test]
    async fn an_activity_log_away_or_refusing_keeps_what_the_real_one_would() {
        let log = InMemoryActivityLog::default();
        let user = UserId::generate();
        let pending: Vec<PendingEvent> = (0..3)
            .map(|i| PendingEvent {
                position: i + 1,
                event: opened(&session(user, t0() + Span::seconds(i))).into(),
                username: None,
            })
            .collect();
        log.set_away(true);
        let away = log.record_batch(&pending, t0()).await.unwrap_err();
        assert_eq!(away.kind(), crate::ErrorKind::Unavailable);
        log.set_away(false);
        assert!(log.events().is_empty());
        log.refuse(pending[1].event.id());
        let refused = log.record_batch(&pending, t0()).await.unwrap_err();
        assert_ne!(
            refused.kind(),
            crate::ErrorKind::Unavailable,
            "a refusal, not an outage"
        );
        assert_eq!(
            log.events().len(),
            2,
            "the others were inserted (unordered)"
        );
        assert!(log.last_connection(user).await.unwrap().is_none());
        assert!(log.record(&pending[1].event, None).await.is_err());
        log.accept_all();
        assert_eq!(log.record_batch(&pending, t0()).await.unwrap(), 1);
    }
}

/// [`super::ReplayGuard`] in memory, for one process's tests.
#[derive(Debug, Default)]
pub struct InMemoryReplayGuard {
    seen: Mutex<HashMap<[u8; 32], OffsetDateTime>>,
}

#[async_trait]
impl super::ReplayGuard for InMemoryReplayGuard {
    async fn first_use(&self, key: [u8; 32], until: OffsetDateTime) -> Result<bool, Error> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let now = OffsetDateTime::now_utc();
        seen.retain(|_, expiry| *expiry > now);
        if seen.contains_key(&key) {
            return Ok(false);
        }
        seen.insert(key, until);
        Ok(true)
    }
}

/// OAuth clients and revoked tokens in memory.
#[derive(Debug, Default)]
pub struct InMemoryOAuthClients {
    state: Mutex<OAuthState>,
}

#[derive(Debug, Default)]
struct OAuthState {
    clients: Vec<crate::oauth::OAuthClient>,
    revoked: HashMap<Uuid, crate::oauth::ClientId>,
}

impl InMemoryOAuthClients {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, OAuthState>, Error> {
        self.state
            .lock()
            .map_err(|_| Error::internal("in-memory client store poisoned"))
    }
}

#[async_trait]
impl crate::oauth::OAuthClients for InMemoryOAuthClients {
    async fn create(&self, client: &crate::oauth::OAuthClient) -> Result<(), Error> {
        let mut state = self.lock()?;
        if state.clients.iter().any(|c| c.id == client.id) {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "duplicate client id",
            ));
        }
        state.clients.push(client.clone());
        Ok(())
    }

    async fn get(
        &self,
        id: &crate::oauth::ClientId,
    ) -> Result<Option<crate::oauth::OAuthClient>, Error> {
        let state = self.lock()?;
        Ok(state.clients.iter().find(|c| c.id == *id).cloned())
    }

    async fn list(&self) -> Result<Vec<crate::oauth::OAuthClient>, Error> {
        Ok(self.lock()?.clients.clone())
    }

    async fn delete(&self, id: &crate::oauth::ClientId) -> Result<bool, Error> {
        let mut state = self.lock()?;
        let before = state.clients.len();
        state.clients.retain(|c| c.id != *id);
        state.revoked.retain(|_, client| client != id);
        Ok(state.clients.len() < before)
    }

    async fn set_secret(
        &self,
        id: &crate::oauth::ClientId,
        secret: &crate::oauth::SecretDigest,
        now: OffsetDateTime,
    ) -> Result<bool, Error> {
        let mut state = self.lock()?;
        match state
            .clients
            .iter_mut()
            .find(|c| c.id == *id && c.secret.is_some())
        {
            Some(client) => {
                client.secret = Some(secret.clone());
                client.secret_rotated_at = Some(now);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn revoke_token(
        &self,
        client: &crate::oauth::ClientId,
        jti: Uuid,
        _expires_at: OffsetDateTime,
    ) -> Result<(), Error> {
        self.lock()?.revoked.insert(jti, client.clone());
        Ok(())
    }

    async fn grant_sessions(
        &self,
        _client: &crate::oauth::ClientId,
    ) -> Result<Vec<crate::session::SessionId>, Error> {
        // Grants live in the OpenID Connect store, which has no fake here.
        Ok(Vec::new())
    }

    async fn token_active(
        &self,
        client: &crate::oauth::ClientId,
        jti: Uuid,
        issued_at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let state = self.lock()?;
        let current = state
            .clients
            .iter()
            .any(|c| c.id == *client && c.secret_rotated_at.is_none_or(|at| at <= issued_at));
        Ok(current && !state.revoked.contains_key(&jti))
    }
}
