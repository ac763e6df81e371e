//! The one error model: every failure is classified once, here, as an
//! [`ErrorKind`] with a stable [`ErrorCode`]; each adapter maps the kind to its
//! protocol in one function and carries the code in its body.

use std::fmt;
use std::time::Duration;

/// How a failure is classified, whatever protocol carried the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Invalid,
    Conflict,
    NotFound,
    Unauthenticated,
    Forbidden,
    /// The request is bigger than a limit allows.
    TooLarge,
    TooMany,
    Unavailable,
    Internal,
}

impl ErrorKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Invalid => "Invalid",
            ErrorKind::Conflict => "Conflict",
            ErrorKind::NotFound => "NotFound",
            ErrorKind::Unauthenticated => "Unauthenticated",
            ErrorKind::Forbidden => "Forbidden",
            ErrorKind::TooLarge => "TooLarge",
            ErrorKind::TooMany => "TooMany",
            ErrorKind::Unavailable => "Unavailable",
            ErrorKind::Internal => "Internal",
        }
    }
}

macro_rules! error_codes {
    ($($variant:ident => ($code:literal, $kind:ident, $message:literal),)+) => {
        /// A stable, machine-readable error code. Clients match on these strings;
        /// they never change meaning once published (see docs/ERRORS.md).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $($variant,)+
        }

        impl ErrorCode {
            /// Every code, in the order docs/ERRORS.md lists them.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)+];

            pub const fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)+
                }
            }

            pub const fn kind(self) -> ErrorKind {
                match self {
                    $(ErrorCode::$variant => ErrorKind::$kind,)+
                }
            }

            /// The message a client sees when nothing more specific is said.
            pub const fn default_message(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $message,)+
                }
            }
        }
    };
}

error_codes! {
    InvalidRequest => ("INVALID_REQUEST", Invalid, "the request is malformed"),
    InvalidUsername => ("INVALID_USERNAME", Invalid, "username must be 1 to 256 characters of a-z, 0-9 and . _ - @ + ' ! # ^ ~"),
    InvalidEmail => ("INVALID_EMAIL", Invalid, "email is not a valid address"),
    WeakPassword => ("WEAK_PASSWORD", Invalid, "password must be 8 to 128 characters and differ from the username"),
    InvalidUserId => ("INVALID_USER_ID", Invalid, "user id is not a valid identifier"),
    UsernameTaken => ("USERNAME_TAKEN", Conflict, "username is already registered"),
    EmailTaken => ("EMAIL_TAKEN", Conflict, "email is already registered"),
    GroupNameTaken => ("GROUP_NAME_TAKEN", Conflict, "a group with this displayName exists"),
    UserNotFound => ("USER_NOT_FOUND", NotFound, "no such user"),
    NotFound => ("NOT_FOUND", NotFound, "no such resource"),
    InvalidCredentials => ("INVALID_CREDENTIALS", Unauthenticated, "username or password is wrong"),
    InvalidToken => ("INVALID_TOKEN", Unauthenticated, "the token is missing, invalid or expired"),
    AuthenticationRequired => ("AUTHENTICATION_REQUIRED", Unauthenticated, "this operation needs credentials: a WS-Security header with a UsernameToken or a BinarySecurityToken"),
    InvalidSecurityHeader => ("INVALID_SECURITY_HEADER", Invalid, "the WS-Security header is malformed"),
    UnsupportedSecurityToken => ("UNSUPPORTED_SECURITY_TOKEN", Invalid, "this kind of security token is not supported"),
    MessageExpired => ("MESSAGE_EXPIRED", Unauthenticated, "the message's timestamp is outside the accepted window"),
    MessageReplayed => ("MESSAGE_REPLAYED", Unauthenticated, "this message's nonce was already used"),
    Forbidden => ("FORBIDDEN", Forbidden, "not allowed"),
    AccountDisabled => ("ACCOUNT_DISABLED", Forbidden, "this account is deactivated; ask your directory's administrator"),
    MfaRequired => ("MFA_REQUIRED", Unauthenticated, "this account signs in with a second factor: send the ticket and a code to POST /login/mfa"),
    InvalidMfaCode => ("INVALID_MFA_CODE", Unauthenticated, "the code is wrong, expired or already used"),
    InvalidMfaTicket => ("INVALID_MFA_TICKET", Unauthenticated, "the sign-in ticket is unknown, used, expired or out of tries; sign in again"),
    TotpAlreadyEnabled => ("TOTP_ALREADY_ENABLED", Conflict, "an authenticator app is set up already; remove it first"),
    InvalidPasskey => ("INVALID_PASSKEY", Unauthenticated, "the passkey was not accepted: its answer is not for this site or this request, or it is not registered"),
    InvalidLink => ("INVALID_LINK", Invalid, "the link is unknown, used or expired; ask for a new one"),
    MailDisabled => ("MAIL_DISABLED", NotFound, "this server sends no mail (smtp.host is not set): ask an operator"),
    WebhookTargetRefused => ("WEBHOOK_TARGET_REFUSED", Invalid, "webhooks may not reach this address: it is loopback, private, link-local or metadata, and not in webhooks.allowed_networks"),
    EmptyUpload => ("EMPTY_UPLOAD", Invalid, "the upload contained no image bytes"),
    UnsupportedImageType => ("UNSUPPORTED_IMAGE_TYPE", Invalid, "only PNG, JPEG, GIF and WebP images are accepted"),
    CorruptImage => ("CORRUPT_IMAGE", Invalid, "the image could not be decoded"),
    ImageTooManyPixels => ("IMAGE_TOO_MANY_PIXELS", Invalid, "the image has more pixels than allowed"),
    ImageTooLarge => ("IMAGE_TOO_LARGE", TooLarge, "the image is larger than the upload limit"),
    SanitizedTooLarge => ("SANITIZED_TOO_LARGE", TooLarge, "the image would be larger once sanitized than it was uploaded"),
    RequestTooLarge => ("REQUEST_TOO_LARGE", TooLarge, "the request body is larger than allowed"),
    RequestTimeout => ("REQUEST_TIMEOUT", Unavailable, "the request took longer than the server allows"),
    Overloaded => ("OVERLOADED", TooMany, "the server is busy; retry shortly"),
    TooManyAttempts => ("TOO_MANY_ATTEMPTS", TooMany, "too many attempts; retry later"),
    UploadsInProgress => ("UPLOADS_IN_PROGRESS", TooMany, "this user already has as many uploads in progress as allowed; retry when one ends"),
    QuotaExceeded => ("QUOTA_EXCEEDED", TooMany, "storing this image would pass the user's quota of images or bytes"),
    Unavailable => ("UNAVAILABLE", Unavailable, "a backing service is unavailable; retry shortly"),
    Internal => ("INTERNAL", Internal, "internal error"),
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A classified failure: a stable code, a message safe to show a client,
/// optionally the internal cause, which is logged and never sent, and for a
/// refusal by a budget, when the client may come back.
#[derive(Debug)]
pub struct Error {
    code: ErrorCode,
    message: String,
    source: Option<Source>,
    retry_after: Option<Duration>,
}

impl Error {
    /// An error with the code's default client message.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            message: code.default_message().to_owned(),
            source: None,
            retry_after: None,
        }
    }

    /// An error with a specific client-facing message.
    pub fn with_message(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            source: None,
            retry_after: None,
        }
    }

    /// A failure of infrastructure: the cause is kept for the log, the client
    /// sees only the code's default message.
    pub fn from_source(
        code: ErrorCode,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Self {
            code,
            message: code.default_message().to_owned(),
            source: Some(source.into()),
            retry_after: None,
        }
    }

    pub fn unavailable(source: impl Into<Source>) -> Self {
        Self::from_source(ErrorCode::Unavailable, source)
    }

    pub fn internal(source: impl Into<Source>) -> Self {
        Self::from_source(ErrorCode::Internal, source)
    }

    /// `TOO_MANY_ATTEMPTS` from a budget that has room again after `wait`:
    /// the use case that spent it knows the wait, and every protocol tells
    /// the client (HTTP's `Retry-After`, the SOAP fault's).
    pub fn too_many_attempts(wait: Duration) -> Self {
        Self::new(ErrorCode::TooManyAttempts).with_retry_after(wait)
    }

    /// The same error, telling the client to come back after `wait`.
    pub fn with_retry_after(mut self, wait: Duration) -> Self {
        self.retry_after = Some(wait);
        self
    }

    /// When the client may come back, if a budget said so.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn kind(&self) -> ErrorKind {
        self.code.kind()
    }

    /// The message that is safe to show a client.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The internal cause, for logs only.
    pub fn internal_cause(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)?;
        if let Some(source) = &self.source {
            write!(f, " ({source})")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn std::error::Error + 'static))
    }
}

impl From<ErrorCode> for Error {
    fn from(code: ErrorCode) -> Self {
        Error::new(code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_upper_snake_case() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let s = code.as_str();
            assert!(seen.insert(s), "duplicate code {s}");
            assert!(
                s.chars().all(|c| c.is_ascii_uppercase() || c == '_'),
                "{s} is not UPPER_SNAKE_CASE"
            );
        }
    }

    /// docs/ERRORS.md is what client developers read: it must list exactly the
    /// codes the code has, each with its kind.
    #[test]
    fn docs_table_matches_the_codes() {
        let doc = include_str!("../../docs/ERRORS.md");
        let documented: Vec<(String, String)> = doc
            .lines()
            .filter_map(|line| {
                let cells: Vec<&str> = line.split('|').map(str::trim).collect();
                // | `CODE` | Kind | meaning |
                let code = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                let kind = cells.get(2)?;
                Some((code.to_owned(), (*kind).to_owned()))
            })
            .collect();
        let actual: Vec<(String, String)> = ErrorCode::ALL
            .iter()
            .map(|c| (c.as_str().to_owned(), c.kind().as_str().to_owned()))
            .collect();
        assert_eq!(documented, actual);
    }

    #[test]
    fn a_budget_refusal_carries_its_wait() {
        let err = Error::too_many_attempts(Duration::from_secs(7));
        assert_eq!(err.code(), ErrorCode::TooManyAttempts);
        assert_eq!(err.message(), ErrorCode::TooManyAttempts.default_message());
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
        assert_eq!(Error::new(ErrorCode::TooManyAttempts).retry_after(), None);
    }

    #[test]
    fn internal_cause_is_not_in_the_client_message() {
        let err = Error::unavailable(std::io::Error::other("connection refused to 10.0.0.5"));
        assert_eq!(err.code(), ErrorCode::Unavailable);
        assert!(!err.message().contains("10.0.0.5"));
        assert!(
            err.to_string().contains("10.0.0.5"),
            "the log line keeps it"
        );
    }
}
