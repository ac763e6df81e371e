//! Mail over SMTP with lettre: the transport of core's `Mailer`.

use std::time::Duration;

use async_trait::async_trait;
use hub_core::recovery::{Mail, MailRefused, MailTransport};
use lettre::message::header::ContentType;
use lettre::message::{Mailbox, Message};
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use secrecy::{ExposeSecret, SecretString};

/// How the connection to the server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SmtpSecurity {
    /// Plain SMTP: only for a relay on the same host or a test server.
    None,
    /// STARTTLS on a plain port (587), required.
    StartTls,
    /// TLS from the first byte (465).
    Tls,
}

/// Where and how to send.
#[derive(Debug, Clone)]
pub struct SmtpSettings {
    pub host: String,
    pub port: u16,
    pub security: SmtpSecurity,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// The sender, `Name <address>` or an address.
    pub from: String,
    /// One send's limit, connection included.
    pub timeout: Duration,
}

/// An SMTP client.
pub struct SmtpMail {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
}

impl std::fmt::Debug for SmtpMail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpMail")
            .field("from", &self.from.to_string())
            .finish_non_exhaustive()
    }
}

impl SmtpMail {
    /// A client for `settings`; an unusable sender or server name is an
    /// error naming the setting.
    pub fn new(settings: &SmtpSettings) -> Result<Self, String> {
        let from: Mailbox = settings
            .from
            .parse()
            .map_err(|e| format!("smtp.from is not a mailbox: {e}"))?;
        let builder = match settings.security {
            SmtpSecurity::None => {
                AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&settings.host)
            }
            SmtpSecurity::StartTls => {
                AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&settings.host)
                    .map_err(|e| format!("smtp.host cannot be used with STARTTLS: {e}"))?
            }
            SmtpSecurity::Tls => AsyncSmtpTransport::<Tokio1Executor>::relay(&settings.host)
                .map_err(|e| format!("smtp.host cannot be used with TLS: {e}"))?,
        };
        let mut builder = builder.port(settings.port).timeout(Some(settings.timeout));
        if let (Some(user), Some(password)) = (&settings.username, &settings.password) {
            builder = builder.credentials(Credentials::new(
                user.clone(),
                password.expose_secret().to_owned(),
            ));
        }
        Ok(Self {
            transport: builder.build(),
            from,
        })
    }
}

#[async_trait]
impl MailTransport for SmtpMail {
    async fn send(&self, mail: &Mail) -> Result<(), MailRefused> {
        let refused = |why: String| MailRefused {
            permanent: true,
            why,
        };
        let to: Mailbox = mail
            .to
            .parse()
            .map_err(|e| refused(format!("the recipient is not a mailbox: {e}")))?;
        let message = Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(mail.subject.clone())
            .message_id(Some(mail.message_id.clone()))
            .header(ContentType::TEXT_PLAIN)
            .body(mail.body.clone())
            .map_err(|e| refused(format!("the mail cannot be built: {e}")))?;
        self.transport
            .send(message)
            .await
            .map(|_| ())
            .map_err(|e| MailRefused {
                permanent: e.is_permanent(),
                why: e.to_string(),
            })
    }
}
