//! WS-Security for the SOAP services: who a message's `wsse:Security`
//! header says is calling, checked through hub-core's sign-in.
//!
//! - A **UsernameToken** with `PasswordText` is a sign-in's checks without
//!   a session ([`SignIn::verify_password`]): the client's and the
//!   account's login budgets and lockout, the hash, and a password verified
//!   a moment ago answered from memory (so a client sending it on every
//!   call pays one hash, not one per call). `PasswordDigest` is refused: it
//!   is checked against the clear password, which polyhub never keeps.
//! - A **BinarySecurityToken** carries a bearer access token (polyhub's):
//!   verified as the JSON API verifies it, session still open included.
//! - A **Timestamp**'s Created may be at most `max_age` old and
//!   `clock_skew` ahead; its Expires, with the skew, not past.
//! - A **Nonce** (with the UsernameToken's Created) is remembered through a
//!   [`ReplayGuard`] shared by every instance until its window closes; the
//!   same nonce again within it is a replay. It is remembered only once
//!   the password was right, so no anonymous sender can fill the store.
//!
//! The caller's role is the directory's now, never one remembered from an
//! earlier call. Every authenticated call but an admin's spends its
//! account's `limits.soap_calls_per_account`, before its nonce is recorded:
//! an account holder can neither look names up nor write nonces without
//! bound. A caller with no known address shares one address's budgets
//! (`0.0.0.0`): a server always knows it, a test harness may not.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use hub_core::{
    Authentication, Clock, Error, ErrorCode, LoginName, ReplayGuard, Role, SignIn, UserId, Username,
};
use hub_runtime::budgets::AttemptBudgets;
use hub_runtime::config::SecurityPolicy;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::SoapVersion;
use crate::envelope::OperationCall;
use crate::fault::Fault;
use crate::wsse::{Refusal, SECURITY, SecurityFault, Timestamp, Token, invalid, read_security};

/// How a caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proof {
    UsernameToken,
    BearerToken,
}

impl Proof {
    pub const fn as_str(self) -> &'static str {
        match self {
            Proof::UsernameToken => "UsernameToken",
            Proof::BearerToken => "BinarySecurityToken",
        }
    }
}

/// An authenticated caller, as the directory has them now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user_id: UserId,
    pub username: Username,
    pub role: Role,
    pub proof: Proof,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }
}

/// The clock's leeway and the replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecuritySettings {
    /// How far a sender's clock may be off from ours.
    pub clock_skew: Duration,
    /// How old a Created may be; how long a Nonce is remembered.
    pub max_age: Duration,
}

/// The `wsse:Security` processor. One per process, shared by both SOAP
/// services.
#[derive(Clone)]
pub struct WsSecurity {
    sign_in: SignIn,
    authentication: Authentication,
    replays: Arc<dyn ReplayGuard>,
    budgets: Arc<AttemptBudgets>,
    clock: Arc<dyn Clock>,
    settings: SecuritySettings,
}

/// Where a caller without a known address is counted.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

impl std::fmt::Debug for WsSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsSecurity")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn refused(version: SoapVersion, refusal: Refusal) -> Fault {
    let code = match refusal.fault {
        SecurityFault::UnsupportedSecurityToken => ErrorCode::UnsupportedSecurityToken,
        SecurityFault::InvalidSecurityToken => ErrorCode::InvalidToken,
        SecurityFault::FailedAuthentication => ErrorCode::InvalidCredentials,
        SecurityFault::MessageExpired => ErrorCode::MessageExpired,
        SecurityFault::InvalidSecurity => ErrorCode::InvalidSecurityHeader,
    };
    Fault::security(
        version,
        refusal.fault,
        &Error::with_message(code, refusal.reason),
    )
}

fn expired(version: SoapVersion, reason: String) -> Fault {
    refused(
        version,
        Refusal {
            fault: SecurityFault::MessageExpired,
            reason,
        },
    )
}

fn to_time(duration: Duration) -> time::Duration {
    time::Duration::try_from(duration).unwrap_or(time::Duration::MAX)
}

/// `at + by`, or the latest time there is: a date a client sent may be
/// anywhere in time's range, and overflowing must not panic.
fn later(at: OffsetDateTime, by: Duration) -> OffsetDateTime {
    at.checked_add(to_time(by))
        .unwrap_or(time::PrimitiveDateTime::MAX.assume_utc())
}

/// `at - by`, or the earliest time there is.
fn earlier(at: OffsetDateTime, by: Duration) -> OffsetDateTime {
    at.checked_sub(to_time(by))
        .unwrap_or(time::PrimitiveDateTime::MIN.assume_utc())
}

impl WsSecurity {
    pub fn new(
        sign_in: SignIn,
        authentication: Authentication,
        replays: Arc<dyn ReplayGuard>,
        budgets: Arc<AttemptBudgets>,
        clock: Arc<dyn Clock>,
        settings: SecuritySettings,
    ) -> Self {
        Self {
            sign_in,
            authentication,
            replays,
            budgets,
            clock,
            settings,
        }
    }

    /// Who `call` comes from under `policy`: `None` for an anonymous call
    /// the policy allows, a fault in WS-Security's shape for a header that
    /// does not hold (or a missing one where it is required). `client` is
    /// the caller's address, whose login budget a password check spends.
    pub async fn check(
        &self,
        call: &OperationCall,
        policy: SecurityPolicy,
        client: Option<IpAddr>,
    ) -> Result<Option<Caller>, Fault> {
        let version = call.version;
        if policy == SecurityPolicy::None {
            return Ok(None);
        }
        let mut ours = call
            .headers
            .iter()
            .filter(|block| *block.name() == SECURITY && block.role().targets_us());
        let block = ours.next();
        if ours.next().is_some() {
            return Err(refused(
                version,
                invalid("the message has more than one wsse:Security header for this service"),
            ));
        }
        let header = match block {
            Some(block) => Some(read_security(call, block).map_err(|r| refused(version, r))?),
            None => None,
        };
        if let Some(stamp) = header.as_ref().and_then(|h| h.timestamp) {
            self.check_timestamp(version, &stamp)?;
        }
        let caller = match header.and_then(|h| h.token) {
            None => None,
            Some(Token::Username(token)) => {
                if let Some(created) = token.created {
                    self.check_created(version, created, "the UsernameToken's Created")?;
                }
                let name = if token.username.contains('@') {
                    LoginName::Email(token.username)
                } else {
                    LoginName::Username(token.username)
                };
                let from = client.unwrap_or(UNKNOWN_CLIENT);
                let user = self
                    .sign_in
                    .verify_password(from, name, token.password)
                    .await
                    .map_err(|e| match e.code() {
                        ErrorCode::InvalidCredentials | ErrorCode::TooManyAttempts => {
                            Fault::security(version, SecurityFault::FailedAuthentication, &e)
                        }
                        _ => Fault::from_error(version, &e),
                    })?;
                self.spend(version, user.id, user.role)?;
                if let (Some(nonce), Some(created)) = (token.nonce, token.created) {
                    self.first_use(version, user.id, &nonce, created).await?;
                }
                Some(Caller {
                    user_id: user.id,
                    username: user.username,
                    role: user.role,
                    proof: Proof::UsernameToken,
                })
            }
            Some(Token::Bearer(token)) => {
                let (_, user) = self
                    .authentication
                    .authenticate_user(&token)
                    .await
                    .map_err(|e| match e.code() {
                        ErrorCode::InvalidToken => {
                            Fault::security(version, SecurityFault::InvalidSecurityToken, &e)
                        }
                        _ => Fault::from_error(version, &e),
                    })?;
                self.spend(version, user.id, user.role)?;
                Some(Caller {
                    user_id: user.id,
                    username: user.username,
                    role: user.role,
                    proof: Proof::BearerToken,
                })
            }
        };
        if caller.is_none() && policy == SecurityPolicy::Required {
            return Err(Fault::security(
                version,
                SecurityFault::InvalidSecurity,
                &Error::new(ErrorCode::AuthenticationRequired),
            ));
        }
        if let Some(caller) = &caller {
            tracing::Span::current().record("caller", tracing::field::display(caller.user_id));
            tracing::debug!(user_id = %caller.user_id, proof = caller.proof.as_str(), "WS-Security caller");
        }
        Ok(caller)
    }

    /// One call of `user`'s budget, unless an admin's.
    fn spend(&self, version: SoapVersion, user: UserId, role: Role) -> Result<(), Fault> {
        if role == Role::Admin {
            return Ok(());
        }
        self.budgets
            .soap_call(user)
            .map_err(|wait| Fault::from_error(version, &Error::too_many_attempts(wait)))
    }

    fn check_created(
        &self,
        version: SoapVersion,
        created: OffsetDateTime,
        what: &str,
    ) -> Result<(), Fault> {
        let now = self.clock.now();
        if created > later(now, self.settings.clock_skew) {
            return Err(expired(
                version,
                format!("{what} is in the future, beyond the allowed clock skew"),
            ));
        }
        if created < earlier(now, self.settings.max_age) {
            return Err(expired(
                version,
                format!(
                    "{what} is older than {} seconds",
                    self.settings.max_age.as_secs()
                ),
            ));
        }
        Ok(())
    }

    fn check_timestamp(&self, version: SoapVersion, stamp: &Timestamp) -> Result<(), Fault> {
        if let Some(created) = stamp.created {
            self.check_created(version, created, "the Timestamp's Created")?;
        }
        if let Some(expires) = stamp.expires {
            if stamp.created.is_some_and(|created| expires < created) {
                return Err(refused(
                    version,
                    invalid("the Timestamp expires before it was created"),
                ));
            }
            if expires < earlier(self.clock.now(), self.settings.clock_skew) {
                return Err(expired(
                    version,
                    "the message's Timestamp has expired".into(),
                ));
            }
        }
        Ok(())
    }

    /// Remembers `nonce` of `user` until its window closes; a second use
    /// within it is a replay.
    async fn first_use(
        &self,
        version: SoapVersion,
        user: UserId,
        nonce: &[u8],
        created: OffsetDateTime,
    ) -> Result<(), Fault> {
        let mut digest = Sha256::new();
        digest.update(user.as_uuid().as_bytes());
        digest.update(nonce);
        let until = later(
            created,
            self.settings
                .max_age
                .saturating_add(self.settings.clock_skew),
        );
        let first = self
            .replays
            .first_use(digest.finalize().into(), until)
            .await
            .map_err(|e| Fault::from_error(version, &e))?;
        if first {
            return Ok(());
        }
        tracing::warn!(user_id = %user, "WS-Security nonce replayed");
        Err(Fault::security(
            version,
            SecurityFault::InvalidSecurity,
            &Error::new(ErrorCode::MessageReplayed),
        ))
    }
}
