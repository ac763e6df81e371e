//! Ports: the narrow capabilities the use cases need from the outside world,
//! spoken in domain types only. hub-store implements them for real.

use async_trait::async_trait;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Error;
use crate::events::{DomainEvent, UserChange, UserEvent};
use crate::password::PasswordHash;
use crate::session::{Session, SessionEvent, SessionId};
use crate::user::{Email, Role, UserId, Username};

/// A user as stored.
#[derive(Debug, Clone)]
pub struct User {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub password_hash: PasswordHash,
    pub role: Role,
    /// False for an account deactivated (by a directory, over SCIM): it
    /// signs in nowhere and holds no session.
    pub active: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
}

/// What an import did with one user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportOutcome {
    Imported,
    UsernamePresent,
    EmailTaken,
}

/// A user about to be stored.
#[derive(Debug, Clone)]
pub struct NewUser {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub password_hash: PasswordHash,
    pub role: Role,
    pub created_at: OffsetDateTime,
    /// Who registered the user when not the user themself: an admin.
    pub created_by: Option<UserId>,
}

/// Where users live. Implementations map a unique-key violation to
/// `USERNAME_TAKEN` or `EMAIL_TAKEN` and a lost connection to `UNAVAILABLE`.
///
/// Every change is written with its event in the event log (see
/// [`crate::events`]), in one transaction: `insert` with `user.created`,
/// `update_email` with `user.email_changed`, an import with one
/// `users.imported` counting the users stored. A password changes only
/// through [`SessionRepository::change_credentials`], with the revocations
/// it brings. Replacing a hash by a stronger one of the same password (at
/// login) is no change to the user, and writes none.
#[async_trait]
pub trait UserRepository: Send + Sync + 'static {
    async fn insert(&self, user: NewUser) -> Result<User, Error>;
    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error>;
    async fn find_by_username(&self, username: &Username) -> Result<Option<User>, Error>;
    async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error>;
    /// Replaces the stored hash only while it is still `expected`, so a
    /// rehash at login never overwrites a password changed meanwhile; false
    /// when the hash had changed (or the user is gone).
    async fn replace_password_hash(
        &self,
        id: UserId,
        expected: &PasswordHash,
        hash: &PasswordHash,
    ) -> Result<bool, Error>;
    /// Stores imported users that are not there yet, all or nothing per
    /// call unless `dry_run` (then nothing is kept): what became of each, in
    /// order. A user whose username is taken is `UsernamePresent`; one whose
    /// username is free but whose email is someone's is `EmailTaken`.
    async fn import(&self, users: &[User], dry_run: bool) -> Result<Vec<ImportOutcome>, Error>;
    /// How many users still have an insecure imported hash.
    async fn count_insecure_hashes(&self) -> Result<u64, Error>;
    /// Changes the user's email; `EMAIL_TAKEN` when another user has it.
    async fn update_email(&self, id: UserId, email: &Email) -> Result<(), Error>;
    /// Up to `limit` users whose username or email starts with `prefix`
    /// (folded; empty matches everyone), by username, after the username
    /// `after`: the admin console's search, one page at a time.
    async fn search(
        &self,
        prefix: &str,
        after: Option<&Username>,
        limit: u32,
    ) -> Result<Vec<User>, Error>;
}

/// Where sessions live. Every change is written together with its outbox
/// event, in one transaction: either both happen or neither does.
#[async_trait]
pub trait SessionRepository: Send + Sync + 'static {
    /// Stores a new session with its `session.opened` event.
    async fn open(&self, session: &Session, event: &SessionEvent) -> Result<(), Error>;
    /// As [`Self::open`], only while `credential` is still the user's
    /// password hash and `role` their role, checked in the same
    /// transaction: a login that verified a password must not open a
    /// session after a change replaced it, nor one whose token would carry
    /// a role withdrawn meanwhile. False (and nothing stored) otherwise.
    async fn open_verified(
        &self,
        session: &Session,
        event: &SessionEvent,
        credential: &PasswordHash,
        role: Role,
    ) -> Result<bool, Error>;
    /// As [`Self::open`], only while the user's role is still `role` and,
    /// with a `parent`, while that session of the user is still open, all
    /// checked in the session's transaction: another device's session,
    /// opened from a token, must not outlive a change that revoked the
    /// token's session or withdrew its role. False (and nothing stored)
    /// otherwise. Implementations lock the user's row before any session
    /// row, as every revocation does, so a revocation either sees the new
    /// session or is seen by it.
    async fn open_beside(
        &self,
        parent: Option<SessionId>,
        session: &Session,
        event: &SessionEvent,
        role: Role,
    ) -> Result<bool, Error>;
    /// Applies `change` all at once or not at all: the new email and/or
    /// hash, and with a new hash the revocation of every other session (each
    /// with its event) and of every known device, in one transaction, after
    /// the new hash is stored.
    /// `INVALID_CREDENTIALS` when the stored hash is no longer the one the
    /// change was authorised with; `EMAIL_TAKEN` changes nothing. How many
    /// sessions were revoked.
    async fn change_credentials(&self, change: &CredentialChange) -> Result<u64, Error>;
    /// The session, if it exists and is neither revoked nor expired at `now`.
    /// Runs on every authenticated request: one indexed query.
    async fn find_open(&self, id: SessionId, now: OffsetDateTime)
    -> Result<Option<Session>, Error>;
    /// The open session and its user, in one round trip: what a request that
    /// needs the caller's profile asks on every call.
    async fn find_open_with_user(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<(Session, User)>, Error>;
    /// Revokes one open session with a `session.revoked` event; false when it
    /// was not open.
    async fn revoke(&self, id: SessionId, at: OffsetDateTime, reason: &str) -> Result<bool, Error>;
    /// Revokes every open session of `user` except `keep`, each with its
    /// event, and forgets the user's known devices (a "sign out everywhere"
    /// leaves no device trusted); how many sessions were revoked.
    async fn revoke_all(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: OffsetDateTime,
        reason: &str,
    ) -> Result<u64, Error>;
    /// Gives the user `role` and, in the same transaction, revokes every
    /// open session of the user (each with a `role_changed` event) and
    /// forgets their known devices: no token issued under the old role
    /// outlives the change, on any protocol or instance. A role that is
    /// already the user's changes nothing (0). Withdrawing the role of the
    /// last admin is `FORBIDDEN` ([`LAST_ADMIN`]), decided with every
    /// admin's row locked, so two admins withdrawing each other at once
    /// cannot leave none. `USER_NOT_FOUND` when no such user. How many
    /// sessions were revoked.
    async fn change_role(&self, user: UserId, role: Role, at: OffsetDateTime)
    -> Result<u64, Error>;
    /// The session in whatever state it is, if it exists.
    async fn find(&self, id: SessionId) -> Result<Option<Session>, Error>;
    /// One page of a user's sessions, newest first.
    async fn list(&self, user: UserId, query: &SessionQuery) -> Result<Vec<Session>, Error>;
    /// How many sessions `user` has open at `now`, counted up to `limit`:
    /// what a bound on open sessions asks, without reading them.
    async fn count_open(
        &self,
        user: UserId,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, Error> {
        let open = self
            .list(
                user,
                &SessionQuery {
                    include_closed: false,
                    now,
                    before: None,
                    limit,
                },
            )
            .await?;
        Ok(open.len())
    }
    /// Drops whatever this process remembers of `user`'s sessions and of
    /// the user (a cache): called after a change made elsewhere than
    /// through this repository (SCIM's deactivation, deletion and role
    /// changes) revoked them, so this process does not wait for the
    /// database's notification. Other processes hear the notification.
    fn forget_user(&self, _user: UserId) {}
    /// Stores `session`'s new `last_seen_at` and `expires_at` with its
    /// `session.touched` event, if it is still open at the event's time;
    /// false when it was not.
    async fn touch(&self, session: &Session, event: &SessionEvent) -> Result<bool, Error>;
}

/// A change of a user's credentials (see
/// [`SessionRepository::change_credentials`]).
#[derive(Debug, Clone)]
pub struct CredentialChange {
    pub user: UserId,
    /// The hash the change was authorised with (the current password checked).
    pub expected: PasswordHash,
    pub email: Option<Email>,
    pub password_hash: Option<PasswordHash>,
    /// With a new hash: the session that stays open (the one that asked).
    pub keep: Option<SessionId>,
    pub at: OffsetDateTime,
}

impl CredentialChange {
    /// The user events the change is written with, in this order.
    pub fn events(&self) -> Vec<UserEvent> {
        let mut events = Vec::with_capacity(2);
        if let Some(email) = &self.email {
            events.push(UserEvent::new(
                Some(self.user),
                self.at,
                UserChange::EmailChanged {
                    email: email.as_str().to_owned(),
                },
            ));
        }
        if self.password_hash.is_some() {
            events.push(UserEvent::new(
                Some(self.user),
                self.at,
                UserChange::PasswordChanged,
            ));
        }
        events
    }
}

impl From<NewUser> for User {
    /// The user as stored: not changed since it was created.
    fn from(new: NewUser) -> Self {
        Self {
            id: new.id,
            username: new.username,
            email: new.email,
            password_hash: new.password_hash,
            role: new.role,
            active: true,
            created_at: new.created_at,
            updated_at: new.created_at,
        }
    }
}

impl NewUser {
    /// The `user.created` event the user is stored with.
    pub fn created_event(&self) -> UserEvent {
        UserEvent::new(
            Some(self.id),
            self.created_at,
            UserChange::Created {
                username: self.username.as_str().to_owned(),
                email: self.email.as_str().to_owned(),
                role: self.role,
                by: self.created_by,
            },
        )
    }
}

/// Why a credential change revokes sessions, as their events record it.
pub const PASSWORD_CHANGED: &str = "password_changed";

/// Why a role change revokes sessions, as their events record it.
pub const ROLE_CHANGED: &str = "role_changed";

/// The refusal to withdraw the last admin's role.
pub const LAST_ADMIN: &str = "the last admin keeps the role: grant admin to someone else first";

/// The devices each user has signed in from, remembered server-side so a
/// device token counts only while its device is: a password change, a
/// role change and a "sign out everywhere" forget them all (see
/// [`SessionRepository`]), and each user keeps at most a bounded number.
#[async_trait]
pub trait KnownDevices: Send + Sync + 'static {
    /// Whether `device` is one of `user`'s remembered devices now.
    async fn is_known(&self, user: UserId, device: &str) -> Result<bool, Error>;
    /// Remembers a device of `user` as used at `at`: `shown` when it is
    /// still remembered (refreshed, never brought back once forgotten, so
    /// its old tokens stay dead), otherwise a new one with the id `fresh`.
    /// Then forgets the user's least recently used devices beyond `keep`.
    /// All only while `session` (the one the device just signed in with) is
    /// still open, so a revocation that forgot the user's devices is never
    /// undone by a login that raced it. The id remembered; `None` when the
    /// session was not open.
    async fn remember(
        &self,
        user: UserId,
        shown: Option<&str>,
        fresh: &str,
        session: SessionId,
        at: OffsetDateTime,
        keep: u32,
    ) -> Result<Option<String>, Error>;
}

/// Which of a user's sessions to list, and where the page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionQuery {
    /// Revoked and expired sessions too, not only the open ones.
    pub include_closed: bool,
    /// Open means not revoked and not expired at this time.
    pub now: OffsetDateTime,
    /// Only sessions older than this one (the previous page's last).
    pub before: Option<SessionId>,
    pub limit: u32,
}

/// An event of the log waiting for delivery to one subscriber, with its
/// user's name for the read side (none for an import's event, or when the
/// user has since been deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingEvent {
    /// Its position in the log (what `--after` and resumption take).
    pub position: i64,
    pub event: DomainEvent,
    pub username: Option<Username>,
}

/// How far behind delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Backlog {
    pub pending: u64,
    /// When the oldest undelivered event happened.
    pub oldest: Option<OffsetDateTime>,
    /// Events set aside because they could not be read; not pending.
    pub quarantined: u64,
}

/// One subscriber's queue of the event log (the outbox), as its relay sees
/// it: events claimed in the log's order, in batches, by one relay at a
/// time. Every subscriber has its own delivery state (delivered, attempts,
/// quarantine) for every event it subscribed to, so what one has or has not
/// taken changes nothing for another.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// Claims up to `limit` undelivered events, oldest first, skipping any
    /// another relay holds. The claim lasts until the batch is marked
    /// delivered or dropped; a dropped batch is claimable again.
    async fn claim(&self, limit: u32) -> Result<Box<dyn ClaimedEvents>, Error>;
    /// How many events wait, and since when.
    async fn backlog(&self) -> Result<Backlog, Error>;
    /// Deletes events older than `before` that every subscriber has had (or
    /// set aside); how many went.
    async fn prune(&self, before: OffsetDateTime) -> Result<u64, Error>;
    /// Puts every quarantined event back in line (once an operator has
    /// fixed what made it unreadable); how many.
    async fn retry_quarantined(&self) -> Result<u64, Error>;
}

/// A claimed batch of outbox events.
#[async_trait]
pub trait ClaimedEvents: Send {
    fn events(&self) -> &[PendingEvent];
    /// Marks the whole batch delivered at `at` and ends the claim.
    async fn delivered(self: Box<Self>, at: OffsetDateTime) -> Result<(), Error>;
    /// Ends the claim with the events `delivered` marked delivered at `at`
    /// and one more attempt counted on each `refused` one (with why); an
    /// event refused `max_attempts` times is quarantined with that reason.
    /// Every other claimed event stays pending. How many were quarantined.
    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        refused: &[(Uuid, String)],
        at: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, Error>;
}

/// Message ids seen, for replay protection: WS-Security's nonces. Shared by
/// every instance of the service, so a message replayed to another instance
/// is refused too.
#[async_trait]
pub trait ReplayGuard: Send + Sync + 'static {
    /// Records `key` as used until `until`: true the first time, false
    /// while an earlier record of it has not yet passed its own `until`.
    async fn first_use(&self, key: [u8; 32], until: OffsetDateTime) -> Result<bool, Error>;
}

/// The time, as the domain sees it.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> OffsetDateTime;
}

/// The system's wall clock, truncated to microseconds (what PostgreSQL keeps),
/// so a value read back equals the value written.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        let micros = now.microsecond();
        now.replace_microsecond(micros).unwrap_or(now)
    }
}

#[cfg(any(test, feature = "test-support"))]
pub mod memory;

/// When a user was last seen: the read model behind `/last-connection`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastConnection {
    pub user_id: UserId,
    pub username: Option<Username>,
    pub session_id: SessionId,
    pub at: OffsetDateTime,
}

/// What happened to sessions and users, and when each user was last seen:
/// the append-heavy, document-shaped side, kept apart from the source of
/// truth; the event log's first subscriber. Delivery may repeat, so
/// recording is idempotent by event id.
#[async_trait]
pub trait ActivityLog: Send + Sync + 'static {
    /// Records one event; `false` when it had been recorded already. An
    /// opening or touching event also moves the user's last connection
    /// forward (never back: events may arrive out of order).
    async fn record(&self, event: &DomainEvent, username: Option<&Username>)
    -> Result<bool, Error>;
    /// Records a batch delivered at `delivered_at`, as [`Self::record`] does
    /// one by one; how many were new (the rest had been recorded already).
    async fn record_batch(
        &self,
        events: &[PendingEvent],
        delivered_at: OffsetDateTime,
    ) -> Result<u64, Error> {
        let _ = delivered_at;
        let mut recorded = 0;
        for pending in events {
            if self
                .record(&pending.event, pending.username.as_ref())
                .await?
            {
                recorded += 1;
            }
        }
        Ok(recorded)
    }
    /// When the user was last seen, if ever.
    async fn last_connection(&self, user: UserId) -> Result<Option<LastConnection>, Error>;
}

/// Bytes as they arrive, never all held at once.
pub type ByteStream = std::pin::Pin<
    Box<dyn futures_core::Stream<Item = Result<bytes::Bytes, Error>> + Send + 'static>,
>;

/// An object read from the store: its stored metadata and its bytes.
pub struct StoredObject {
    pub content_type: String,
    pub length: u64,
    /// The store's entity tag, quotes included (`"abc..."`).
    pub etag: Option<String>,
    pub body: ByteStream,
}

impl std::fmt::Debug for StoredObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredObject")
            .field("content_type", &self.content_type)
            .field("length", &self.length)
            .field("etag", &self.etag)
            .finish_non_exhaustive()
    }
}

/// Where image bytes live (S3 or anything speaking its API). A store that
/// cannot be reached, or refuses our credentials, is `UNAVAILABLE`.
#[async_trait]
pub trait ObjectStore: Send + Sync + 'static {
    /// Stores `bytes` at `key` (replacing what was there). `sha256`, when
    /// the caller has it already (lower-case hex of `bytes`), spares the
    /// store hashing the bytes again (S3 signs the payload's SHA-256); a
    /// wrong one makes the store refuse the object.
    async fn put(
        &self,
        key: &str,
        bytes: bytes::Bytes,
        content_type: &str,
        sha256: Option<&str>,
    ) -> Result<(), Error>;
    /// The object at `key`, streamed; `None` when there is none.
    async fn get(&self, key: &str) -> Result<Option<StoredObject>, Error>;
    /// Whether an object is at `key`.
    async fn exists(&self, key: &str) -> Result<bool, Error>;
    /// Removes the object at `key`; no error when there is none.
    async fn delete(&self, key: &str) -> Result<(), Error>;
}

/// A backing service a use case depends on, as readiness checks and operators
/// see it: reachable or not, and how long one round trip took.
#[async_trait]
pub trait DependencyProbe: Send + Sync + 'static {
    /// A short stable name for logs and readiness details ("postgres").
    fn name(&self) -> &'static str;
    /// One cheap round trip; `UNAVAILABLE` when the service cannot be reached.
    async fn probe(&self) -> Result<std::time::Duration, Error>;
}
