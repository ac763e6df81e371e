//! The JSON bodies of rest-auth, as the OpenAPI document describes them.
//! Wire types stop here: handlers turn them into domain calls.

use hub_core::{Jwks, User};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use uuid::Uuid;

/// Sign in by username or by email (exactly one of the two) and password.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    #[schema(example = "alice", pattern = r"^[A-Za-z0-9._@+'!#^~-]{1,256}$")]
    pub username: Option<String>,
    #[schema(example = "alice@example.com", max_length = 254)]
    pub email: Option<String>,
    #[schema(example = "correct horse battery", max_length = 1024)]
    pub password: String,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct LoginResponse {
    /// An EdDSA-signed JWT; send it as `Authorization: Bearer <token>`.
    pub token: String,
    #[schema(example = "Bearer")]
    pub token_type: String,
    /// Seconds until the token expires.
    pub expires_in: u64,
    /// The session the token belongs to; logging out revokes it.
    pub session_id: Uuid,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterRequest {
    /// 1 to 256 characters of a-z, 0-9 and . _ - @ + ' ! # ^ ~ (case-insensitive).
    #[schema(example = "alice", pattern = r"^[A-Za-z0-9._@+'!#^~-]{1,256}$")]
    pub username: String,
    #[schema(
        example = "alice@example.com",
        max_length = 254,
        pattern = r"^[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$"
    )]
    pub email: String,
    /// 8 to 128 characters, not the username.
    #[schema(example = "correct horse battery", min_length = 8, max_length = 128)]
    pub password: String,
}

/// A profile change: `email`, `new_password`, or both; `current_password`
/// is required for either, and the change is applied all or nothing.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileUpdate {
    #[schema(max_length = 254)]
    pub email: Option<String>,
    pub current_password: Option<String>,
    #[schema(min_length = 8, max_length = 128)]
    pub new_password: Option<String>,
}

/// One user to import, with the password hash another system made (the
/// formats are listed in docs/OPERATIONS.md).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ImportUser {
    #[schema(example = "alice")]
    pub username: String,
    #[schema(example = "alice@example.com")]
    pub email: String,
    #[schema(example = "pbkdf2:sha256:600000$salt$hex", max_length = 1024)]
    pub password_hash: String,
    /// `user` (the default) or `admin`.
    pub role: Option<String>,
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub created_at: Option<OffsetDateTime>,
}

impl From<ImportUser> for hub_core::ImportRecord {
    fn from(user: ImportUser) -> Self {
        Self {
            username: user.username,
            email: user.email,
            password_hash: user.password_hash,
            role: user.role,
            created_at: user.created_at,
        }
    }
}

#[derive(Debug, Deserialize, ToSchema, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ImportOptions {
    /// Check everything, the database's uniqueness too, and keep nothing.
    #[serde(default)]
    pub dry_run: bool,
}

/// What an import did.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    pub imported: u64,
    /// Users whose username was already there (a repeated import adds none).
    pub already_present: u64,
    pub rejected: Vec<ImportRejection>,
    pub dry_run: bool,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportRejection {
    /// The user's place in the request's list, from 1.
    pub user: u64,
    pub reason: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    #[schema(example = "user")]
    pub role: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
}

/// A profile after a change.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProfileUpdated {
    #[serde(flatten)]
    pub profile: Profile,
    /// The new address a verification link was mailed to (mail on): the
    /// email changes when it is followed, within 30 minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_pending: Option<String>,
}

impl From<User> for Profile {
    fn from(user: User) -> Self {
        Self {
            id: user.id.as_uuid(),
            username: user.username.as_str().to_owned(),
            email: user.email.as_str().to_owned(),
            role: user.role.as_str().to_owned(),
            created_at: user.created_at,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DatabaseCheck {
    #[schema(example = "ok")]
    pub database: String,
    pub latency_ms: f64,
}

/// The hub's one error shape.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
    /// The request's id, also in the `x-request-id` header; quote it to operators.
    pub request_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable code from docs/ERRORS.md.
    #[schema(example = "INVALID_CREDENTIALS")]
    pub code: String,
    pub message: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "rest-auth")]
    pub service: String,
    #[schema(example = "OK")]
    pub status: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    pub service: String,
    /// `OK`, or `ERROR` (with HTTP 503) when a dependency is down.
    pub status: String,
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Each dependency's `{"status", "latency_ms"}`.
    #[schema(value_type = Object)]
    pub checks: serde_json::Value,
}

/// The public signing keys (RFC 7517), for anyone verifying our tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct JwkSet {
    pub keys: Vec<JsonWebKey>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct JsonWebKey {
    #[schema(example = "OKP")]
    pub kty: String,
    #[schema(example = "Ed25519")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    /// An RSA key's modulus (the ID tokens' RS256 key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    pub kid: String,
    #[schema(example = "EdDSA")]
    pub alg: String,
    #[serde(rename = "use")]
    #[schema(rename = "use", example = "sig")]
    pub use_: String,
}

impl From<Jwks> for JwkSet {
    fn from(jwks: Jwks) -> Self {
        Self {
            keys: jwks
                .keys
                .into_iter()
                .map(|k| JsonWebKey {
                    kty: k.kty,
                    crv: k.crv,
                    x: k.x,
                    n: k.n,
                    e: k.e,
                    kid: k.kid,
                    alg: k.alg,
                    use_: k.use_,
                })
                .collect(),
        }
    }
}

/// Bodies that carry a password or a token print only what is not secret.
macro_rules! redacted_debug {
    ($ty:ident { $($shown:ident),* }) => {
        impl std::fmt::Debug for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($shown), &self.$shown))*
                    .finish_non_exhaustive()
            }
        }
    };
}

redacted_debug!(LoginRequest { username, email });
redacted_debug!(LoginResponse {
    token_type,
    expires_in,
    session_id
});
redacted_debug!(RegisterRequest { username, email });
redacted_debug!(ProfileUpdate { email });
redacted_debug!(ImportUser { username, email });
