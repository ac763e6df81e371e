//! Signing in, signing up and changing a credential as ONE use case, with
//! its attempt budgets: every entry point (the JSON API, the account
//! console, and later OIDC or SOAP's WS-Security) gets the same answers and
//! spends the same budgets, so no port is a cheaper place to guess a
//! password.
//!
//! A sign-in goes: the client's budget, then the account the name resolves
//! to, then the device the client shows (a device token from an earlier
//! sign-in), then the account's budget unless that device is known and not
//! locked, then the credential, then the session and a device token for the
//! next time. The budgets themselves live behind ports ([`LoginBudgets`],
//! [`AccountBudgets`]): they are per-process state with a rate limiter
//! behind them, which hub-core does not hold.
//!
//! Anyone can spend an account's budget, so anyone could lock its owner
//! out. A device that has signed in to the account before shows the device
//! token it was given then (OWASP's device cookie): it does not spend the
//! account's budget, only its own budget of failures; past that it counts
//! as unknown again until the budget refills.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::authentication::{AccountKey, Authentication, LoginName, LoginOutcome, ProfileChange};
use crate::error::{Error, ErrorCode};
use crate::factors::{Answer, Challenge, Factors};
use crate::ports::User;
use crate::recovery::Recovery;
use crate::registration::{RegisterUser, Registration};
use crate::session::ClientInfo;
use crate::token::{IssuedToken, Principal};
use crate::user::{Email, Role, UserId};
use crate::verified::VerifiedPasswords;

/// The login budgets: per client, per account, and the failures of each
/// known device. One per process, shared by every port that signs users in.
pub trait LoginBudgets: Send + Sync {
    /// Spends one attempt of `client`'s budget; when it is empty, how long
    /// until it has room.
    fn check_client(&self, client: IpAddr) -> Result<(), Duration>;
    /// Spends one attempt on `account` from a device it does not know; when
    /// its budget is empty, how long until it has room.
    fn check_account(&self, account: &AccountKey) -> Result<(), Duration>;
    /// Whether a known device has used up its failure budget (it then counts
    /// as unknown).
    fn device_locked(&self, device: &str) -> bool;
    /// Counts one failed attempt from a known device.
    fn device_failed(&self, device: &str);
}

/// The budgets of the other requests that cost a password hash:
/// registrations per client, and checks of a signed-in user's current
/// password per client and per account.
pub trait AccountBudgets: Send + Sync {
    /// Spends one registration of `client`'s budget.
    fn register(&self, client: IpAddr) -> Result<(), Duration>;
    /// Spends one current-password check of `client`'s budget and of
    /// `user`'s, so neither one address nor one stolen token makes the
    /// check a guessing oracle.
    fn password_check(&self, client: IpAddr, user: UserId) -> Result<(), Duration>;
}

/// What a client proves itself with at the first step. One kind today (a
/// second factor answers the second step, [`SecondStep`]); a client secret
/// would become a variant checked in
/// [`SignIn::sign_in`], behind the same budgets.
#[derive(Clone)]
#[non_exhaustive]
pub enum Credential {
    Password(String),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Password(_) => f.write_str("Password(<redacted>)"),
        }
    }
}

/// One sign-in attempt as it arrives from any protocol.
#[derive(Debug, Clone)]
pub struct LoginAttempt {
    pub name: LoginName,
    pub credential: Credential,
    /// Kept with the session, so its owner can tell their devices apart.
    pub user_agent: Option<String>,
    /// The device token this client was given at an earlier sign-in, if it
    /// shows one (a cookie, a field): a hint, never a failure.
    pub device_token: Option<String>,
}

/// A sign-in that passed every budget: the session, and a device token for
/// this client's next sign-in, which each port hands over its own way (a
/// cookie, a field). No device token when the device could not be
/// remembered; the sign-in stands.
#[derive(Debug)]
pub struct SignedIn {
    pub outcome: LoginOutcome,
    pub device_token: Option<IssuedToken>,
}

/// Where a sign-in stands after the password: done, or waiting for a
/// second factor (the account has one, or must set one up).
#[derive(Debug)]
pub enum SignInStep {
    Done(Box<SignedIn>),
    SecondFactor(Challenge),
}

impl SignInStep {
    /// The sign-in, when no second step is needed.
    pub fn signed_in(self) -> Option<SignedIn> {
        match self {
            SignInStep::Done(signed_in) => Some(*signed_in),
            SignInStep::SecondFactor(_) => None,
        }
    }
}

/// The second step of a sign-in, as it arrives from any protocol.
#[derive(Clone)]
pub struct SecondStep {
    /// The ticket the first step gave.
    pub ticket: String,
    /// A TOTP code, a recovery code, or a passkey's answer.
    pub answer: Answer,
    pub user_agent: Option<String>,
    pub device_token: Option<String>,
}

impl std::fmt::Debug for SecondStep {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecondStep(<redacted>)")
    }
}

/// A sign-in completed by its second step: as [`SignedIn`], with the
/// recovery codes made when the step set up the account's first factor
/// (shown once).
#[derive(Debug)]
pub struct SecondStepDone {
    pub signed_in: SignedIn,
    pub recovery_codes: Option<Vec<String>>,
}

/// Registration with its per-client budget: what every port that registers
/// calls (SOAP's RegisterUser, which serves without token keys, included),
/// so one client's registrations spend one budget whichever port carries
/// them. [`SignIn::sign_up`] is this, for the ports that sign in too.
#[derive(Clone)]
pub struct SignUp {
    registration: Registration,
    budgets: Arc<dyn AccountBudgets>,
}

impl std::fmt::Debug for SignUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignUp").finish_non_exhaustive()
    }
}

impl SignUp {
    pub fn new(registration: Registration, budgets: Arc<dyn AccountBudgets>) -> Self {
        Self {
            registration,
            budgets,
        }
    }

    /// Registers a user, within `from`'s registration budget; a request
    /// whose client is unknown (no peer address) is registered without one.
    pub async fn sign_up(
        &self,
        from: Option<IpAddr>,
        request: RegisterUser,
    ) -> Result<User, Error> {
        if let Some(from) = from {
            self.budgets
                .register(from)
                .map_err(Error::too_many_attempts)?;
        }
        self.registration.register(request).await
    }

    /// Registers a user with `role` for the authenticated admin `by` (a
    /// provisioning system), whom the `user.created` event names: no
    /// per-client budget, as the caller is known and answerable. The caller
    /// checks that `by` is an admin.
    pub async fn provision(
        &self,
        request: RegisterUser,
        role: Role,
        by: UserId,
    ) -> Result<User, Error> {
        self.registration.register_by(request, role, by).await
    }
}

/// The sign-in use case.
#[derive(Clone)]
pub struct SignIn {
    authentication: Authentication,
    registration: Registration,
    logins: Arc<dyn LoginBudgets>,
    budgets: Arc<dyn AccountBudgets>,
    /// How long a device token (and so the device's standing) lasts.
    device_lifetime: Duration,
    /// Passwords verified a moment ago, for the ports that send one on
    /// every call ([`Self::verify_password`]).
    verified: Arc<VerifiedPasswords>,
    /// Second factors; without them, a password is the whole sign-in.
    factors: Option<Factors>,
    /// Mail: new-device notices, and addresses verified before they count.
    recovery: Option<Recovery>,
}

/// A profile change as it stands: the user now, and the address waiting
/// for its link to be followed, when mail verifies new addresses.
#[derive(Debug)]
pub struct ProfileChanged {
    pub user: User,
    pub email_pending: Option<String>,
}

impl std::fmt::Debug for SignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignIn")
            .field("device_lifetime", &self.device_lifetime)
            .finish_non_exhaustive()
    }
}

impl SignIn {
    pub fn new(
        authentication: Authentication,
        registration: Registration,
        logins: Arc<dyn LoginBudgets>,
        budgets: Arc<dyn AccountBudgets>,
        device_lifetime: Duration,
    ) -> Self {
        Self {
            authentication,
            registration,
            logins,
            budgets,
            device_lifetime,
            verified: Arc::new(VerifiedPasswords::disabled()),
            factors: None,
            recovery: None,
        }
    }

    /// Mails notices of sign-ins from new devices, and has new addresses
    /// verified by mail before they become the account's (when mail is on).
    pub fn with_recovery(mut self, recovery: Recovery) -> Self {
        self.recovery = Some(recovery);
        self
    }

    /// "Forgot password?" for `email`, within `from`'s login budget (each
    /// request may cost a mail): the same answer whoever asks
    /// ([`Recovery::forgot`]).
    pub fn forgot_password(&self, from: IpAddr, email: &str) -> Result<(), Error> {
        let Some(recovery) = &self.recovery else {
            return Err(Error::new(ErrorCode::MailDisabled));
        };
        if let Err(wait) = self.logins.check_client(from) {
            tracing::warn!(client_ip = %from, "password reset requests limited for this client");
            return Err(Error::too_many_attempts(wait));
        }
        recovery.forgot(email)
    }

    /// The recovery use case, when configured.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
    }

    /// Asks for a second factor of the accounts that have one.
    pub fn with_factors(mut self, factors: Factors) -> Self {
        self.factors = Some(factors);
        self
    }

    /// The second-factor use case, when configured.
    pub fn factors(&self) -> Option<&Factors> {
        self.factors.as_ref()
    }

    /// Remembers verified passwords in `verified` (one per process), so
    /// [`Self::verify_password`] does not hash on every call.
    pub fn with_verified_passwords(mut self, verified: Arc<VerifiedPasswords>) -> Self {
        self.verified = verified;
        self
    }

    /// Signs `from` in: the client's budget, then the account's unless the
    /// client shows a device the account knows, then the credential. A
    /// refusal by a budget is `TOO_MANY_ATTEMPTS` with the wait; a wrong
    /// credential `INVALID_CREDENTIALS`, whoever asked. An account with a
    /// second factor gets, for the right password, a ticket for
    /// [`Self::complete`] instead of a session.
    #[tracing::instrument(name = "sign_in", skip_all)]
    pub async fn sign_in(&self, from: IpAddr, attempt: LoginAttempt) -> Result<SignInStep, Error> {
        let LoginAttempt {
            name,
            credential,
            user_agent,
            device_token,
        } = attempt;
        if let Err(wait) = self.logins.check_client(from) {
            tracing::warn!(client_ip = %from, "login attempts limited for this client");
            return Err(Error::too_many_attempts(wait));
        }
        // By account, not by the string typed: a username and an email of
        // one user share one budget.
        let account = self.authentication.account_key(&name).await?;
        // A device that signed in to this account before, and that the
        // account still remembers, spends its own failures, not the
        // account's budget, so guesses from elsewhere cannot lock the owner
        // out.
        let shown = match device_token.as_deref() {
            Some(token) => self.authentication.known_device(token, &account).await?,
            None => None,
        };
        let known = shown
            .as_ref()
            .filter(|device| !self.logins.device_locked(&device.device));
        if known.is_none() {
            self.check_account(from, &account)?;
        }
        let client = ClientInfo::new(Some(from), user_agent.as_deref());
        let verified = match self.check(name, credential).await {
            Ok(verified) => verified,
            Err(e) => {
                if let Some(device) = known
                    && e.code() == ErrorCode::InvalidCredentials
                {
                    self.logins.device_failed(&device.device);
                }
                return Err(e);
            }
        };
        let (user, credential) = verified;
        if let Some(factors) = &self.factors
            && let Some(challenge) = factors.challenge(&user, &credential).await?
        {
            return Ok(SignInStep::SecondFactor(challenge));
        }
        let outcome = self
            .authentication
            .open_verified_session(user, &credential, client)
            .await?;
        Ok(SignInStep::Done(Box::new(
            self.with_device(outcome, shown).await,
        )))
    }

    /// The second step of a sign-in: the ticket [`Self::sign_in`] gave and
    /// a TOTP or recovery code. The client's budget, then the ticket's
    /// tries and the account's wrong-code budget; then the session, opened
    /// only while the password verified at the first step is still the
    /// user's.
    #[tracing::instrument(name = "sign_in_second_step", skip_all)]
    pub async fn complete(&self, from: IpAddr, step: SecondStep) -> Result<SecondStepDone, Error> {
        let Some(factors) = &self.factors else {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        };
        if let Err(wait) = self.logins.check_client(from) {
            tracing::warn!(client_ip = %from, "login attempts limited for this client");
            return Err(Error::too_many_attempts(wait));
        }
        let passed = factors.pass(&step.ticket, &step.answer).await?;
        let Some(user) = self.authentication.user(passed.user_id).await? else {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        };
        let shown = match step.device_token.as_deref() {
            Some(token) => {
                self.authentication
                    .known_device(token, &AccountKey::User(user.id))
                    .await?
            }
            None => None,
        };
        let client = ClientInfo::new(Some(from), step.user_agent.as_deref());
        let outcome = self
            .authentication
            .open_verified_session(user, &passed.credential, client)
            .await?;
        Ok(SecondStepDone {
            signed_in: self.with_device(outcome, shown).await,
            recovery_codes: passed.recovery_codes,
        })
    }

    /// The principal's user once `password` is theirs, within the
    /// current-password budgets: the fresh proof a change of the account's
    /// factors asks for, so a stolen session or token alone cannot replace
    /// them.
    pub async fn confirm_password(
        &self,
        from: IpAddr,
        principal: &Principal,
        password: Option<String>,
    ) -> Result<User, Error> {
        self.budgets
            .password_check(from, principal.user_id)
            .map_err(Error::too_many_attempts)?;
        self.authentication
            .check_current_password(principal, password)
            .await
    }

    /// Spends one attempt of `from`'s login budget: for a step that costs
    /// the server before any name is known (a passkey sign-in's options).
    pub fn spend_client(&self, from: IpAddr) -> Result<(), Error> {
        self.logins.check_client(from).map_err(|wait| {
            tracing::warn!(client_ip = %from, "login attempts limited for this client");
            Error::too_many_attempts(wait)
        })
    }

    /// Signs in with a passkey and no password: its answer to the ceremony
    /// `ceremony` ([`crate::passkeys::Passkeys::begin_sign_in`]), within
    /// the client's budget. A passkey that verified its user is a second
    /// factor in itself: no further step.
    #[tracing::instrument(name = "sign_in_with_passkey", skip_all)]
    pub async fn sign_in_with_passkey(
        &self,
        from: IpAddr,
        ceremony: uuid::Uuid,
        answer: &str,
        user_agent: Option<String>,
        device_token: Option<String>,
    ) -> Result<SignedIn, Error> {
        let Some(passkeys) = self.factors.as_ref().and_then(Factors::passkeys) else {
            return Err(Error::new(ErrorCode::InvalidPasskey));
        };
        if let Err(wait) = self.logins.check_client(from) {
            tracing::warn!(client_ip = %from, "login attempts limited for this client");
            return Err(Error::too_many_attempts(wait));
        }
        let user_id = passkeys.finish_sign_in(ceremony, answer).await?;
        let Some(user) = self.authentication.user(user_id).await? else {
            return Err(Error::new(ErrorCode::InvalidPasskey));
        };
        let shown = match device_token.as_deref() {
            Some(token) => {
                self.authentication
                    .known_device(token, &AccountKey::User(user.id))
                    .await?
            }
            None => None,
        };
        let client = ClientInfo::new(Some(from), user_agent.as_deref());
        // No password was verified: the session stands while the hash read
        // now is the user's, as a password change ends it anyway.
        let credential = user.password_hash.clone();
        let outcome = self
            .authentication
            .open_verified_session(user, &credential, client)
            .await?;
        tracing::info!(user_id = %outcome.user.id, "signed in with a passkey");
        Ok(self.with_device(outcome, shown).await)
    }

    /// For a ticket whose account must set up an authenticator first
    /// (`auth.require_mfa_for_admins`): the secret to show; its first code
    /// completes the sign-in through [`Self::complete`].
    pub async fn enrol(&self, ticket: &str) -> Result<crate::factors::TotpEnrolment, Error> {
        let Some(factors) = &self.factors else {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        };
        let user_id = factors.enrolling_user(ticket).await?;
        let Some(user) = self.authentication.user(user_id).await? else {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        };
        factors
            .pending_or_new(user.id, user.username.as_str())
            .await
    }

    /// The sign-in with a device token, so the next one from this device
    /// is known to the account; a device it knew already keeps its id, and
    /// with it its failure budget.
    async fn with_device(
        &self,
        outcome: LoginOutcome,
        shown: Option<crate::token::KnownDevice>,
    ) -> SignedIn {
        if shown.is_none()
            && let Some(recovery) = &self.recovery
        {
            recovery
                .new_device(outcome.user.id, &outcome.session.client)
                .await;
        }
        let device_token = match self
            .authentication
            .device_token(&outcome, self.device_lifetime, shown.as_ref())
            .await
        {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "no device token for this login");
                None
            }
        };
        SignedIn {
            outcome,
            device_token,
        }
    }

    /// Spends one attempt of `account`'s budget.
    fn check_account(&self, from: IpAddr, account: &AccountKey) -> Result<(), Error> {
        self.logins.check_account(account).map_err(|wait| {
            tracing::warn!(client_ip = %from, "login attempts limited for this account");
            Error::too_many_attempts(wait)
        })
    }

    /// The user `key` was verified for a moment ago, if it still counts: the
    /// map is asked first, so a key never verified costs no read.
    async fn remembered(
        &self,
        key: &crate::verified::CredentialKey,
        name: &LoginName,
    ) -> Result<Option<User>, Error> {
        if !self.verified.contains(key) {
            return Ok(None);
        }
        Ok(self.authentication.user_named(name).await?.filter(|user| {
            user.active
                && self.authentication.accepts(&user.password_hash)
                && self.verified.check(key, user.id, &user.password_hash)
        }))
    }

    /// Checks a password sent with a call, opening no session: for a
    /// protocol that authenticates every call (SOAP's WS-Security
    /// UsernameToken). A password verified a moment ago for the same name,
    /// against the hash the user still has, is answered from memory without
    /// a budget (see [`VerifiedPasswords`]); otherwise this is a sign-in's
    /// checks: the client's budget, the account's, the hash, one miss of a
    /// name and password at a time. The user as the directory has it now,
    /// so its role is never a stale one.
    ///
    /// An account with a second factor is refused with `MFA_REQUIRED`
    /// after the right password: a password alone does not speak for it.
    #[tracing::instrument(name = "verify_password", skip_all)]
    pub async fn verify_password(
        &self,
        from: IpAddr,
        name: LoginName,
        password: String,
    ) -> Result<User, Error> {
        let user = self.verify_password_only(from, name, password).await?;
        if let Some(factors) = &self.factors
            && factors.needs_second_step(&user).await?
        {
            tracing::info!(user_id = %user.id, "password-only sign-in refused: the account has a second factor");
            return Err(Error::with_message(
                ErrorCode::MfaRequired,
                "this account signs in with a second factor, which a password alone cannot carry: sign in over REST (POST /login, then /login/mfa) and send the token as a BinarySecurityToken",
            ));
        }
        Ok(user)
    }

    async fn verify_password_only(
        &self,
        from: IpAddr,
        name: LoginName,
        password: String,
    ) -> Result<User, Error> {
        let key = self.verified.key(&name, &password);
        if let Some(user) = self.remembered(&key, &name).await? {
            return Ok(user);
        }
        let _turn = if self.verified.is_enabled() {
            let turn = self.verified.one_at_a_time(key).await;
            // Verified by the call this one waited for.
            if let Some(user) = self.remembered(&key, &name).await? {
                return Ok(user);
            }
            Some(turn)
        } else {
            None
        };
        if let Err(wait) = self.logins.check_client(from) {
            tracing::warn!(client_ip = %from, "login attempts limited for this client");
            return Err(Error::too_many_attempts(wait));
        }
        let account = self.authentication.account_key(&name).await?;
        self.check_account(from, &account)?;
        let (user, verified) = self
            .authentication
            .verify_password(name.clone(), password)
            .await?;
        // A password change that landed while this one hashed: the password
        // verified is no longer the user's (as a login opens no session then).
        let current = self.authentication.user_named(&name).await?;
        if current
            .as_ref()
            .is_none_or(|now| now.password_hash != verified)
        {
            tracing::info!(user_id = %user.id, "password check refused: the password changed while it was checked");
            return Err(Error::new(ErrorCode::InvalidCredentials));
        }
        self.verified.remember(key, user.id, &verified);
        Ok(user)
    }

    /// Checks the credential: the user, and the password hash verified.
    async fn check(
        &self,
        name: LoginName,
        credential: Credential,
    ) -> Result<(User, crate::password::PasswordHash), Error> {
        match credential {
            Credential::Password(password) => {
                self.authentication.verify_password(name, password).await
            }
        }
    }

    /// Registers a user, within `from`'s registration budget (see
    /// [`SignUp`]).
    pub async fn sign_up(&self, from: IpAddr, request: RegisterUser) -> Result<User, Error> {
        SignUp::new(self.registration.clone(), Arc::clone(&self.budgets))
            .sign_up(Some(from), request)
            .await
    }

    /// Changes the principal's email or password. The check of the current
    /// password is a full hash, so it is budgeted per client and per
    /// account: one token cannot keep the pool busy or guess with it.
    ///
    /// With mail on, a new address is not changed here: a link is mailed
    /// to it, and it becomes the account's when followed
    /// ([`Recovery::verify_email`]).
    pub async fn change_profile(
        &self,
        from: IpAddr,
        principal: &Principal,
        mut change: ProfileChange,
    ) -> Result<ProfileChanged, Error> {
        if change.current_password.is_some() {
            self.budgets
                .password_check(from, principal.user_id)
                .map_err(Error::too_many_attempts)?;
        }
        let recovery = self.recovery.as_ref().filter(|r| r.mail_on());
        let (Some(recovery), Some(email)) = (recovery, change.email.clone()) else {
            let user = self
                .authentication
                .update_profile(principal, change)
                .await?;
            return Ok(ProfileChanged {
                user,
                email_pending: None,
            });
        };
        let email = Email::parse(&email)?;
        change.email = None;
        // Refused before anything changes: the answer's "nothing was
        // changed" holds with mail too.
        recovery.ensure_free(&email).await?;
        let user = if change.new_password.is_some() {
            self.authentication
                .update_profile(principal, change)
                .await?
        } else {
            self.authentication
                .check_current_password(principal, change.current_password)
                .await?
        };
        if email == user.email {
            return Ok(ProfileChanged {
                user,
                email_pending: None,
            });
        }
        recovery.request_verification(&user, &email).await?;
        Ok(ProfileChanged {
            user,
            email_pending: Some(email.as_str().to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::sync::Mutex;

    use super::*;
    use crate::ports::memory::{InMemoryAuth, InMemoryUsers};

    const PASSWORD: &str = "correct horse";
    const WAIT: Duration = Duration::from_secs(7);

    /// Budgets that count what is spent, and refuse what a test says.
    #[derive(Default)]
    struct Budgets {
        refuse_client: bool,
        refuse_account: bool,
        refuse_registration: bool,
        refuse_password_check: bool,
        clients: Mutex<u32>,
        accounts: Mutex<Vec<AccountKey>>,
        device_failures: Mutex<Vec<String>>,
        locked: Mutex<HashSet<String>>,
        password_checks: Mutex<u32>,
    }

    fn spend<T>(log: &Mutex<T>, f: impl FnOnce(&mut T)) {
        f(&mut log.lock().unwrap());
    }

    impl LoginBudgets for Budgets {
        fn check_client(&self, _: IpAddr) -> Result<(), Duration> {
            spend(&self.clients, |n| *n += 1);
            if self.refuse_client {
                Err(WAIT)
            } else {
                Ok(())
            }
        }

        fn check_account(&self, account: &AccountKey) -> Result<(), Duration> {
            spend(&self.accounts, |a| a.push(account.clone()));
            if self.refuse_account {
                Err(WAIT)
            } else {
                Ok(())
            }
        }

        fn device_locked(&self, device: &str) -> bool {
            self.locked.lock().unwrap().contains(device)
        }

        fn device_failed(&self, device: &str) {
            spend(&self.device_failures, |f| f.push(device.to_owned()));
        }
    }

    impl AccountBudgets for Budgets {
        fn register(&self, _: IpAddr) -> Result<(), Duration> {
            if self.refuse_registration {
                Err(WAIT)
            } else {
                Ok(())
            }
        }

        fn password_check(&self, _: IpAddr, _: UserId) -> Result<(), Duration> {
            spend(&self.password_checks, |n| *n += 1);
            if self.refuse_password_check {
                Err(WAIT)
            } else {
                Ok(())
            }
        }
    }

    struct World {
        sign_in: SignIn,
        budgets: Arc<Budgets>,
        users: Arc<InMemoryUsers>,
    }

    fn world(budgets: Budgets) -> World {
        let auth = InMemoryAuth::new(Duration::from_secs(3600)).unwrap();
        let (authentication, registration) = (auth.authentication.clone(), auth.registration());
        let users = auth.users;
        let budgets = Arc::new(budgets);
        World {
            sign_in: SignIn::new(
                authentication,
                registration,
                budgets.clone(),
                budgets.clone(),
                Duration::from_secs(86_400),
            ),
            budgets,
            users,
        }
    }

    fn here() -> IpAddr {
        "192.0.2.1".parse().unwrap()
    }

    fn attempt(password: &str, device_token: Option<&IssuedToken>) -> LoginAttempt {
        LoginAttempt {
            name: LoginName::Username("alice".into()),
            credential: Credential::Password(password.into()),
            user_agent: Some("test".into()),
            device_token: device_token.map(|t| t.token.clone()),
        }
    }

    async fn alice(world: &World) -> User {
        world
            .sign_in
            .sign_up(
                here(),
                RegisterUser {
                    username: "alice".into(),
                    email: "alice@example.com".into(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap()
    }

    /// Alice signed in once from a fresh device: the device token it got.
    async fn alices_device(world: &World) -> IssuedToken {
        let signed_in = world
            .sign_in
            .sign_in(here(), attempt(PASSWORD, None))
            .await
            .unwrap()
            .signed_in()
            .unwrap();
        signed_in.device_token.expect("a device token")
    }

    fn accounts_spent(world: &World) -> usize {
        world.budgets.accounts.lock().unwrap().len()
    }

    #[tokio::test]
    async fn a_sign_in_spends_the_client_and_the_account_and_mints_a_device_token() {
        let world = world(Budgets::default());
        let user = alice(&world).await;
        let signed_in = world
            .sign_in
            .sign_in(here(), attempt(PASSWORD, None))
            .await
            .unwrap()
            .signed_in()
            .unwrap();
        assert_eq!(signed_in.outcome.user.id, user.id);
        assert_eq!(
            signed_in.outcome.session.client.user_agent.as_deref(),
            Some("test")
        );
        assert_eq!(signed_in.outcome.session.client.ip, Some(here()));
        let device = signed_in.device_token.expect("a device token");
        assert_eq!(device.expires_in, 86_400);
        assert_eq!(*world.budgets.clients.lock().unwrap(), 1);
        assert_eq!(
            *world.budgets.accounts.lock().unwrap(),
            vec![AccountKey::User(user.id)]
        );
    }

    #[tokio::test]
    async fn a_known_device_does_not_spend_the_accounts_budget() {
        let world = world(Budgets::default());
        alice(&world).await;
        let device = alices_device(&world).await;
        assert_eq!(accounts_spent(&world), 1);
        for password in [PASSWORD, "wrong wrong wrong"] {
            let _ = world
                .sign_in
                .sign_in(here(), attempt(password, Some(&device)))
                .await;
        }
        assert_eq!(accounts_spent(&world), 1, "the device's sign-ins");
        assert_eq!(*world.budgets.clients.lock().unwrap(), 3, "the client's");
    }

    #[tokio::test]
    async fn a_known_device_passes_the_accounts_lockout() {
        let world = world(Budgets::default());
        alice(&world).await;
        let device = alices_device(&world).await;
        let locked_out = SignIn {
            logins: Arc::new(Budgets {
                refuse_account: true,
                ..Budgets::default()
            }),
            ..world.sign_in.clone()
        };
        let refused = locked_out
            .sign_in(here(), attempt(PASSWORD, None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::TooManyAttempts);
        assert_eq!(refused.retry_after(), Some(WAIT));
        let signed_in = locked_out
            .sign_in(here(), attempt(PASSWORD, Some(&device)))
            .await
            .unwrap()
            .signed_in()
            .unwrap();
        assert!(signed_in.device_token.is_some());
    }

    #[tokio::test]
    async fn a_wrong_password_from_a_known_device_spends_the_devices_budget() {
        let world = world(Budgets::default());
        alice(&world).await;
        let device = alices_device(&world).await;
        let refused = world
            .sign_in
            .sign_in(here(), attempt("wrong wrong wrong", Some(&device)))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidCredentials);
        let failures = world.budgets.device_failures.lock().unwrap().clone();
        assert_eq!(failures.len(), 1);
        // The device keeps its id, and so its budget, at its next sign-in.
        let again = world
            .sign_in
            .sign_in(here(), attempt(PASSWORD, Some(&device)))
            .await
            .unwrap()
            .signed_in()
            .unwrap()
            .device_token
            .unwrap();
        let tokens = world.sign_in.authentication.tokens();
        let now = time::OffsetDateTime::now_utc();
        let dev = |t: &IssuedToken| tokens.verify_device(&t.token, now).unwrap().device;
        assert_eq!(dev(&again), dev(&device));
        assert_eq!(failures, vec![dev(&device)]);
    }

    #[tokio::test]
    async fn a_wrong_password_from_an_unknown_device_spends_no_devices_budget() {
        let world = world(Budgets::default());
        alice(&world).await;
        let refused = world
            .sign_in
            .sign_in(here(), attempt("wrong wrong wrong", None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::InvalidCredentials);
        assert!(world.budgets.device_failures.lock().unwrap().is_empty());
        assert_eq!(accounts_spent(&world), 1);
    }

    #[tokio::test]
    async fn a_locked_device_counts_as_unknown() {
        let world = world(Budgets::default());
        alice(&world).await;
        let device = alices_device(&world).await;
        let id = world
            .sign_in
            .authentication
            .tokens()
            .verify_device(&device.token, time::OffsetDateTime::now_utc())
            .unwrap()
            .device;
        world.budgets.locked.lock().unwrap().insert(id);
        let _ = world
            .sign_in
            .sign_in(here(), attempt("wrong wrong wrong", Some(&device)))
            .await;
        assert_eq!(accounts_spent(&world), 2, "the account's budget again");
        assert!(
            world.budgets.device_failures.lock().unwrap().is_empty(),
            "a locked device's failures are the account's"
        );
    }

    #[tokio::test]
    async fn another_accounts_device_token_is_not_known_here() {
        let world = world(Budgets::default());
        alice(&world).await;
        world
            .sign_in
            .sign_up(
                here(),
                RegisterUser {
                    username: "bob".into(),
                    email: "bob@example.com".into(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap();
        let bobs = world
            .sign_in
            .sign_in(
                here(),
                LoginAttempt {
                    name: LoginName::Username("bob".into()),
                    ..attempt(PASSWORD, None)
                },
            )
            .await
            .unwrap()
            .signed_in()
            .unwrap()
            .device_token
            .unwrap();
        let _ = world
            .sign_in
            .sign_in(here(), attempt("wrong wrong wrong", Some(&bobs)))
            .await;
        assert_eq!(accounts_spent(&world), 2, "alice's account paid");
        assert!(world.budgets.device_failures.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn the_client_budget_refuses_with_a_retry_after_before_any_lookup() {
        let world = world(Budgets {
            refuse_client: true,
            ..Budgets::default()
        });
        alice(&world).await;
        let refused = world
            .sign_in
            .sign_in(here(), attempt(PASSWORD, None))
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::TooManyAttempts);
        assert_eq!(refused.retry_after(), Some(WAIT));
        assert_eq!(accounts_spent(&world), 0);
    }

    #[tokio::test]
    async fn registration_is_budgeted_per_client() {
        let world = world(Budgets {
            refuse_registration: true,
            ..Budgets::default()
        });
        let refused = world
            .sign_in
            .sign_up(
                here(),
                RegisterUser {
                    username: "carol".into(),
                    email: "carol@example.com".into(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::TooManyAttempts);
        assert_eq!(refused.retry_after(), Some(WAIT));
        let carol = crate::user::Username::parse("carol").unwrap();
        use crate::ports::UserRepository;
        assert!(
            world
                .users
                .find_by_username(&carol)
                .await
                .unwrap()
                .is_none()
        );
    }

    #[tokio::test]
    async fn only_a_change_that_checks_the_current_password_spends_its_budget() {
        let world = world(Budgets::default());
        alice(&world).await;
        let principal = {
            let signed_in = world
                .sign_in
                .sign_in(here(), attempt(PASSWORD, None))
                .await
                .unwrap()
                .signed_in()
                .unwrap();
            world
                .sign_in
                .authentication
                .authenticate(&signed_in.outcome.token.token)
                .await
                .unwrap()
        };
        let unchecked = world
            .sign_in
            .change_profile(
                here(),
                &principal,
                ProfileChange {
                    email: Some("a@example.com".into()),
                    ..ProfileChange::default()
                },
            )
            .await
            .unwrap_err();
        assert_eq!(unchecked.code(), ErrorCode::InvalidCredentials);
        assert_eq!(*world.budgets.password_checks.lock().unwrap(), 0);
        let changed = world
            .sign_in
            .change_profile(
                here(),
                &principal,
                ProfileChange {
                    email: Some("a@example.com".into()),
                    current_password: Some(PASSWORD.into()),
                    new_password: None,
                },
            )
            .await
            .unwrap();
        assert_eq!(changed.user.email.as_str(), "a@example.com");
        assert_eq!(*world.budgets.password_checks.lock().unwrap(), 1);

        let limited = SignIn {
            budgets: Arc::new(Budgets {
                refuse_password_check: true,
                ..Budgets::default()
            }),
            ..world.sign_in.clone()
        };
        let refused = limited
            .change_profile(
                here(),
                &principal,
                ProfileChange {
                    email: Some("b@example.com".into()),
                    current_password: Some(PASSWORD.into()),
                    new_password: None,
                },
            )
            .await
            .unwrap_err();
        assert_eq!(refused.code(), ErrorCode::TooManyAttempts);
        assert_eq!(refused.retry_after(), Some(WAIT));
    }
}
