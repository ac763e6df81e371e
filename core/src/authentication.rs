//! Signing in and out, and who a token speaks for: the same rules for every
//! protocol that carries a bearer token.

use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, ErrorCode};
use crate::password::PasswordHash;
use crate::ports::{
    Clock, CredentialChange, KnownDevices, SessionRepository, User, UserRepository,
};
use crate::session::{ClientInfo, Session, SessionEvent, SessionEventKind, SessionId};
use crate::token::{AppPrincipal, IssuedToken, KnownDevice, Principal, Tokens};
use crate::user::{Email, Password, UserId, Username};
use crate::work_pool::HashingPool;

/// How a user names themself at login.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginName {
    Username(String),
    Email(String),
}

/// What a login name counts against in attempt limits: a user, or the
/// canonical form of a name that is no one's.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AccountKey {
    User(UserId),
    Unknown(String),
}

impl AccountKey {
    pub fn user(&self) -> Option<UserId> {
        match self {
            AccountKey::User(id) => Some(*id),
            AccountKey::Unknown(_) => None,
        }
    }
}

impl std::fmt::Display for AccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccountKey::User(id) => write!(f, "user:{id}"),
            AccountKey::Unknown(name) => write!(f, "name:{name}"),
        }
    }
}

/// A successful login: the new session, its token, and the user.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    pub user: User,
    pub session: Session,
    pub token: IssuedToken,
}

/// A profile change; the password needs the current one.
#[derive(Clone, Default)]
pub struct ProfileChange {
    pub email: Option<String>,
    pub current_password: Option<String>,
    pub new_password: Option<String>,
}

impl std::fmt::Debug for ProfileChange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProfileChange")
            .field("email", &self.email)
            .field("password_change", &self.new_password.is_some())
            .finish()
    }
}

/// The authentication use case.
#[derive(Clone)]
pub struct Authentication {
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    hashing: HashingPool,
    tokens: Arc<Tokens>,
    clock: Arc<dyn Clock>,
    session_lifetime: Duration,
    /// Until when imported insecure hashes still log in (then refused).
    insecure_until: Option<time::OffsetDateTime>,
    devices: Arc<dyn KnownDevices>,
    /// How many devices each user keeps remembered (the most recently used).
    devices_per_user: u32,
}

/// Devices remembered per user unless configured otherwise.
pub const DEFAULT_DEVICES_PER_USER: u32 = 10;

impl std::fmt::Debug for Authentication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authentication")
            .field("session_lifetime", &self.session_lifetime)
            .finish_non_exhaustive()
    }
}

fn bad_credentials() -> Error {
    Error::new(ErrorCode::InvalidCredentials)
}

impl Authentication {
    pub fn new(
        users: Arc<dyn UserRepository>,
        sessions: Arc<dyn SessionRepository>,
        hashing: HashingPool,
        tokens: Arc<Tokens>,
        clock: Arc<dyn Clock>,
        session_lifetime: Duration,
        devices: Arc<dyn KnownDevices>,
    ) -> Self {
        Self {
            users,
            sessions,
            hashing,
            tokens,
            clock,
            session_lifetime,
            insecure_until: None,
            devices,
            devices_per_user: DEFAULT_DEVICES_PER_USER,
        }
    }

    /// Keeps at most `count` (at least 1) remembered devices per user.
    pub fn with_devices_per_user(mut self, count: u32) -> Self {
        self.devices_per_user = count.max(1);
        self
    }

    /// Lets imported insecure hashes (bare digests) log in, and so be
    /// upgraded, until `until`; after it, or without one, they are refused.
    pub fn with_insecure_until(mut self, until: Option<time::OffsetDateTime>) -> Self {
        self.insecure_until = until;
        self
    }

    pub fn tokens(&self) -> &Tokens {
        &self.tokens
    }

    /// The same keys, shared.
    pub fn tokens_arc(&self) -> Arc<Tokens> {
        Arc::clone(&self.tokens)
    }

    /// The user `id`, if any.
    pub async fn user(&self, id: UserId) -> Result<Option<User>, Error> {
        self.users.find_by_id(id).await
    }

    /// The session `id` and its user, while the session is open.
    pub async fn open_session_with_user(
        &self,
        id: SessionId,
    ) -> Result<Option<(Session, User)>, Error> {
        self.sessions
            .find_open_with_user(id, self.clock.now())
            .await
    }

    /// The app a token of an OpenID Connect grant speaks for: a valid app
    /// token whose session (the grant) is still open. `INVALID_TOKEN`
    /// otherwise, a user's own token included.
    pub async fn authenticate_app(&self, token: &str) -> Result<AppPrincipal, Error> {
        let app = self.tokens.verify_app(token, self.clock.now())?;
        self.ensure_open(&app.principal).await?;
        Ok(app)
    }

    /// A user's own token, or an app's that carries `scope`: what an
    /// endpoint an app may call on the user's behalf takes (`None`: any
    /// app's, for one that only ends the token's own session).
    pub async fn authenticate_for(
        &self,
        token: &str,
        scope: Option<&str>,
    ) -> Result<Principal, Error> {
        match self.authenticate(token).await {
            Ok(principal) => Ok(principal),
            Err(refused) if refused.code() == ErrorCode::InvalidToken => {
                let Ok(app) = self.authenticate_app(token).await else {
                    return Err(refused);
                };
                if let Some(scope) = scope {
                    app.require_scope(scope)?;
                }
                Ok(app.principal)
            }
            Err(e) => Err(e),
        }
    }

    /// How many sessions `user` has open, counted up to `limit`.
    pub async fn open_sessions(&self, user: UserId, limit: u32) -> Result<usize, Error> {
        self.sessions
            .count_open(user, self.clock.now(), limit)
            .await
    }

    /// Revokes the session `id` (its tokens stop everywhere); nothing when
    /// it was not open.
    pub async fn revoke_session(&self, id: SessionId, reason: &str) -> Result<(), Error> {
        if self.sessions.revoke(id, self.clock.now(), reason).await? {
            tracing::info!(session_id = %id, reason, "session revoked");
        }
        Ok(())
    }

    /// The device a device token shows, when its signature holds now, it
    /// names the user `account` resolves to, and that user still remembers
    /// the device: a password change, a role change and "sign out
    /// everywhere" forget every device, so tokens minted before them count
    /// for nothing.
    pub async fn known_device(
        &self,
        token: &str,
        account: &AccountKey,
    ) -> Result<Option<KnownDevice>, Error> {
        let Some(device) = self.tokens.verify_device(token, self.clock.now()) else {
            return Ok(None);
        };
        if account.user() != Some(device.user_id) {
            return Ok(None);
        }
        if !self
            .devices
            .is_known(device.user_id, &device.device)
            .await?
        {
            tracing::info!(user_id = %device.user_id, "a device token of a forgotten device was ignored");
            return Ok(None);
        }
        Ok(Some(device))
    }

    /// A device token for the user `signed_in` opened a session for, valid
    /// for `lifetime` from now. The device the login showed (`shown`, when
    /// it is this user's) keeps its id, and so its failure budget; any other
    /// gets a new id. The device is remembered only while that session is
    /// still open, so a change that revoked it (a password change landing
    /// meanwhile) leaves no device behind: then `None`.
    pub async fn device_token(
        &self,
        signed_in: &LoginOutcome,
        lifetime: Duration,
        shown: Option<&KnownDevice>,
    ) -> Result<Option<IssuedToken>, Error> {
        let user = signed_in.user.id;
        let shown = shown
            .filter(|shown| shown.user_id == user)
            .map(|shown| shown.device.as_str());
        let fresh = crate::token::new_device_id()?;
        let now = self.clock.now();
        let Some(device) = self
            .devices
            .remember(
                user,
                shown,
                &fresh,
                signed_in.session.id,
                now,
                self.devices_per_user,
            )
            .await?
        else {
            return Ok(None);
        };
        self.tokens
            .issue_device(user, &device, lifetime, now)
            .map(Some)
    }

    async fn find(&self, name: &LoginName) -> Result<Option<User>, Error> {
        // A name that cannot exist is an unknown user, not a different error:
        // the answer must not tell which names are valid.
        match name {
            LoginName::Username(raw) => match Username::parse(raw) {
                Ok(username) => self.users.find_by_username(&username).await,
                Err(_) => Ok(None),
            },
            // A name with an `@` is an email first, then a username: a
            // directory's user principal name (`alice@corp.example`) is a
            // username, and ports that take either in one field (the
            // console, SOAP's UsernameToken) cannot tell them apart.
            LoginName::Email(raw) => {
                if let Ok(email) = Email::parse(raw)
                    && let Some(user) = self.users.find_by_email(&email).await?
                {
                    return Ok(Some(user));
                }
                match Username::parse(raw) {
                    Ok(username) => self.users.find_by_username(&username).await,
                    Err(_) => Ok(None),
                }
            }
        }
    }

    /// The user `name` resolves to now, as the directory has it (no
    /// password checked): for a caller that re-checks a credential it
    /// verified earlier against the user's current hash.
    pub async fn user_named(&self, name: &LoginName) -> Result<Option<User>, Error> {
        self.find(name).await
    }

    /// Whether a stored hash still signs its user in: false for an imported
    /// insecure hash past `import.insecure_until`.
    pub fn accepts(&self, hash: &PasswordHash) -> bool {
        !hash.is_insecure()
            || self
                .insecure_until
                .is_some_and(|until| self.clock.now() <= until)
    }

    /// The account a login name counts against, for attempt limits: the
    /// user's id when the name (username or email) is someone's, so both
    /// names of one account share one budget; otherwise the name's
    /// canonical form (folded, at most 254 characters), so guesses at a
    /// name no one has are limited too. Never shown to the client.
    pub async fn account_key(&self, name: &LoginName) -> Result<AccountKey, Error> {
        if let Some(user) = self.find(name).await? {
            return Ok(AccountKey::User(user.id));
        }
        let (LoginName::Username(raw) | LoginName::Email(raw)) = name;
        let mut folded: String = raw.trim().chars().take(254).collect();
        folded.make_ascii_lowercase();
        Ok(AccountKey::Unknown(folded))
    }

    /// Checks `password` against the account `name` resolves to, with no
    /// session: the user, and the hash verified (or the stronger one it was
    /// raised to), for a caller that opens a session only while that hash
    /// is still the user's. A wrong password and an unknown user give the
    /// same `INVALID_CREDENTIALS` after the same work (a dummy verification).
    #[tracing::instrument(name = "verify_password", skip_all)]
    pub async fn verify_password(
        &self,
        name: LoginName,
        password: String,
    ) -> Result<(User, PasswordHash), Error> {
        let Some(user) = self.find(&name).await? else {
            self.hashing
                .run(move |hasher| hasher.verify_dummy(&password))
                .await?;
            return Err(bad_credentials());
        };
        if !self.accepts(&user.password_hash) {
            // The same answer and about the same time as a wrong password:
            // whether the password was right is not told.
            self.hashing
                .run(move |hasher| hasher.verify_dummy(&password))
                .await?;
            tracing::warn!(user_id = %user.id, "login refused: an insecure imported hash past import.insecure_until; the user needs a new password");
            return Err(bad_credentials());
        }
        let stored = user.password_hash.clone();
        let (verified, rehashed) = self
            .hashing
            .run(move |hasher| {
                let verified = hasher.verify(&password, &stored);
                let rehashed = (verified && hasher.needs_rehash(&stored))
                    .then(|| hasher.hash_secret(&password));
                (verified, rehashed)
            })
            .await?;
        if !verified {
            tracing::info!(user_id = %user.id, "login refused: wrong password");
            return Err(bad_credentials());
        }
        // Told only to whoever knows the password: an unknown client learns
        // nothing of the account from it.
        if !user.active {
            tracing::info!(user_id = %user.id, "login refused: the account is deactivated");
            return Err(Error::new(ErrorCode::AccountDisabled));
        }
        // The credential the session is opened under: the hash verified, or
        // the stronger one it was raised to.
        let mut credential = user.password_hash.clone();
        if let Some(rehashed) = rehashed {
            // A failed rehash must not fail the login: the old hash still works.
            match rehashed {
                Ok(hash) => match self
                    .users
                    .replace_password_hash(user.id, &user.password_hash, &hash)
                    .await
                {
                    Ok(true) => {
                        tracing::info!(user_id = %user.id, from = user.password_hash.scheme_name(), "password hash raised to current parameters");
                        credential = hash;
                    }
                    // Changed while this login hashed: the session below is
                    // refused, as the verified hash is no longer current.
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(user_id = %user.id, error = %e, "password rehash not stored")
                    }
                },
                Err(e) => tracing::warn!(user_id = %user.id, error = %e, "password rehash failed"),
            }
        }
        Ok((user, credential))
    }

    /// Checks the password and opens a session. A wrong password and an
    /// unknown user give the same `INVALID_CREDENTIALS` after the same work (a
    /// dummy verification). A stored hash below today's parameters is raised.
    #[tracing::instrument(name = "login", skip_all)]
    pub async fn login(
        &self,
        name: LoginName,
        password: String,
        client: ClientInfo,
    ) -> Result<LoginOutcome, Error> {
        let (user, credential) = self.verify_password(name, password).await?;
        self.open_verified_session(user, &credential, client).await
    }

    /// Opens a session for `user` whose password hash `credential` was
    /// verified (by [`Self::verify_password`], perhaps a step earlier),
    /// only while that hash is still the user's and the role the one read:
    /// a password change that lands meanwhile leaves it without a session.
    pub async fn open_verified_session(
        &self,
        user: User,
        credential: &PasswordHash,
        client: ClientInfo,
    ) -> Result<LoginOutcome, Error> {
        if !user.active {
            return Err(Error::new(ErrorCode::AccountDisabled));
        }
        let (session, event) = self.new_session(&user, client)?;
        if !self
            .sessions
            .open_verified(&session, &event, credential, user.role)
            .await?
        {
            tracing::info!(user_id = %user.id, "login refused: the password or the role changed while it was checked");
            return Err(bad_credentials());
        }
        let token = self.tokens.issue(user.id, user.role, &session, event.at)?;
        tracing::info!(user_id = %user.id, session_id = %session.id, "logged in");
        Ok(LoginOutcome {
            user,
            session,
            token,
        })
    }

    /// A session for `user` starting now, and its `session.opened` event.
    fn new_session(
        &self,
        user: &User,
        client: ClientInfo,
    ) -> Result<(Session, SessionEvent), Error> {
        let now = self.clock.now();
        let lifetime = time::Duration::try_from(self.session_lifetime)
            .map_err(|e| Error::internal(format!("session lifetime out of range: {e}")))?;
        let session = Session {
            id: SessionId::generate(),
            user_id: user.id,
            created_at: now,
            expires_at: now + lifetime,
            last_seen_at: now,
            revoked_at: None,
            client,
        };
        let event = SessionEvent::new(SessionEventKind::Opened, &session, now);
        Ok((session, event))
    }

    /// Opens a new session for `user` and signs its token: another device
    /// of a user signed in with the session `parent` (logins go through
    /// [`Self::login`]). Opened only while `parent` is still open and the
    /// user's role still the one read, checked in the new session's
    /// transaction; otherwise `INVALID_TOKEN`, as the parent's token is.
    pub async fn open_session(
        &self,
        user: &User,
        parent: Option<SessionId>,
        client: ClientInfo,
    ) -> Result<(Session, IssuedToken), Error> {
        let (session, event) = self.new_session(user, client)?;
        if !self
            .sessions
            .open_beside(parent, &session, &event, user.role)
            .await?
        {
            tracing::info!(user_id = %user.id, "another session refused: the session or the role changed meanwhile");
            return Err(Error::new(ErrorCode::InvalidToken));
        }
        let token = self.tokens.issue(user.id, user.role, &session, event.at)?;
        Ok((session, token))
    }

    /// Who `token` speaks for: a valid signature and claims, and a session
    /// that is still open. Anything else is `INVALID_TOKEN`.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, Error> {
        let now = self.clock.now();
        let principal = self.tokens.verify(token, now)?;
        match self.sessions.find_open(principal.session_id, now).await? {
            Some(session) if session.user_id == principal.user_id => Ok(principal),
            _ => {
                tracing::debug!(session_id = %principal.session_id, "token of a closed session");
                Err(Error::new(ErrorCode::InvalidToken))
            }
        }
    }

    /// The second half of [`Self::authenticate`], for a principal whose token
    /// was verified elsewhere (a gRPC interceptor, which cannot wait on a
    /// store): its session must still be open.
    pub async fn ensure_open(&self, principal: &Principal) -> Result<(), Error> {
        match self
            .sessions
            .find_open(principal.session_id, self.clock.now())
            .await?
        {
            Some(session) if session.user_id == principal.user_id => Ok(()),
            _ => Err(Error::new(ErrorCode::InvalidToken)),
        }
    }

    /// As [`Self::authenticate`], and the caller's user record, in one query.
    pub async fn authenticate_user(&self, token: &str) -> Result<(Principal, User), Error> {
        let now = self.clock.now();
        let principal = self.tokens.verify(token, now)?;
        match self
            .sessions
            .find_open_with_user(principal.session_id, now)
            .await?
        {
            Some((session, user)) if session.user_id == principal.user_id => Ok((principal, user)),
            _ => {
                tracing::debug!(session_id = %principal.session_id, "token of a closed session");
                Err(Error::new(ErrorCode::InvalidToken))
            }
        }
    }

    /// The principal's user, when an admin now (the directory's role, not
    /// the token's): for an entry point that must refuse before it reads a
    /// large request. `FORBIDDEN` with `what` otherwise.
    pub async fn require_admin(&self, principal: &Principal, what: &str) -> Result<User, Error> {
        crate::administration::require_admin(&*self.users, principal, what).await
    }

    /// Revokes the principal's session: its token stops working everywhere.
    pub async fn logout(&self, principal: &Principal) -> Result<(), Error> {
        self.sessions
            .revoke(principal.session_id, self.clock.now(), "logout")
            .await?;
        tracing::info!(user_id = %principal.user_id, session_id = %principal.session_id, "logged out");
        Ok(())
    }

    pub async fn profile(&self, principal: &Principal) -> Result<User, Error> {
        // A user deleted behind a live token: the token no longer stands for anyone.
        self.users
            .find_by_id(principal.user_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::InvalidToken))
    }

    /// The principal's user, once `current` is their password: for a
    /// change that takes effect later (an address to verify by mail).
    pub async fn check_current_password(
        &self,
        principal: &Principal,
        current: Option<String>,
    ) -> Result<User, Error> {
        let user = self.profile(principal).await?;
        let current = current.ok_or_else(|| {
            Error::with_message(
                ErrorCode::InvalidCredentials,
                "changing the email or the password needs current_password",
            )
        })?;
        let stored = user.password_hash.clone();
        let verified = self
            .hashing
            .run_for_account(principal.user_id, move |hasher| {
                hasher.verify(&current, &stored)
            })
            .await?;
        if !verified {
            return Err(bad_credentials());
        }
        Ok(user)
    }

    /// Changes email and/or password. A password change needs the current
    /// password and revokes every other session of the user.
    pub async fn update_profile(
        &self,
        principal: &Principal,
        change: ProfileChange,
    ) -> Result<User, Error> {
        let user = self.profile(principal).await?;
        let email = change.email.as_deref().map(Email::parse).transpose()?;
        let new_password = change
            .new_password
            .as_deref()
            .map(|p| Password::parse(p, &user.username))
            .transpose()?;
        if email.is_none() && new_password.is_none() {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "nothing to change: give email and/or new_password",
            ));
        }
        // Any change of a credential needs the current password: a bearer
        // token alone must not be enough to take an account over.
        let current = change.current_password.ok_or_else(|| {
            Error::with_message(
                ErrorCode::InvalidCredentials,
                "changing the email or the password needs current_password",
            )
        })?;
        let stored = user.password_hash.clone();
        let changes_password = new_password.is_some();
        let new_hash = self
            .hashing
            .run_for_account(principal.user_id, move |hasher| {
                hasher
                    .verify(&current, &stored)
                    .then(|| new_password.map(|p| hasher.hash(&p)).transpose())
            })
            .await?
            .ok_or_else(bad_credentials)??;
        // One transaction: the new email and hash, then the other sessions
        // revoked, so a failure (EMAIL_TAKEN) changes nothing and no session
        // opened with the old password survives.
        let revoked = self
            .sessions
            .change_credentials(&CredentialChange {
                user: user.id,
                expected: user.password_hash.clone(),
                email: email.filter(|e| *e != user.email),
                password_hash: new_hash,
                keep: Some(principal.session_id),
                at: self.clock.now(),
            })
            .await?;
        if changes_password {
            tracing::info!(user_id = %user.id, revoked, "password changed");
        } else {
            tracing::info!(user_id = %user.id, "email changed");
        }
        self.profile(principal).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::password::PasswordHasher;
    use crate::ports::SystemClock;
    use crate::ports::memory::{InMemorySessions, InMemoryUsers};
    use crate::registration::{RegisterUser, Registration};
    use crate::token::{KeySet, TokenSettings};
    use crate::work_pool::WorkPoolConfig;

    struct World {
        auth: Authentication,
        registration: Registration,
        users: Arc<InMemoryUsers>,
        sessions: Arc<InMemorySessions>,
    }

    fn world_with_iterations(iterations: u32) -> World {
        let users = Arc::new(InMemoryUsers::default());
        let sessions = Arc::new(InMemorySessions::with_users(users.clone()));
        let hashing = HashingPool::new(
            PasswordHasher::insecure_for_tests(iterations),
            WorkPoolConfig::default(),
        );
        let key = KeySet::generate().unwrap();
        let tokens = Arc::new(Tokens::new(
            KeySet::from_pem(&key.private_pem, &[]).unwrap(),
            TokenSettings {
                issuer: "polyhub".into(),
                audience: "polyhub-api".into(),
                lifetime: Duration::from_secs(900),
            },
        ));
        World {
            auth: Authentication::new(
                users.clone(),
                sessions.clone(),
                hashing.clone(),
                tokens,
                Arc::new(SystemClock),
                Duration::from_secs(3600),
                sessions.clone(),
            ),
            registration: Registration::new(users.clone(), hashing, Arc::new(SystemClock)),
            users,
            sessions,
        }
    }

    async fn alice(world: &World) -> User {
        world
            .registration
            .register(RegisterUser {
                username: "alice".into(),
                email: "alice@example.com".into(),
                password: "correct horse".into(),
            })
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn login_by_username_or_email_then_authenticate() {
        let world = world_with_iterations(10);
        let user = alice(&world).await;
        for name in [
            LoginName::Username("ALICE".into()),
            LoginName::Email("Alice@Example.com".into()),
        ] {
            let out = world
                .auth
                .login(name, "correct horse".into(), ClientInfo::default())
                .await
                .unwrap();
            assert_eq!(out.user.id, user.id);
            let principal = world.auth.authenticate(&out.token.token).await.unwrap();
            assert_eq!(principal.session_id, out.session.id);
            let (same, me) = world
                .auth
                .authenticate_user(&out.token.token)
                .await
                .unwrap();
            assert_eq!((same, me.id), (principal, user.id));
        }
        let kinds: Vec<_> = world.sessions.events().iter().map(|e| e.kind).collect();
        assert_eq!(kinds, [SessionEventKind::Opened, SessionEventKind::Opened]);
    }

    #[tokio::test]
    async fn wrong_password_unknown_user_and_impossible_name_look_the_same() {
        let world = world_with_iterations(10);
        alice(&world).await;
        for name in [
            LoginName::Username("alice".into()),
            LoginName::Username("nobody".into()),
            LoginName::Username("not a name!".into()),
            LoginName::Email("not-an-email".into()),
        ] {
            let err = world
                .auth
                .login(name, "wrong password".into(), ClientInfo::default())
                .await
                .unwrap_err();
            assert_eq!(err.code(), ErrorCode::InvalidCredentials);
            assert_eq!(
                err.message(),
                ErrorCode::InvalidCredentials.default_message()
            );
        }
    }

    #[tokio::test]
    async fn logout_kills_the_token() {
        let world = world_with_iterations(10);
        alice(&world).await;
        let out = world
            .auth
            .login(
                LoginName::Username("alice".into()),
                "correct horse".into(),
                ClientInfo::default(),
            )
            .await
            .unwrap();
        let principal = world.auth.authenticate(&out.token.token).await.unwrap();
        world.auth.logout(&principal).await.unwrap();
        assert_eq!(
            world
                .auth
                .authenticate(&out.token.token)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidToken
        );
        assert_eq!(
            world.sessions.events().last().unwrap().reason.as_deref(),
            Some("logout")
        );
    }

    #[tokio::test]
    async fn outdated_hashes_are_raised_at_login() {
        let weak = world_with_iterations(10);
        let user = alice(&weak).await;
        assert_eq!(user.password_hash.iterations(), 10);
        // The same stores, now behind a hasher with more iterations.
        let stronger = HashingPool::new(
            PasswordHasher::insecure_for_tests(20),
            WorkPoolConfig::default(),
        );
        let auth = Authentication {
            hashing: stronger,
            ..weak.auth.clone()
        };
        auth.login(
            LoginName::Username("alice".into()),
            "correct horse".into(),
            ClientInfo::default(),
        )
        .await
        .unwrap();
        let stored = weak.users.find_by_id(user.id).await.unwrap().unwrap();
        assert_eq!(stored.password_hash.iterations(), 20);
        assert!(
            auth.hashing
                .hasher()
                .verify("correct horse", &stored.password_hash)
        );
    }

    #[tokio::test]
    async fn password_change_needs_the_current_one_and_revokes_other_sessions() {
        let world = world_with_iterations(10);
        alice(&world).await;
        let login = || {
            world.auth.login(
                LoginName::Username("alice".into()),
                "correct horse".into(),
                ClientInfo::default(),
            )
        };
        let here = login().await.unwrap();
        let elsewhere = login().await.unwrap();
        let me = world.auth.authenticate(&here.token.token).await.unwrap();

        let no_current = ProfileChange {
            new_password: Some("battery staple".into()),
            ..ProfileChange::default()
        };
        assert_eq!(
            world
                .auth
                .update_profile(&me, no_current)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidCredentials
        );
        let wrong_current = ProfileChange {
            current_password: Some("nope nope".into()),
            new_password: Some("battery staple".into()),
            ..ProfileChange::default()
        };
        assert_eq!(
            world
                .auth
                .update_profile(&me, wrong_current)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidCredentials
        );
        let change = ProfileChange {
            current_password: Some("correct horse".into()),
            new_password: Some("battery staple".into()),
            email: Some("alice@new.example.com".into()),
        };
        let updated = world.auth.update_profile(&me, change).await.unwrap();
        assert_eq!(updated.email.as_str(), "alice@new.example.com");
        assert!(
            world.auth.authenticate(&here.token.token).await.is_ok(),
            "this session stays"
        );
        assert_eq!(
            world
                .auth
                .authenticate(&elsewhere.token.token)
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidToken
        );
        assert!(
            world
                .auth
                .login(
                    LoginName::Username("alice".into()),
                    "battery staple".into(),
                    ClientInfo::default()
                )
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn an_empty_profile_change_is_invalid() {
        let world = world_with_iterations(10);
        alice(&world).await;
        let out = world
            .auth
            .login(
                LoginName::Username("alice".into()),
                "correct horse".into(),
                ClientInfo::default(),
            )
            .await
            .unwrap();
        let me = world.auth.authenticate(&out.token.token).await.unwrap();
        assert_eq!(
            world
                .auth
                .update_profile(&me, ProfileChange::default())
                .await
                .unwrap_err()
                .code(),
            ErrorCode::InvalidRequest
        );
    }

    async fn login(world: &World, password: &str) -> Result<LoginOutcome, Error> {
        world
            .auth
            .login(
                LoginName::Username("alice".into()),
                password.into(),
                ClientInfo::default(),
            )
            .await
    }

    /// A device token counts while its device is remembered: a login that
    /// shows it keeps its id; a password change, a role change and "sign
    /// out everywhere" forget every device; each user keeps a bounded few.
    #[tokio::test]
    async fn device_tokens_are_bound_to_the_credential_and_bounded() {
        let world = world_with_iterations(10);
        let user = alice(&world).await;
        let account = AccountKey::User(user.id);
        let day = Duration::from_secs(86_400);
        let first = login(&world, "correct horse").await.unwrap();
        let token = world
            .auth
            .device_token(&first, day, None)
            .await
            .unwrap()
            .unwrap();
        let known = world
            .auth
            .known_device(&token.token, &account)
            .await
            .unwrap()
            .expect("a device just minted is known");
        // Not for another account.
        assert!(
            world
                .auth
                .known_device(&token.token, &AccountKey::Unknown("bob".into()))
                .await
                .unwrap()
                .is_none()
        );
        // Shown again at a login, the device keeps its id (and budget).
        let again = login(&world, "correct horse").await.unwrap();
        let renewed = world
            .auth
            .device_token(&again, day, Some(&known))
            .await
            .unwrap()
            .unwrap();
        let renewed = world
            .auth
            .known_device(&renewed.token, &account)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(renewed.device, known.device);

        // A password change forgets it.
        let me = world.auth.authenticate(&again.token.token).await.unwrap();
        world
            .auth
            .update_profile(
                &me,
                ProfileChange {
                    current_password: Some("correct horse".into()),
                    new_password: Some("battery staple".into()),
                    ..ProfileChange::default()
                },
            )
            .await
            .unwrap();
        assert!(
            world
                .auth
                .known_device(&token.token, &account)
                .await
                .unwrap()
                .is_none()
        );

        // A session revoked before the device is remembered leaves none.
        let raced = login(&world, "battery staple").await.unwrap();
        world
            .sessions
            .revoke(raced.session.id, time::OffsetDateTime::now_utc(), "test")
            .await
            .unwrap();
        assert!(
            world
                .auth
                .device_token(&raced, day, None)
                .await
                .unwrap()
                .is_none()
        );

        // At most the configured number stay remembered, the newest.
        let auth = world.auth.clone().with_devices_per_user(2);
        let mut minted = Vec::new();
        for _ in 0..3 {
            let out = login(&world, "battery staple").await.unwrap();
            minted.push(auth.device_token(&out, day, None).await.unwrap().unwrap());
        }
        let mut known = Vec::new();
        for token in &minted {
            known.push(
                auth.known_device(&token.token, &account)
                    .await
                    .unwrap()
                    .is_some(),
            );
        }
        assert_eq!(known, [false, true, true]);

        // Sign out everywhere forgets them too.
        world
            .sessions
            .revoke_all(user.id, None, time::OffsetDateTime::now_utc(), "test")
            .await
            .unwrap();
        assert!(
            auth.known_device(&minted[2].token, &account)
                .await
                .unwrap()
                .is_none()
        );
    }
}
