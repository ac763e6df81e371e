//! Getting back in by mail, and the mail itself: password reset links,
//! verification of a new address, and the notice of a sign-in from a new
//! device.
//!
//! A request writes an event (`user.password_reset_requested`,
//! `user.email_verification_requested`, `user.new_device`) in its own
//! transaction; the [`Mailer`] is a subscriber of the event log, so each
//! mail is sent from the log after the change committed, is marked sent
//! right after the SMTP server accepted it, and is not sent again after a
//! restart. A link's secret is derived from the id the event carries
//! ([`Tokens::link_secret`]): the log and the database hold only the id
//! and the secret's SHA-256, and a link works once, for 30 minutes.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use time::OffsetDateTime;
use tokio::sync::Semaphore;
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::events::{DomainEvent, UserChange};
use crate::ports::{Clock, CredentialChange, Outbox, SessionRepository, User, UserRepository};
use crate::session::ClientInfo;
use crate::token::Tokens;
use crate::user::{Email, Password, UserId};
use crate::work_pool::HashingPool;

/// How long a mailed link works.
pub const LINK_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Reset links one account gets per [`RESET_WINDOW`]: a stranger cannot
/// flood someone's mailbox through the form.
pub const RESETS_PER_WINDOW: i64 = 3;
pub const RESET_WINDOW: Duration = Duration::from_secs(15 * 60);
/// "Forgot password?" requests looked up at once (in the background); more
/// are answered the same and dropped, with a log line.
const FORGOT_IN_FLIGHT: usize = 16;

/// The events the mailer sends mail for: its subscription of the log,
/// made when mail is configured.
pub const MAIL_EVENTS: &[&str] = &[
    "user.password_reset_requested",
    "user.email_verification_requested",
    "user.new_device",
];

const RESET: &str = "password-reset";
const VERIFY: &str = "email-verification";

/// Where reset links and verifications live.
#[async_trait]
pub trait RecoveryStore: Send + Sync {
    /// Records a reset link for `user` with its event, unless the user had
    /// [`RESETS_PER_WINDOW`] in the last [`RESET_WINDOW`]: whether it did.
    async fn create_reset(
        &self,
        user: UserId,
        id: Uuid,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<bool, Error>;
    /// The user of a live, unused reset link, leaving it unused.
    async fn reset_user(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<UserId>, Error>;
    /// Uses a live, unused reset link up: its user.
    async fn take_reset(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<UserId>, Error>;
    /// Records a verification of `email` for `user`, with its event
    /// (replacing any earlier one of the user).
    async fn create_verification(
        &self,
        user: UserId,
        id: Uuid,
        email: &Email,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<(), Error>;
    /// Uses a live, unused verification up: its user and address.
    async fn take_verification(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<(UserId, String)>, Error>;
    /// Writes the `user.new_device` event, unless the user had one in the
    /// last hour.
    async fn new_device(
        &self,
        user: UserId,
        client: &ClientInfo,
        at: OffsetDateTime,
    ) -> Result<(), Error>;
}

fn sha256(text: &str) -> [u8; 32] {
    Sha256::digest(text.as_bytes()).into()
}

/// The recovery use case: what the pages and the API call.
#[derive(Clone)]
pub struct Recovery {
    store: Arc<dyn RecoveryStore>,
    users: Arc<dyn UserRepository>,
    sessions: Arc<dyn SessionRepository>,
    hashing: HashingPool,
    tokens: Arc<Tokens>,
    clock: Arc<dyn Clock>,
    /// Mail is configured (`smtp.host`): without it nothing can be mailed,
    /// and the pages say so.
    mail: bool,
    forgot_in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for Recovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recovery")
            .field("mail", &self.mail)
            .finish_non_exhaustive()
    }
}

fn mail_off() -> Error {
    Error::new(ErrorCode::MailDisabled)
}

fn invalid_link() -> Error {
    Error::new(ErrorCode::InvalidLink)
}

impl Recovery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<dyn RecoveryStore>,
        users: Arc<dyn UserRepository>,
        sessions: Arc<dyn SessionRepository>,
        hashing: HashingPool,
        tokens: Arc<Tokens>,
        clock: Arc<dyn Clock>,
        mail: bool,
    ) -> Self {
        Self {
            store,
            users,
            sessions,
            hashing,
            tokens,
            clock,
            mail,
            forgot_in_flight: Arc::new(Semaphore::new(FORGOT_IN_FLIGHT)),
        }
    }

    /// Whether mail is configured.
    pub fn mail_on(&self) -> bool {
        self.mail
    }

    /// "Forgot password?": answered at once and the same whether `email`
    /// is anyone's or not; the lookup and the link happen afterwards, in
    /// the background, so neither the answer nor its time tells.
    pub fn forgot(&self, email: &str) -> Result<(), Error> {
        if !self.mail {
            return Err(mail_off());
        }
        let Ok(email) = Email::parse(email.trim()) else {
            return Err(Error::new(ErrorCode::InvalidEmail));
        };
        let Ok(permit) = Arc::clone(&self.forgot_in_flight).try_acquire_owned() else {
            tracing::warn!("password reset request dropped: too many in flight");
            return Ok(());
        };
        let this = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = this.link_for(&email).await {
                tracing::warn!(error = %e, "password reset request failed");
            }
        });
        Ok(())
    }

    async fn link_for(&self, email: &Email) -> Result<(), Error> {
        let Some(user) = self.users.find_by_email(email).await? else {
            tracing::info!("password reset asked for an address that is no one's");
            return Ok(());
        };
        if !user.active {
            tracing::info!(user_id = %user.id, "password reset refused: the account is deactivated");
            return Ok(());
        }
        let id = Uuid::now_v7();
        let secret = self.tokens.link_secret(RESET, id);
        let made = self
            .store
            .create_reset(user.id, id, sha256(&secret), self.clock.now())
            .await?;
        if made {
            tracing::info!(user_id = %user.id, "password reset link made");
        } else {
            tracing::warn!(user_id = %user.id, "password reset link refused: too many for this account lately");
        }
        Ok(())
    }

    /// Sets a new password with a reset link's secret: the link is used up,
    /// and every session and device of the user is revoked. A password the
    /// policy refuses leaves the link as it was, to try again.
    pub async fn reset(&self, secret: &str, new_password: &str) -> Result<(), Error> {
        let now = self.clock.now();
        let secret_hash = sha256(secret.trim());
        let Some(user_id) = self.store.reset_user(secret_hash, now).await? else {
            return Err(invalid_link());
        };
        let user = self
            .users
            .find_by_id(user_id)
            .await?
            .ok_or_else(invalid_link)?;
        let password = Password::parse(new_password, &user.username)?;
        let hash = self
            .hashing
            .run_for_account(user.id, move |hasher| hasher.hash(&password))
            .await??;
        // Used up only now, once: of two uses at once, one gets here.
        if self.store.take_reset(secret_hash, now).await? != Some(user.id) {
            return Err(invalid_link());
        }
        let revoked = self
            .sessions
            .change_credentials(&CredentialChange {
                user: user.id,
                expected: user.password_hash.clone(),
                email: None,
                password_hash: Some(hash),
                keep: None,
                at: now,
            })
            .await?;
        self.sessions.forget_user(user.id);
        tracing::info!(user_id = %user.id, revoked, "password reset by mail");
        Ok(())
    }

    /// `EMAIL_TAKEN` when `email` is someone's already.
    pub async fn ensure_free(&self, email: &Email) -> Result<(), Error> {
        if self.users.find_by_email(email).await?.is_some() {
            return Err(Error::new(ErrorCode::EmailTaken));
        }
        Ok(())
    }

    /// Mails a link to `email`, which becomes `user`'s address once it is
    /// followed.
    pub async fn request_verification(&self, user: &User, email: &Email) -> Result<(), Error> {
        if !self.mail {
            return Err(mail_off());
        }
        self.ensure_free(email).await?;
        let id = Uuid::now_v7();
        let secret = self.tokens.link_secret(VERIFY, id);
        self.store
            .create_verification(user.id, id, email, sha256(&secret), self.clock.now())
            .await?;
        tracing::info!(user_id = %user.id, "address verification mailed");
        Ok(())
    }

    /// Follows a verification link: the address becomes the user's.
    pub async fn verify_email(&self, secret: &str) -> Result<User, Error> {
        let now = self.clock.now();
        let Some((user_id, email)) = self
            .store
            .take_verification(sha256(secret.trim()), now)
            .await?
        else {
            return Err(invalid_link());
        };
        let user = self
            .users
            .find_by_id(user_id)
            .await?
            .ok_or_else(invalid_link)?;
        let email = Email::stored(&email)?;
        self.sessions
            .change_credentials(&CredentialChange {
                user: user.id,
                expected: user.password_hash.clone(),
                email: Some(email),
                password_hash: None,
                keep: None,
                at: now,
            })
            .await?;
        tracing::info!(user_id = %user.id, "address verified and changed");
        self.users
            .find_by_id(user_id)
            .await?
            .ok_or_else(invalid_link)
    }

    /// Notes a sign-in from a device the account did not know, for the
    /// notice mail; never fails the sign-in.
    pub async fn new_device(&self, user: UserId, client: &ClientInfo) {
        if !self.mail {
            return;
        }
        if let Err(e) = self.store.new_device(user, client, self.clock.now()).await {
            tracing::warn!(user_id = %user, error = %e, "no new-device notice");
        }
    }
}

/// A client's text as a notice shows it: letters, digits and a few marks,
/// at most 80 characters.
fn plain(text: &str) -> String {
    text.chars()
        .filter(|c| c.is_ascii_alphanumeric() || " .;()_-/,".contains(*c))
        .take(80)
        .collect()
}

/// One mail, as the transport sends it.
#[derive(Clone, PartialEq, Eq)]
pub struct Mail {
    pub to: String,
    pub subject: String,
    pub body: String,
    /// The event's id: a server that sees a mail twice can tell.
    pub message_id: String,
}

impl std::fmt::Debug for Mail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The body holds a link's secret.
        f.debug_struct("Mail")
            .field("subject", &self.subject)
            .field("message_id", &self.message_id)
            .finish_non_exhaustive()
    }
}

/// An SMTP client (hub-store's, over lettre).
#[async_trait]
pub trait MailTransport: Send + Sync {
    /// Hands `mail` to the server; the refusal is the server's or the
    /// connection's.
    async fn send(&self, mail: &Mail) -> Result<(), MailRefused>;
}

/// Why a mail did not go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MailRefused {
    /// The server refused it for good (an SMTP 5xx): sending it again
    /// would be refused again.
    pub permanent: bool,
    pub why: String,
}

/// How the mailer paces itself.
#[derive(Debug, Clone)]
pub struct MailerSettings {
    /// Where links point: the public origin of rest-auth's port.
    pub base_url: String,
    /// How often an empty queue is looked at again.
    pub idle_poll: Duration,
    /// Sends of one mail before it is set aside.
    pub max_attempts: u32,
}

/// The mail subscriber of the event log.
pub struct Mailer {
    outbox: Arc<dyn Outbox>,
    transport: Arc<dyn MailTransport>,
    users: Arc<dyn UserRepository>,
    tokens: Arc<Tokens>,
    clock: Arc<dyn Clock>,
    settings: MailerSettings,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mailer")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Mailer {
    pub fn new(
        outbox: Arc<dyn Outbox>,
        transport: Arc<dyn MailTransport>,
        users: Arc<dyn UserRepository>,
        tokens: Arc<Tokens>,
        clock: Arc<dyn Clock>,
        settings: MailerSettings,
    ) -> Self {
        Self {
            outbox,
            transport,
            users,
            tokens,
            clock,
            settings,
        }
    }

    /// Sends until `shutdown`: one mail per claim, marked sent as soon as
    /// the server took it.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = self.settings.idle_poll;
        loop {
            let wait = match self.round().await {
                Ok(true) => {
                    backoff = self.settings.idle_poll;
                    continue;
                }
                Ok(false) => self.settings.idle_poll,
                Err(e) => {
                    tracing::warn!(error = %e, "mail round failed");
                    backoff = (backoff * 2).min(Duration::from_secs(60));
                    backoff
                }
            };
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Claims and sends one mail: whether there was one.
    async fn round(&self) -> Result<bool, Error> {
        let batch = self.outbox.claim(1).await?;
        let Some(pending) = batch.events().first().cloned() else {
            batch.delivered(self.clock.now()).await?;
            return Ok(false);
        };
        let id = pending.event.id();
        let mail = match self.compose(&pending.event).await {
            Ok(Some(mail)) => mail,
            Ok(None) => {
                batch.delivered(self.clock.now()).await?;
                return Ok(true);
            }
            Err(e) => {
                batch
                    .settle(&[], &[(id, e.to_string())], self.clock.now(), 1)
                    .await?;
                return Ok(true);
            }
        };
        match self.transport.send(&mail).await {
            Ok(()) => {
                tracing::info!(event_id = %id, kind = pending.event.type_name(), "mail sent");
                batch.delivered(self.clock.now()).await?;
            }
            Err(refused) if refused.permanent => {
                // Set aside at once: it holds back no other mail.
                tracing::error!(event_id = %id, error = %refused.why, "mail refused for good by the server; set aside");
                batch
                    .settle(&[], &[(id, refused.why)], self.clock.now(), 1)
                    .await?;
            }
            Err(MailRefused { why, .. }) => {
                tracing::warn!(event_id = %id, error = %why, "mail not sent; it is tried again");
                let quarantined = batch
                    .settle(
                        &[],
                        &[(id, why)],
                        self.clock.now(),
                        self.settings.max_attempts,
                    )
                    .await?;
                if quarantined > 0 {
                    tracing::error!(event_id = %id, "mail set aside after every attempt failed");
                }
                return Err(Error::unavailable("the mail server refused or was away"));
            }
        }
        Ok(true)
    }

    fn link(&self, path: &str, purpose: &str, id: Uuid) -> String {
        format!(
            "{}{path}?token={}",
            self.settings.base_url.trim_end_matches('/'),
            self.tokens.link_secret(purpose, id)
        )
    }

    /// The mail an event asks for, if any: `None` for an event that asks
    /// for none, or whose user is gone.
    async fn compose(&self, event: &DomainEvent) -> Result<Option<Mail>, Error> {
        let DomainEvent::User(event) = event else {
            return Ok(None);
        };
        let Some(user_id) = event.user_id else {
            return Ok(None);
        };
        let Some(user) = self.users.find_by_id(user_id).await? else {
            return Ok(None);
        };
        let minutes = LINK_LIFETIME.as_secs() / 60;
        let name = user.username.as_str();
        let (to, subject, body) = match &event.change {
            UserChange::PasswordResetRequested { reset_id } => (
                user.email.as_str().to_owned(),
                "Reset your polyhub password".to_owned(),
                format!(
                    "Hello {name},\r\n\r\nSomeone, perhaps you, asked to reset the password of your polyhub account.\r\n\
                     To choose a new one, open this link within {minutes} minutes:\r\n\r\n{}\r\n\r\n\
                     It works once. Setting a new password signs you out everywhere.\r\n\
                     If you did not ask, ignore this mail: your password stays as it is.\r\n",
                    self.link("/account/reset", RESET, *reset_id)
                ),
            ),
            UserChange::EmailVerificationRequested {
                verification_id,
                email,
            } => (
                email.clone(),
                "Confirm your new polyhub address".to_owned(),
                format!(
                    "Hello {name},\r\n\r\nTo make {email} the address of your polyhub account, open this link within {minutes} minutes:\r\n\r\n{}\r\n\r\n\
                     If you did not ask, ignore this mail: nothing changes.\r\n",
                    self.link("/account/verify-email", VERIFY, *verification_id)
                ),
            ),
            UserChange::NewDevice {
                client_ip,
                user_agent,
            } => (
                // The agent is the client's to say: plain characters, short,
                // no scheme, so a notice carries no link of someone else's.
                user.email.as_str().to_owned(),
                "New sign-in to your polyhub account".to_owned(),
                format!(
                    "Hello {name},\r\n\r\nYour account was signed in to from a device it did not know:\r\n\r\n\
                     When: {}\r\nAddress: {}\r\nBrowser or app: {}\r\n\r\n\
                     If this was you, there is nothing to do. If not, reset your password and sign the device out under Devices in your account.\r\n",
                    event
                        .at
                        .format(&time::format_description::well_known::Rfc2822)
                        .unwrap_or_default(),
                    client_ip.as_deref().unwrap_or("unknown"),
                    user_agent
                        .as_deref()
                        .map_or_else(|| "unknown".to_owned(), plain),
                ),
            ),
            _ => return Ok(None),
        };
        Ok(Some(Mail {
            to,
            subject,
            body,
            message_id: format!("<{}@polyhub>", event.id),
        }))
    }
}
