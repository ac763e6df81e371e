//! Second factors: TOTP authenticators (RFC 6238) and recovery codes, and
//! the step a sign-in takes when the account has one.
//!
//! A password that checks out for an account with a second factor opens no
//! session: [`Factors::challenge`] gives a short-lived, single-use ticket
//! naming what the account can answer with, and [`crate::SignIn::complete`]
//! takes the ticket and a code. The ticket keeps the password hash that was
//! verified, so a password changed in between leaves the ticket worthless,
//! as it leaves a sign-in in flight without a session.
//!
//! Wrong codes spend a per-account budget kept in the store (so every
//! instance behind a gateway spends the same one), and a ticket dies after
//! a few of them. A TOTP code is taken at most once: the store records the
//! last time step used and takes only a later one.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, ErrorCode};
use crate::passkeys::{Ceremony, Passkeys};
use crate::password::PasswordHash;
use crate::ports::{Clock, SessionRepository, User};
use crate::user::UserId;

/// TOTP as authenticator apps expect it: HMAC-SHA-1, six digits, 30-second
/// steps (RFC 6238 with RFC 4226's truncation).
pub mod totp {
    use hmac::{Hmac, KeyInit, Mac};
    use sha1::Sha1;

    /// Seconds per time step.
    pub const PERIOD: i64 = 30;
    /// Digits per code.
    pub const DIGITS: usize = 6;
    /// Bytes of a secret: 160 bits, RFC 4226's recommendation for SHA-1.
    pub const SECRET_BYTES: usize = 20;

    /// The time step `unix` falls in.
    pub fn step_at(unix: i64) -> i64 {
        unix.div_euclid(PERIOD)
    }

    /// The code of `secret` at time step `step`.
    pub fn code(secret: &[u8], step: i64) -> u32 {
        // HMAC takes a key of any length; an empty one is still a key.
        let Ok(mut mac) = <Hmac<Sha1> as KeyInit>::new_from_slice(secret) else {
            return u32::MAX;
        };
        mac.update(&step.to_be_bytes());
        let digest = mac.finalize().into_bytes();
        let offset = usize::from(digest[digest.len() - 1] & 0x0f);
        let binary = u32::from_be_bytes([
            digest[offset] & 0x7f,
            digest[offset + 1],
            digest[offset + 2],
            digest[offset + 3],
        ]);
        binary % 1_000_000
    }

    /// A code as typed: six digits, spaces allowed between them.
    pub fn parse(typed: &str) -> Option<u32> {
        let digits: String = typed.chars().filter(|c| !c.is_whitespace()).collect();
        if digits.len() != DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok()
    }

    /// The step, one either side of `now_step` (clock skew), whose code is
    /// `code`; every candidate is computed and compared, so the time taken
    /// tells nothing.
    pub fn matching_step(secret: &[u8], code: u32, now_step: i64) -> Option<i64> {
        let mut found = None;
        for step in [now_step - 1, now_step, now_step + 1] {
            let expected = self::code(secret, step);
            let same: bool = subtle::ConstantTimeEq::ct_eq(&expected, &code).into();
            if same && found.is_none() {
                found = Some(step);
            }
        }
        found
    }

    /// The `otpauth://` URI an authenticator app reads (Google's Key URI
    /// format): the label `issuer:account`, the secret in base32.
    pub fn uri(issuer: &str, account: &str, secret: &[u8]) -> String {
        let encode = |text: &str| -> String {
            form_urlencoded::byte_serialize(text.as_bytes())
                .collect::<String>()
                .replace('+', "%20")
        };
        format!(
            "otpauth://totp/{}:{}?secret={}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={PERIOD}",
            encode(issuer),
            encode(account),
            super::base32(secret),
            encode(issuer),
        )
    }
}

/// RFC 4648 base32 without padding, as authenticator apps take a secret.
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Recovery codes per set.
pub const RECOVERY_CODES: usize = 10;
/// A recovery code's characters (without its dashes): 12 of 31, 59 bits.
const RECOVERY_CODE_CHARS: usize = 12;
/// Lowercase letters and digits without the look-alikes (0/o, 1/l/i).
const RECOVERY_ALPHABET: &[u8; 31] = b"abcdefghjkmnpqrstuvwxyz23456789";

/// How long a sign-in ticket lasts.
pub const TICKET_LIFETIME: Duration = Duration::from_secs(300);
/// Wrong codes one ticket takes before it dies.
pub const TICKET_ATTEMPTS: i32 = 5;
/// Wrong codes an account takes per [`FAILURE_WINDOW`], whichever ticket
/// or session they came with.
pub const FAILURE_BUDGET: i32 = 10;
/// The window of [`FAILURE_BUDGET`].
pub const FAILURE_WINDOW: Duration = Duration::from_secs(900);

/// Which factors an account has; never their secrets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FactorSummary {
    /// A confirmed TOTP authenticator.
    pub totp: bool,
    /// Passkeys registered.
    pub passkeys: u32,
    /// Recovery codes not yet used.
    pub recovery_codes_left: u32,
}

impl FactorSummary {
    /// Whether a sign-in needs a second step. Recovery codes alone are
    /// not a factor: they stand in for one.
    pub fn any(&self) -> bool {
        self.totp || self.passkeys > 0
    }

    /// What a sign-in's step can be answered with, as clients see it.
    pub fn names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.totp {
            names.push("totp");
        }
        if self.passkeys > 0 {
            names.push("passkey");
        }
        if self.any() && self.recovery_codes_left > 0 {
            names.push("recovery_code");
        }
        names
    }
}

/// A ticket as stored: only the hash of the token the client holds.
#[derive(Debug, Clone)]
pub struct TicketRecord {
    pub hash: [u8; 32],
    pub user_id: UserId,
    /// The password hash verified at the first step: the session opens only
    /// while it is still the user's.
    pub credential: PasswordHash,
    /// The account has no factor yet and must set up TOTP to go on
    /// (`auth.require_mfa_for_admins`).
    pub enrol: bool,
    pub expires_at: OffsetDateTime,
}

/// What changes an account's factors, for the event each writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FactorChange {
    TotpAdded,
    TotpRemoved,
    RecoveryCodesReplaced,
    PasskeyAdded,
    PasskeyRemoved,
    /// An admin removed every factor (and revoked the sessions).
    Reset,
}

impl FactorChange {
    pub const fn as_str(self) -> &'static str {
        match self {
            FactorChange::TotpAdded => "totp_added",
            FactorChange::TotpRemoved => "totp_removed",
            FactorChange::RecoveryCodesReplaced => "recovery_codes_replaced",
            FactorChange::PasskeyAdded => "passkey_added",
            FactorChange::PasskeyRemoved => "passkey_removed",
            FactorChange::Reset => "reset",
        }
    }
}

/// Where factors, tickets and the wrong-code budget live.
#[async_trait]
pub trait FactorStore: Send + Sync {
    async fn summary(&self, user: UserId) -> Result<FactorSummary, Error>;
    /// Keeps `secret` as the account's TOTP secret awaiting its first code
    /// (replacing one awaiting before).
    async fn set_pending_totp(&self, user: UserId, secret: &[u8]) -> Result<(), Error>;
    /// The secret awaiting its first code.
    async fn pending_totp(&self, user: UserId) -> Result<Option<Vec<u8>>, Error>;
    /// Makes the pending secret the account's TOTP with `step` used, and
    /// records `change` by `by`: false when none is pending or one is
    /// confirmed already. With `revoke_others_than`, every other session of
    /// the user is revoked in the same transaction.
    async fn confirm_totp(
        &self,
        user: UserId,
        step: i64,
        at: OffsetDateTime,
        keep_session: Option<crate::session::SessionId>,
    ) -> Result<bool, Error>;
    /// The confirmed TOTP secret.
    async fn totp_secret(&self, user: UserId) -> Result<Option<Vec<u8>>, Error>;
    /// Records `step` as used when it is later than the last one used:
    /// false for a code taken before (a replay).
    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, Error>;
    /// Removes the TOTP authenticator and the recovery codes with it.
    async fn remove_totp(&self, user: UserId, at: OffsetDateTime) -> Result<bool, Error>;
    /// Replaces every recovery code of the user with `hashes`.
    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[[u8; 32]],
        at: OffsetDateTime,
    ) -> Result<(), Error>;
    /// Marks the code with `hash` used: false when there is none unused.
    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &[u8; 32],
        at: OffsetDateTime,
    ) -> Result<bool, Error>;
    /// Removes every factor, the tickets and the budget, and revokes every
    /// session and device of the user, in one transaction, with a
    /// `user.factors_changed` event naming `by`.
    async fn reset(&self, user: UserId, by: UserId, at: OffsetDateTime) -> Result<bool, Error>;
    /// Takes one attempt of the account's wrong-code budget before a code
    /// is checked, in one statement, so attempts sent at once count each
    /// other; when the budget is spent, how long until it has room.
    async fn reserve_attempt(
        &self,
        user: UserId,
        at: OffsetDateTime,
    ) -> Result<Option<Duration>, Error>;
    /// Gives back an attempt that turned out right.
    async fn release_attempt(&self, user: UserId) -> Result<(), Error>;
    async fn insert_ticket(&self, ticket: &TicketRecord) -> Result<(), Error>;
    /// The live ticket with `hash`: not expired, not used, not out of tries.
    async fn ticket(
        &self,
        hash: &[u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<TicketRecord>, Error>;
    /// Takes one of the ticket's tries before its answer is checked: false
    /// when it has none left (or is gone).
    async fn try_ticket(&self, hash: &[u8; 32], at: OffsetDateTime) -> Result<bool, Error>;
    /// Uses the ticket up: true for the one caller that did.
    async fn take_ticket(&self, hash: &[u8; 32], at: OffsetDateTime) -> Result<bool, Error>;
}

/// A TOTP authenticator being set up: what the app is shown.
#[derive(Clone)]
pub struct TotpEnrolment {
    /// The secret in base32, for typing in.
    pub secret: String,
    /// The `otpauth://` URI, for a QR code.
    pub uri: String,
}

impl std::fmt::Debug for TotpEnrolment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TotpEnrolment(<redacted>)")
    }
}

/// What a sign-in's second step is answered with.
#[derive(Clone)]
pub enum Answer {
    /// A TOTP code or a recovery code, as typed.
    Code(String),
    /// A passkey's answer (JSON, as the browser gave it) to the ceremony
    /// [`Factors::passkey_options`] began.
    Passkey {
        ceremony: uuid::Uuid,
        answer: String,
    },
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Code(_) => f.write_str("Code(<redacted>)"),
            Answer::Passkey { ceremony, .. } => write!(f, "Passkey({ceremony})"),
        }
    }
}

/// A sign-in waiting for its second step: the ticket the client sends
/// back, and what it can answer with.
#[derive(Clone)]
pub struct Challenge {
    pub ticket: String,
    pub factors: Vec<&'static str>,
    /// The account has no factor and must set one up (TOTP) to go on.
    pub enrol: bool,
    pub expires_in: u64,
}

impl std::fmt::Debug for Challenge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Challenge")
            .field("factors", &self.factors)
            .field("enrol", &self.enrol)
            .finish_non_exhaustive()
    }
}

/// A second step passed: whose, and the password hash the first step
/// verified.
#[derive(Debug)]
pub struct Passed {
    pub user_id: UserId,
    pub credential: PasswordHash,
    /// Recovery codes made when the step set up the account's first factor.
    pub recovery_codes: Option<Vec<String>>,
}

/// The second-factor use case.
#[derive(Clone)]
pub struct Factors {
    store: Arc<dyn FactorStore>,
    /// Told when a change revoked a user's sessions (a cache forgets them
    /// at once, before the database's notification arrives).
    sessions: Arc<dyn SessionRepository>,
    /// Passkeys, when a relying party is configured.
    passkeys: Option<Passkeys>,
    clock: Arc<dyn Clock>,
    /// The name authenticator apps show.
    issuer: String,
    /// Admins sign in with a second factor, setting one up at their next
    /// sign-in when they have none.
    require_for_admins: bool,
}

impl std::fmt::Debug for Factors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Factors")
            .field("issuer", &self.issuer)
            .field("require_for_admins", &self.require_for_admins)
            .finish_non_exhaustive()
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn random<const N: usize>() -> Result<[u8; N], Error> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("the random source failed: {e}")))?;
    Ok(bytes)
}

/// A recovery code as stored: SHA-256 of the user and the code as typed
/// without dashes, spaces or case (59 random bits each, so a fast hash with
/// the user as salt leaves nothing to precompute).
fn recovery_hash(user: UserId, typed: &str) -> Option<[u8; 32]> {
    let folded: String = typed
        .chars()
        .filter(|c| !matches!(c, '-' | ' '))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    if folded.len() != RECOVERY_CODE_CHARS
        || !folded.bytes().all(|b| RECOVERY_ALPHABET.contains(&b))
    {
        return None;
    }
    Some(sha256(format!("{user}:{folded}").as_bytes()))
}

fn invalid_code() -> Error {
    Error::new(ErrorCode::InvalidMfaCode)
}

fn duration(d: Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MINUTE)
}

impl Factors {
    pub fn new(
        store: Arc<dyn FactorStore>,
        sessions: Arc<dyn SessionRepository>,
        clock: Arc<dyn Clock>,
        issuer: String,
    ) -> Self {
        Self {
            store,
            sessions,
            passkeys: None,
            clock,
            issuer,
            require_for_admins: false,
        }
    }

    /// Takes passkeys as a second factor.
    pub fn with_passkeys(mut self, passkeys: Passkeys) -> Self {
        self.passkeys = Some(passkeys);
        self
    }

    /// The passkey use case, when configured.
    pub fn passkeys(&self) -> Option<&Passkeys> {
        self.passkeys.as_ref()
    }

    /// The options to answer the ticket `token`'s step with a passkey.
    pub async fn passkey_options(&self, token: &str) -> Result<Ceremony, Error> {
        let (_, ticket) = self.live_ticket(token).await?;
        match &self.passkeys {
            Some(passkeys) if !ticket.enrol => passkeys.begin_second_factor(ticket.user_id).await,
            _ => Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "this sign-in cannot be answered with a passkey",
            )),
        }
    }

    /// `auth.require_mfa_for_admins`.
    pub fn requiring_admins(mut self, require: bool) -> Self {
        self.require_for_admins = require;
        self
    }

    pub async fn summary(&self, user: UserId) -> Result<FactorSummary, Error> {
        self.store.summary(user).await
    }

    /// Whether a sign-in of `user` needs a second step: a factor, or an
    /// admin without one under `auth.require_mfa_for_admins`.
    pub async fn needs_second_step(&self, user: &User) -> Result<bool, Error> {
        Ok(self.store.summary(user.id).await?.any()
            || (self.require_for_admins && user.role == crate::Role::Admin))
    }

    /// The second step `user` needs after a verified password, if any: a
    /// ticket bound to `credential`, naming the factors.
    pub async fn challenge(
        &self,
        user: &User,
        credential: &PasswordHash,
    ) -> Result<Option<Challenge>, Error> {
        let summary = self.store.summary(user.id).await?;
        let enrol = !summary.any() && self.require_for_admins && user.role == crate::Role::Admin;
        if !summary.any() && !enrol {
            return Ok(None);
        }
        let token = B64URL.encode(random::<32>()?);
        let now = self.clock.now();
        self.store
            .insert_ticket(&TicketRecord {
                hash: sha256(token.as_bytes()),
                user_id: user.id,
                credential: credential.clone(),
                enrol,
                expires_at: now + duration(TICKET_LIFETIME),
            })
            .await?;
        tracing::info!(user_id = %user.id, enrol, "sign-in waits for a second factor");
        Ok(Some(Challenge {
            ticket: token,
            factors: if enrol { vec!["totp"] } else { summary.names() },
            enrol,
            expires_in: TICKET_LIFETIME.as_secs(),
        }))
    }

    /// The challenge of a ticket still live, to ask again after a wrong
    /// code; `INVALID_MFA_TICKET` when it is not.
    pub async fn challenge_again(&self, token: &str) -> Result<Challenge, Error> {
        let (_, ticket) = self.live_ticket(token).await?;
        let factors = if ticket.enrol {
            vec!["totp"]
        } else {
            self.store.summary(ticket.user_id).await?.names()
        };
        let left = (ticket.expires_at - self.clock.now())
            .whole_seconds()
            .max(0);
        Ok(Challenge {
            ticket: token.trim().to_owned(),
            factors,
            enrol: ticket.enrol,
            expires_in: u64::try_from(left).unwrap_or(0),
        })
    }

    /// The live ticket `token` names.
    async fn live_ticket(&self, token: &str) -> Result<([u8; 32], TicketRecord), Error> {
        let hash = sha256(token.trim().as_bytes());
        match self.store.ticket(&hash, self.clock.now()).await? {
            Some(ticket) => Ok((hash, ticket)),
            None => Err(Error::new(ErrorCode::InvalidMfaTicket)),
        }
    }

    /// The user of a ticket that must set up TOTP first.
    pub async fn enrolling_user(&self, token: &str) -> Result<UserId, Error> {
        let (_, ticket) = self.live_ticket(token).await?;
        if !ticket.enrol {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "this account has a second factor already: answer with it",
            ));
        }
        Ok(ticket.user_id)
    }

    /// The secret to show for setting up TOTP at a sign-in: the one
    /// already awaiting its first code, or a new one.
    pub async fn pending_or_new(
        &self,
        user: UserId,
        account: &str,
    ) -> Result<TotpEnrolment, Error> {
        let secret = match self.store.pending_totp(user).await? {
            Some(secret) => secret,
            None => {
                let secret = random::<{ totp::SECRET_BYTES }>()?.to_vec();
                self.store.set_pending_totp(user, &secret).await?;
                secret
            }
        };
        Ok(TotpEnrolment {
            secret: base32(&secret),
            uri: totp::uri(&self.issuer, account, &secret),
        })
    }

    /// The second step: `code` (a TOTP code or a recovery code) for the
    /// ticket `token`. A wrong code spends the ticket's tries and the
    /// account's budget; the ticket is used up only by a right one.
    pub async fn pass(&self, token: &str, answer: &Answer) -> Result<Passed, Error> {
        let (hash, ticket) = self.live_ticket(token).await?;
        let user = ticket.user_id;
        let now = self.clock.now();
        // The ticket's try and the account's attempt are taken before the
        // answer is checked, so answers sent at once count each other.
        if !self.store.try_ticket(&hash, now).await? {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        }
        let mut recovery_codes = None;
        let passed = match answer {
            Answer::Code(code) => {
                if ticket.enrol {
                    None
                } else {
                    self.reserve(user, now).await?;
                    Some(self.check_code(user, code, now, true).await?)
                }
            }
            Answer::Passkey { ceremony, answer } => {
                self.reserve(user, now).await?;
                match &self.passkeys {
                    Some(passkeys) if !ticket.enrol => Some(
                        passkeys
                            .finish_second_factor(user, *ceremony, answer)
                            .await?,
                    ),
                    _ => Some(false),
                }
            }
        };
        if let Some(passed) = passed {
            if passed {
                self.store.release_attempt(user).await?;
            } else {
                tracing::info!(user_id = %user, "second factor refused: wrong or used code, or a passkey refused");
                return Err(match answer {
                    Answer::Code(_) => invalid_code(),
                    Answer::Passkey { .. } => Error::new(ErrorCode::InvalidPasskey),
                });
            }
        } else if let Answer::Code(code) = answer {
            // Setting up the account's first factor, which spends the
            // budget itself on a wrong code.
            recovery_codes = self.confirm(user, code, None).await?;
        }
        if !self.store.take_ticket(&hash, now).await? {
            return Err(Error::new(ErrorCode::InvalidMfaTicket));
        }
        Ok(Passed {
            user_id: user,
            credential: ticket.credential,
            recovery_codes,
        })
    }

    /// Takes one attempt of `user`'s wrong-code budget, or says how long
    /// to wait.
    async fn reserve(&self, user: UserId, now: OffsetDateTime) -> Result<(), Error> {
        match self.store.reserve_attempt(user, now).await? {
            None => Ok(()),
            Some(wait) => {
                tracing::warn!(user_id = %user, "second-factor attempts limited for this account");
                Err(Error::too_many_attempts(wait))
            }
        }
    }

    /// Whether `code` is a TOTP code not used before or (with `recovery`)
    /// an unused recovery code of `user`; a right code is spent.
    async fn check_code(
        &self,
        user: UserId,
        code: &str,
        now: OffsetDateTime,
        recovery: bool,
    ) -> Result<bool, Error> {
        if let Some(typed) = totp::parse(code) {
            let Some(secret) = self.store.totp_secret(user).await? else {
                return Ok(false);
            };
            let Some(step) =
                totp::matching_step(&secret, typed, totp::step_at(now.unix_timestamp()))
            else {
                return Ok(false);
            };
            if !self.store.use_totp_step(user, step).await? {
                tracing::warn!(user_id = %user, "a TOTP code was replayed");
                return Ok(false);
            }
            return Ok(true);
        }
        match recovery_hash(user, code).filter(|_| recovery) {
            Some(hash) if self.store.summary(user).await?.any() => {
                let used = self.store.use_recovery_code(user, &hash, now).await?;
                if used {
                    tracing::info!(user_id = %user, "signed in with a recovery code");
                }
                Ok(used)
            }
            _ => Ok(false),
        }
    }

    /// Starts setting up TOTP for a signed-in user: a new secret awaiting
    /// its first code. `TOTP_ALREADY_ENABLED` when one is set up.
    pub async fn begin_totp(&self, user: &User) -> Result<TotpEnrolment, Error> {
        if self.store.summary(user.id).await?.totp {
            return Err(Error::new(ErrorCode::TotpAlreadyEnabled));
        }
        let secret = random::<{ totp::SECRET_BYTES }>()?.to_vec();
        self.store.set_pending_totp(user.id, &secret).await?;
        Ok(TotpEnrolment {
            secret: base32(&secret),
            uri: totp::uri(&self.issuer, user.username.as_str(), &secret),
        })
    }

    /// The secret awaiting its first code (ten minutes at most), to show
    /// again.
    pub async fn pending(&self, user: &User) -> Result<Option<TotpEnrolment>, Error> {
        Ok(self
            .store
            .pending_totp(user.id)
            .await?
            .map(|secret| TotpEnrolment {
                secret: base32(&secret),
                uri: totp::uri(&self.issuer, user.username.as_str(), &secret),
            }))
    }

    /// Confirms the pending TOTP secret with its first code, for a
    /// signed-in user (whose other sessions are revoked: whoever else held
    /// one signed in without it) or a ticket. Returns fresh recovery codes
    /// when the account had none.
    pub async fn confirm(
        &self,
        user: UserId,
        code: &str,
        keep_session: Option<crate::session::SessionId>,
    ) -> Result<Option<Vec<String>>, Error> {
        let now = self.clock.now();
        let Some(secret) = self.store.pending_totp(user).await? else {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "no authenticator is being set up: start again",
            ));
        };
        let step = totp::parse(code).and_then(|typed| {
            totp::matching_step(&secret, typed, totp::step_at(now.unix_timestamp()))
        });
        self.reserve(user, now).await?;
        let Some(step) = step else {
            return Err(invalid_code());
        };
        self.store.release_attempt(user).await?;
        if !self
            .store
            .confirm_totp(user, step, now, keep_session)
            .await?
        {
            return Err(Error::new(ErrorCode::TotpAlreadyEnabled));
        }
        self.sessions.forget_user(user);
        tracing::info!(user_id = %user, "TOTP authenticator added");
        if self.store.summary(user).await?.recovery_codes_left == 0 {
            return Ok(Some(self.new_recovery_codes(user).await?));
        }
        Ok(None)
    }

    /// Removes the user's TOTP authenticator, proven with a current code
    /// from it (a recovery code does not do), and the recovery codes with
    /// it unless a passkey is left. The caller checks the password first.
    pub async fn remove_totp(&self, user: UserId, code: &str) -> Result<(), Error> {
        if !self.store.summary(user).await?.totp {
            return Err(Error::with_message(
                ErrorCode::NotFound,
                "no authenticator app is set up",
            ));
        }
        let now = self.clock.now();
        self.reserve(user, now).await?;
        if !self.check_code(user, code, now, false).await? {
            return Err(invalid_code());
        }
        self.store.release_attempt(user).await?;
        self.store.remove_totp(user, now).await?;
        tracing::info!(user_id = %user, "TOTP authenticator removed");
        Ok(())
    }

    /// Ten new recovery codes, replacing every earlier one; shown once.
    /// Only for an account with a factor to recover.
    pub async fn regenerate_recovery_codes(&self, user: UserId) -> Result<Vec<String>, Error> {
        if !self.store.summary(user).await?.any() {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "set up an authenticator first: recovery codes stand in for one",
            ));
        }
        self.new_recovery_codes(user).await
    }

    async fn new_recovery_codes(&self, user: UserId) -> Result<Vec<String>, Error> {
        let mut codes = Vec::with_capacity(RECOVERY_CODES);
        let mut hashes = Vec::with_capacity(RECOVERY_CODES);
        for _ in 0..RECOVERY_CODES {
            let bytes = random::<RECOVERY_CODE_CHARS>()?;
            let chars: String = bytes
                .iter()
                .map(|b| char::from(RECOVERY_ALPHABET[usize::from(*b) % RECOVERY_ALPHABET.len()]))
                .collect();
            let code = format!("{}-{}-{}", &chars[0..4], &chars[4..8], &chars[8..12]);
            if let Some(hash) = recovery_hash(user, &code) {
                hashes.push(hash);
                codes.push(code);
            }
        }
        self.store
            .replace_recovery_codes(user, &hashes, self.clock.now())
            .await?;
        tracing::info!(user_id = %user, "recovery codes replaced");
        Ok(codes)
    }

    /// An admin's reset of `user`'s factors: every factor gone, every
    /// session and device revoked.
    pub async fn reset(&self, user: UserId, by: UserId) -> Result<(), Error> {
        if !self.store.reset(user, by, self.clock.now()).await? {
            return Err(Error::new(ErrorCode::UserNotFound));
        }
        self.sessions.forget_user(user);
        tracing::info!(user_id = %user, by = %by, "second factors reset by an admin");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (eight digits there; the last six
    /// are the six-digit code).
    #[test]
    fn rfc_6238_vectors() {
        let secret = b"12345678901234567890";
        for (time, eight) in [
            (59_i64, 94_287_082_u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
            (20_000_000_000, 65_353_130),
        ] {
            assert_eq!(
                totp::code(secret, totp::step_at(time)),
                eight % 1_000_000,
                "{time}"
            );
        }
    }

    #[test]
    fn skew_is_one_step_either_way() {
        let secret = b"12345678901234567890";
        let now = totp::step_at(1_234_567_890);
        for skew in [-1, 0, 1] {
            let code = totp::code(secret, now + skew);
            assert_eq!(totp::matching_step(secret, code, now), Some(now + skew));
        }
        for far in [-2, 2] {
            let code = totp::code(secret, now + far);
            if (-1..=1).all(|near| totp::code(secret, now + near) != code) {
                assert_eq!(totp::matching_step(secret, code, now), None);
            }
        }
    }

    #[test]
    fn codes_are_parsed_as_typed() {
        assert_eq!(totp::parse("123 456"), Some(123_456));
        assert_eq!(totp::parse("012345"), Some(12_345));
        for bad in ["12345", "1234567", "12345a", "", "１２３４５６"] {
            assert_eq!(totp::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn base32_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_uri_is_what_apps_read() {
        let uri = totp::uri("polyhub", "alice@example.com", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/polyhub:alice%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=polyhub&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn recovery_codes_fold_and_refuse() {
        let user = UserId::generate();
        let a = recovery_hash(user, "abcd-efgh-jkmn").unwrap();
        assert_eq!(recovery_hash(user, "ABCD EFGH JKMN"), Some(a));
        assert_ne!(recovery_hash(UserId::generate(), "abcd-efgh-jkmn"), Some(a));
        for bad in ["abcd-efgh-jkm", "abcd-efgh-jkmo", "123456", ""] {
            assert_eq!(recovery_hash(user, bad), None, "{bad}");
        }
    }
}
