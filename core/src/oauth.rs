//! OAuth 2.0 clients and the grants that need no browser: client
//! credentials (RFC 6749 §4.4), token introspection (RFC 7662) and
//! revocation (RFC 7009).
//!
//! A client is registered by an operator (`hub clients create`) and gets an
//! id and, when confidential, a secret shown once. The secret is 32 random
//! bytes, so it is stored as its SHA-256 digest: a slow password hash would
//! add nothing against guessing 256 bits and would cost every grant a hash.
//!
//! A client-credentials access token is a JWT (RFC 9068, `typ: at+jwt`)
//! signed with the hub's token key. It names the client and its scopes, and
//! no user or session, so every user-token check refuses it. A resource
//! server takes it through [`OAuth::machine`], which also asks the store
//! whether the client still exists and the token was not revoked.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::authentication::Authentication;
use crate::error::{Error, ErrorCode, ErrorKind};
use crate::ports::{Clock, SessionRepository};
use crate::session::SessionId;
use crate::token::{ClientPrincipal, Tokens};

/// Every scope polyhub grants. A request naming another is `invalid_scope`.
pub const SCOPES: &[&str] = &[
    "openid",
    "profile",
    "email",
    "offline_access",
    "images:read",
    "images:write",
    "events:read",
    "scim",
];

/// The scopes that speak for a user; a client-credentials token names no
/// user, so it never carries them.
const USER_SCOPES: &[&str] = &["openid", "profile", "email", "offline_access"];

/// A set of known scopes, written space-separated (RFC 6749 §3.3).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scopes(BTreeSet<&'static str>);

impl Scopes {
    /// Space-separated scope tokens; an unknown one is an error naming it.
    pub fn parse(text: &str) -> Result<Self, OAuthError> {
        Self::from_list(text.split(' ').filter(|s| !s.is_empty()))
    }

    pub fn from_list<I, S>(scopes: I) -> Result<Self, OAuthError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut set = BTreeSet::new();
        for scope in scopes {
            let scope = scope.as_ref();
            let known = SCOPES.iter().find(|s| **s == scope).ok_or_else(|| {
                OAuthError::new(
                    OAuthErrorCode::InvalidScope,
                    format!(
                        "unknown scope {:?}; polyhub grants {}",
                        truncated(scope),
                        SCOPES.join(" ")
                    ),
                )
            })?;
            set.insert(*known);
        }
        Ok(Self(set))
    }

    pub fn contains(&self, scope: &str) -> bool {
        self.0.contains(scope)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn is_subset(&self, other: &Self) -> bool {
        self.0.is_subset(&other.0)
    }

    pub fn iter(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.0.iter().copied()
    }

    /// Without the scopes that speak for a user.
    fn machine_only(&self) -> Self {
        Self(
            self.0
                .iter()
                .copied()
                .filter(|s| !USER_SCOPES.contains(s))
                .collect(),
        )
    }
}

impl std::fmt::Display for Scopes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let joined: Vec<&str> = self.0.iter().copied().collect();
        f.write_str(&joined.join(" "))
    }
}

/// The first 64 characters of something a client sent, for a message.
fn truncated(text: &str) -> String {
    text.chars().take(64).collect()
}

/// A client's id: a UUID v7 when polyhub makes it; read back as 1 to 64
/// characters of RFC 3986's unreserved set.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ClientId(String);

impl ClientId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7().to_string())
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let ok = !text.is_empty()
            && text.len() <= 64
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
        if ok {
            Ok(Self(text.to_owned()))
        } else {
            Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a client id is 1 to 64 letters, digits, '-', '.', '_' or '~'",
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The grants a client may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum GrantType {
    AuthorizationCode,
    RefreshToken,
    ClientCredentials,
}

impl GrantType {
    pub const ALL: [Self; 3] = [
        Self::AuthorizationCode,
        Self::RefreshToken,
        Self::ClientCredentials,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthorizationCode => "authorization_code",
            Self::RefreshToken => "refresh_token",
            Self::ClientCredentials => "client_credentials",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.as_str() == text)
    }
}

/// How a client's ID tokens are signed (its `id_token_signed_response_alg`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum IdTokenAlg {
    /// RSA, what OpenID Connect Discovery requires every provider to offer.
    #[default]
    Rs256,
    /// Ed25519, with the key that signs access tokens.
    EdDsa,
}

impl IdTokenAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::EdDsa => "EdDSA",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        [Self::Rs256, Self::EdDsa]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// A confidential client's secret, shown once when made.
pub struct ClientSecret(String);

impl std::fmt::Debug for ClientSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientSecret(..)")
    }
}

impl ClientSecret {
    /// 32 bytes from the operating system, base64url (43 characters).
    pub fn generate() -> Result<Self, Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)
            .map_err(|e| Error::internal(format!("no randomness for a client secret: {e}")))?;
        Ok(Self(B64URL.encode(bytes)))
    }

    /// The secret itself, to show its owner once.
    pub fn shown(&self) -> &str {
        &self.0
    }

    pub fn digest(&self) -> SecretDigest {
        SecretDigest::of(&self.0)
    }
}

/// What is stored of a client secret: its SHA-256.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretDigest([u8; 32]);

impl std::fmt::Debug for SecretDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretDigest(..)")
    }
}

impl SecretDigest {
    pub fn of(secret: &str) -> Self {
        Self(Sha256::digest(secret.as_bytes()).into())
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `presented` is the secret, in time independent of where
    /// they differ.
    pub fn matches(&self, presented: &str) -> bool {
        Self::of(presented).0.ct_eq(&self.0).into()
    }
}

/// A registered client.
#[derive(Debug, Clone)]
pub struct OAuthClient {
    pub id: ClientId,
    pub name: String,
    /// `None` for a public client (a browser or mobile app keeps no secret).
    pub secret: Option<SecretDigest>,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    /// Consent is not asked for a first-party client.
    pub first_party: bool,
    pub grant_types: Vec<GrantType>,
    /// The most a token of this client may carry.
    pub scopes: Scopes,
    pub id_token_alg: IdTokenAlg,
    pub created_at: OffsetDateTime,
    pub secret_rotated_at: Option<OffsetDateTime>,
}

impl OAuthClient {
    pub fn is_public(&self) -> bool {
        self.secret.is_none()
    }

    pub fn allows(&self, grant: GrantType) -> bool {
        self.grant_types.contains(&grant)
    }

    /// Its JSON for operators (`hub clients list`); never the secret.
    pub fn to_json(&self) -> Value {
        let rfc3339 = |t: OffsetDateTime| {
            t.format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default()
        };
        json!({
            "client_id": self.id.as_str(),
            "name": self.name,
            "public": self.is_public(),
            "first_party": self.first_party,
            "redirect_uris": self.redirect_uris,
            "post_logout_redirect_uris": self.post_logout_redirect_uris,
            "grant_types": self.grant_types.iter().map(|g| g.as_str()).collect::<Vec<_>>(),
            "scope": self.scopes.to_string(),
            "id_token_signed_response_alg": self.id_token_alg.as_str(),
            "token_endpoint_auth_method": if self.is_public() { "none" } else { "client_secret_basic" },
            "created_at": rfc3339(self.created_at),
            "secret_rotated_at": self.secret_rotated_at.map(rfc3339),
        })
    }
}

/// What an operator asks for when registering a client.
#[derive(Debug, Clone, Default)]
pub struct NewClient {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub post_logout_redirect_uris: Vec<String>,
    pub public: bool,
    pub first_party: bool,
    /// Empty: `authorization_code` and `refresh_token`.
    pub grant_types: Vec<GrantType>,
    /// Empty: `openid profile email offline_access`.
    pub scopes: Vec<String>,
    pub id_token_alg: IdTokenAlg,
}

/// Checks a redirect URI as registered: absolute, no fragment, https, or
/// http on a loopback host (RFC 8252 §7.3) or a private-use scheme of a
/// native app (`com.example.app:/callback`, RFC 8252 §7.1).
pub fn check_redirect_uri(uri: &str) -> Result<(), Error> {
    let refuse = |why: &str| {
        Err(Error::with_message(
            ErrorCode::InvalidRequest,
            format!("redirect URI {:?}: {why}", truncated(uri)),
        ))
    };
    if uri.len() > 2000 {
        return refuse("longer than 2000 characters");
    }
    if uri.contains('#') {
        return refuse("a redirect URI has no fragment (RFC 6749 §3.1.2)");
    }
    if uri.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return refuse("spaces and control characters are not allowed");
    }
    let Some((scheme, rest)) = uri.split_once(':') else {
        return refuse("not an absolute URI");
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme.is_empty()
        || !scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        || !scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
    {
        return refuse("not an absolute URI");
    }
    match scheme.as_str() {
        "https" | "http" => {
            let Some(authority) = rest.strip_prefix("//") else {
                return refuse("an http(s) URI names a host");
            };
            let authority = authority.split(['/', '?']).next().unwrap_or_default();
            if authority.is_empty() || authority.contains('@') {
                return refuse("an http(s) URI names a host and no user");
            }
            let host = match authority.strip_prefix('[') {
                Some(v6) => v6.split(']').next().unwrap_or_default(),
                None => authority.split(':').next().unwrap_or_default(),
            };
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback());
            if scheme == "http" && !loopback {
                return refuse("http is only for loopback hosts; use https");
            }
            Ok(())
        }
        "javascript" | "data" | "file" | "vbscript" | "blob" | "about" => {
            refuse("this scheme cannot be a redirect URI")
        }
        // A native app's private-use scheme: reverse domain (RFC 8252 §7.1).
        _ if scheme.contains('.') => Ok(()),
        _ => refuse(
            "use https, http on loopback, or a reverse-domain scheme such as com.example.app",
        ),
    }
}

impl NewClient {
    fn build(self, now: OffsetDateTime) -> Result<(OAuthClient, Option<ClientSecret>), Error> {
        let name = self.name.trim().to_owned();
        if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a client's name is 1 to 100 characters, no control characters",
            ));
        }
        let mut grant_types = if self.grant_types.is_empty() {
            vec![GrantType::AuthorizationCode, GrantType::RefreshToken]
        } else {
            self.grant_types
        };
        grant_types.sort();
        grant_types.dedup();
        if self.public && grant_types.contains(&GrantType::ClientCredentials) {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a public client keeps no secret, so it cannot use client_credentials",
            ));
        }
        if grant_types.contains(&GrantType::AuthorizationCode) && self.redirect_uris.is_empty() {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a client using authorization_code needs at least one redirect URI",
            ));
        }
        let too_many = |what: &str| {
            Error::with_message(
                ErrorCode::InvalidRequest,
                format!("at most {MAX_URIS} {what}"),
            )
        };
        if self.redirect_uris.len() > MAX_URIS {
            return Err(too_many("redirect URIs"));
        }
        if self.post_logout_redirect_uris.len() > MAX_URIS {
            return Err(too_many("post-logout redirect URIs"));
        }
        for uri in self
            .redirect_uris
            .iter()
            .chain(&self.post_logout_redirect_uris)
        {
            check_redirect_uri(uri)?;
        }
        let scopes = if self.scopes.is_empty() {
            Scopes::parse("openid profile email offline_access")
        } else {
            Scopes::from_list(&self.scopes)
        }
        .map_err(|e| Error::with_message(ErrorCode::InvalidRequest, e.description))?;
        let secret = if self.public {
            None
        } else {
            Some(ClientSecret::generate()?)
        };
        let dedup = |mut uris: Vec<String>| {
            let mut seen = BTreeSet::new();
            uris.retain(|u| seen.insert(u.clone()));
            uris
        };
        let client = OAuthClient {
            id: ClientId::generate(),
            name,
            secret: secret.as_ref().map(ClientSecret::digest),
            redirect_uris: dedup(self.redirect_uris),
            post_logout_redirect_uris: dedup(self.post_logout_redirect_uris),
            first_party: self.first_party,
            grant_types,
            scopes,
            id_token_alg: self.id_token_alg,
            created_at: now,
            secret_rotated_at: None,
        };
        Ok((client, secret))
    }
}

/// Redirect URIs (and post-logout ones) a client may register.
const MAX_URIS: usize = 20;

/// The clients' store.
#[async_trait::async_trait]
pub trait OAuthClients: Send + Sync {
    async fn create(&self, client: &OAuthClient) -> Result<(), Error>;
    async fn get(&self, id: &ClientId) -> Result<Option<OAuthClient>, Error>;
    async fn list(&self) -> Result<Vec<OAuthClient>, Error>;
    /// Whether it existed. Its revoked tokens go with it.
    async fn delete(&self, id: &ClientId) -> Result<bool, Error>;
    /// Whether it existed.
    async fn set_secret(
        &self,
        id: &ClientId,
        secret: &SecretDigest,
        now: OffsetDateTime,
    ) -> Result<bool, Error>;
    /// Remembers that the token `jti` of `client` is revoked until it
    /// would have expired; forgets revocations that outlived their token.
    async fn revoke_token(
        &self,
        client: &ClientId,
        jti: Uuid,
        expires_at: OffsetDateTime,
    ) -> Result<(), Error>;
    /// Whether `client` still exists, its token `jti` (issued at
    /// `issued_at`) is not revoked, and its secret was not rotated after.
    async fn token_active(
        &self,
        client: &ClientId,
        jti: Uuid,
        issued_at: OffsetDateTime,
    ) -> Result<bool, Error>;
    /// The sessions of `client`'s OpenID Connect grants.
    async fn grant_sessions(&self, client: &ClientId) -> Result<Vec<SessionId>, Error>;
}

/// The errors of RFC 6749 §5.2, RFC 7009 §2.2.1 and RFC 7662, as the
/// OAuth endpoints answer them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OAuthErrorCode {
    InvalidRequest,
    InvalidClient,
    InvalidGrant,
    UnauthorizedClient,
    UnsupportedGrantType,
    InvalidScope,
    UnsupportedTokenType,
    ServerError,
    TemporarilyUnavailable,
    // The authorization endpoint's own (RFC 6749 §4.1.2.1, OIDC Core §3.1.2.6).
    UnsupportedResponseType,
    AccessDenied,
    LoginRequired,
    ConsentRequired,
}

impl OAuthErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::InvalidClient => "invalid_client",
            Self::InvalidGrant => "invalid_grant",
            Self::UnauthorizedClient => "unauthorized_client",
            Self::UnsupportedGrantType => "unsupported_grant_type",
            Self::InvalidScope => "invalid_scope",
            Self::UnsupportedTokenType => "unsupported_token_type",
            Self::ServerError => "server_error",
            Self::TemporarilyUnavailable => "temporarily_unavailable",
            Self::UnsupportedResponseType => "unsupported_response_type",
            Self::AccessDenied => "access_denied",
            Self::LoginRequired => "login_required",
            Self::ConsentRequired => "consent_required",
        }
    }
}

/// An OAuth error: its code and a description a developer can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    pub code: OAuthErrorCode,
    pub description: String,
}

impl OAuthError {
    pub fn new(code: OAuthErrorCode, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
    }
}

impl From<Error> for OAuthError {
    /// The store's failures; anything else from below is a server error
    /// whose cause is logged, never sent.
    fn from(error: Error) -> Self {
        match error.kind() {
            ErrorKind::Unavailable | ErrorKind::TooMany => Self::new(
                OAuthErrorCode::TemporarilyUnavailable,
                "the service is unavailable; try again shortly",
            ),
            ErrorKind::Invalid => Self::new(OAuthErrorCode::InvalidRequest, error.message()),
            _ => {
                tracing::error!(error = %error, "an OAuth request failed");
                Self::new(
                    OAuthErrorCode::ServerError,
                    "the request could not be served",
                )
            }
        }
    }
}

/// How a client authenticated at an endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuthMethod {
    /// HTTP Basic: a refusal then carries `WWW-Authenticate` (§5.2).
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
    /// `client_id` alone: a public client.
    None,
}

/// The client's credentials as presented.
pub struct PresentedClient {
    pub id: String,
    pub secret: Option<String>,
    pub method: ClientAuthMethod,
}

impl std::fmt::Debug for PresentedClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresentedClient")
            .field("id", &self.id)
            .field("method", &self.method)
            .finish_non_exhaustive()
    }
}

/// A token endpoint's answer (RFC 6749 §5.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenResponse {
    pub access_token: String,
    pub expires_in: u64,
    pub scope: Scopes,
}

/// The settings of the OAuth endpoints.
#[derive(Debug, Clone)]
pub struct OAuthSettings {
    /// The issuer URL (`oidc.issuer`): `iss` of what is issued here.
    pub issuer: String,
    /// How long a client-credentials access token lasts.
    pub access_token_lifetime: Duration,
}

/// Registering and managing clients: what operators do (`hub clients`);
/// needs no token keys.
#[derive(Clone)]
pub struct ClientRegistry {
    clients: Arc<dyn OAuthClients>,
    sessions: Arc<dyn SessionRepository>,
    clock: Arc<dyn Clock>,
    max_clients: usize,
}

impl std::fmt::Debug for ClientRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistry")
            .field("max_clients", &self.max_clients)
            .finish_non_exhaustive()
    }
}

impl ClientRegistry {
    pub fn new(
        clients: Arc<dyn OAuthClients>,
        sessions: Arc<dyn SessionRepository>,
        clock: Arc<dyn Clock>,
        max_clients: usize,
    ) -> Self {
        Self {
            clients,
            sessions,
            clock,
            max_clients,
        }
    }

    /// Registers a client; its secret (for a confidential one) is returned
    /// once and only its digest is kept.
    pub async fn create_client(
        &self,
        new: NewClient,
    ) -> Result<(OAuthClient, Option<ClientSecret>), Error> {
        let (client, secret) = new.build(self.clock.now())?;
        if self.clients.list().await?.len() >= self.max_clients {
            return Err(Error::with_message(
                ErrorCode::QuotaExceeded,
                format!(
                    "there are already {} clients (oidc.max_clients); delete one first",
                    self.max_clients
                ),
            ));
        }
        self.clients.create(&client).await?;
        tracing::info!(client_id = %client.id, name = %client.name, "OAuth client registered");
        Ok((client, secret))
    }

    pub async fn clients(&self) -> Result<Vec<OAuthClient>, Error> {
        self.clients.list().await
    }

    /// Deletes a client: its client-credentials tokens stop, and so do
    /// its grants (their sessions are revoked).
    pub async fn delete_client(&self, id: &ClientId) -> Result<(), Error> {
        let grants = self.clients.grant_sessions(id).await?;
        if !self.clients.delete(id).await? {
            return Err(no_such_client(id));
        }
        let now = self.clock.now();
        for session in &grants {
            self.sessions
                .revoke(*session, now, "client deleted")
                .await?;
        }
        tracing::info!(client_id = %id, grants = grants.len(), "OAuth client deleted");
        Ok(())
    }

    /// A new secret; the old one stops working at once.
    pub async fn rotate_secret(&self, id: &ClientId) -> Result<ClientSecret, Error> {
        let client = self
            .clients
            .get(id)
            .await?
            .ok_or_else(|| no_such_client(id))?;
        if client.is_public() {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "a public client has no secret",
            ));
        }
        let secret = ClientSecret::generate()?;
        if !self
            .clients
            .set_secret(id, &secret.digest(), self.clock.now())
            .await?
        {
            return Err(no_such_client(id));
        }
        tracing::info!(client_id = %id, "OAuth client secret rotated");
        Ok(secret)
    }
}

/// The OAuth use cases of clients: the grants, introspection and revocation.
#[derive(Clone)]
pub struct OAuth {
    clients: Arc<dyn OAuthClients>,
    tokens: Arc<Tokens>,
    authentication: Authentication,
    clock: Arc<dyn Clock>,
    settings: OAuthSettings,
}

impl std::fmt::Debug for OAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl OAuth {
    pub fn new(
        clients: Arc<dyn OAuthClients>,
        authentication: Authentication,
        clock: Arc<dyn Clock>,
        settings: OAuthSettings,
    ) -> Self {
        Self {
            clients,
            tokens: authentication.tokens_arc(),
            authentication,
            clock,
            settings,
        }
    }

    pub fn settings(&self) -> &OAuthSettings {
        &self.settings
    }

    /// The registered client `id`, if any.
    pub async fn client(&self, id: &ClientId) -> Result<Option<OAuthClient>, Error> {
        self.clients.get(id).await
    }

    // Clients.

    /// The client behind `presented`: a confidential client must present
    /// its secret, a public one none. Every failure is the same
    /// `invalid_client` (RFC 6749 §5.2), so nothing tells which clients exist.
    pub async fn authenticate_client(
        &self,
        presented: &PresentedClient,
    ) -> Result<OAuthClient, OAuthError> {
        let refused = || {
            OAuthError::new(
                OAuthErrorCode::InvalidClient,
                "client authentication failed: unknown client, wrong secret or wrong method",
            )
        };
        let id = ClientId::parse(&presented.id).map_err(|_| refused())?;
        let client = self.clients.get(&id).await?.ok_or_else(refused)?;
        let accepted = match (&client.secret, &presented.secret) {
            (Some(digest), Some(secret)) => digest.matches(secret),
            (None, None) => true,
            _ => false,
        };
        if !accepted {
            tracing::info!(client_id = %id, method = ?presented.method, "client authentication refused");
            return Err(refused());
        }
        Ok(client)
    }

    /// RFC 6749 §4.4: an access token for the client itself, with the
    /// scopes asked for (all it may have when none are named).
    pub fn client_credentials(
        &self,
        client: &OAuthClient,
        scope: Option<&str>,
    ) -> Result<TokenResponse, OAuthError> {
        if client.is_public() || !client.allows(GrantType::ClientCredentials) {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "this client is not registered for the client_credentials grant",
            ));
        }
        let allowed = client.scopes.machine_only();
        let scopes = match scope {
            None => allowed.clone(),
            Some(text) => Scopes::parse(text)?,
        };
        if !scopes.is_subset(&allowed) {
            return Err(OAuthError::new(
                OAuthErrorCode::InvalidScope,
                format!(
                    "this client may ask for: {} (openid, profile, email and offline_access need a user)",
                    if allowed.is_empty() {
                        "nothing".to_owned()
                    } else {
                        allowed.to_string()
                    }
                ),
            ));
        }
        let issued = self.tokens.issue_client(
            &self.settings.issuer,
            client.id.as_str(),
            &scopes,
            self.settings.access_token_lifetime,
            self.clock.now(),
        )?;
        Ok(TokenResponse {
            access_token: issued.token,
            expires_in: issued.expires_in,
            scope: scopes,
        })
    }

    /// A client-credentials token a resource server was handed, once its
    /// client still exists and the token is not revoked.
    pub async fn machine(&self, token: &str) -> Result<ClientPrincipal, Error> {
        let principal =
            self.tokens
                .verify_client(&self.settings.issuer, token, self.clock.now())?;
        self.ensure_active(&principal).await?;
        Ok(principal)
    }

    /// `INVALID_TOKEN` when a verified client token was revoked or its
    /// client deleted since it was issued.
    pub async fn ensure_active(&self, principal: &ClientPrincipal) -> Result<(), Error> {
        let client = ClientId::parse(&principal.client_id)
            .map_err(|_| Error::new(ErrorCode::InvalidToken))?;
        // The jti is a UUID v7: its time is the issue's to the millisecond,
        // finer than `iat`, so a rotation is told from a token of its second.
        let issued_at = principal
            .jti
            .get_timestamp()
            .and_then(|t| {
                let (secs, nanos) = t.to_unix();
                OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(secs) * 1_000_000_000 + i128::from(nanos),
                )
                .ok()
            })
            .unwrap_or(principal.issued_at);
        if self
            .clients
            .token_active(&client, principal.jti, issued_at)
            .await?
        {
            Ok(())
        } else {
            Err(Error::with_message(
                ErrorCode::InvalidToken,
                "the token was revoked, its client deleted or its secret rotated",
            ))
        }
    }

    /// RFC 7662: what `token` is, for the authenticated `client`. A client
    /// learns only about its own tokens: its client-credentials tokens and
    /// the access tokens of its grants. Anything else, and any token that
    /// is not active for whatever reason, is `{"active": false}` alone.
    pub async fn introspect(&self, client: &OAuthClient, token: &str) -> Result<Value, OAuthError> {
        let inactive = json!({ "active": false });
        match self.machine(token).await {
            Ok(machine) if machine.client_id == client.id.as_str() => {
                return Ok(json!({
                    "active": true,
                    "token_type": "Bearer",
                    "client_id": machine.client_id,
                    "sub": machine.client_id,
                    "scope": machine.scopes.to_string(),
                    "iss": self.settings.issuer,
                    "aud": self.tokens.settings().audience,
                    "iat": machine.issued_at.unix_timestamp(),
                    "exp": machine.expires_at.unix_timestamp(),
                    "jti": machine.jti.to_string(),
                }));
            }
            Ok(_) => return Ok(inactive),
            Err(e) if e.kind() == ErrorKind::Unavailable => return Err(e.into()),
            Err(_) => {}
        }
        match self.authentication.authenticate_app(token).await {
            Ok(app) if app.client_id == client.id.as_str() => Ok(json!({
                "active": true,
                "token_type": "Bearer",
                "client_id": app.client_id,
                "scope": app.scopes.to_string(),
                "sub": app.principal.user_id.to_string(),
                "sid": app.principal.session_id.to_string(),
                "iss": self.tokens.settings().issuer,
                "aud": self.tokens.settings().audience,
                "exp": app.principal.expires_at.unix_timestamp(),
            })),
            Ok(_) => Ok(inactive),
            Err(e) if e.kind() == ErrorKind::Unavailable => Err(e.into()),
            Err(_) => Ok(inactive),
        }
    }

    /// The app (and user) an OpenID Connect grant's access token speaks for,
    /// while the grant lasts.
    pub async fn app(&self, token: &str) -> Result<crate::token::AppPrincipal, Error> {
        self.authentication.authenticate_app(token).await
    }

    /// RFC 7009: `token` stops working. A token that is invalid or expired
    /// already is not an error (§2.2); one issued to another client is.
    pub async fn revoke(&self, client: &OAuthClient, token: &str) -> Result<(), OAuthError> {
        let Ok(machine) = self
            .tokens
            .verify_client(&self.settings.issuer, token, self.clock.now())
        else {
            return Ok(());
        };
        if machine.client_id != client.id.as_str() {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "this token was not issued to the client revoking it",
            ));
        }
        self.clients
            .revoke_token(&client.id, machine.jti, machine.expires_at)
            .await?;
        tracing::info!(client_id = %client.id, jti = %machine.jti, "access token revoked");
        Ok(())
    }
}

fn no_such_client(id: &ClientId) -> Error {
    Error::with_message(ErrorCode::NotFound, format!("no client {id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_parse_and_refuse_unknown_ones() {
        let scopes = Scopes::parse("images:read  openid").unwrap();
        assert_eq!(scopes.to_string(), "images:read openid");
        let error = Scopes::parse("images:read admin").unwrap_err();
        assert_eq!(error.code, OAuthErrorCode::InvalidScope);
        assert!(error.description.contains("\"admin\""));
        assert_eq!(scopes.machine_only().to_string(), "images:read");
    }

    #[test]
    fn redirect_uris_are_checked_as_registered() {
        for good in [
            "https://app.example/cb",
            "http://127.0.0.1:8080/cb",
            "http://localhost/cb",
            "http://[::1]:9/cb",
            "com.example.app:/oauth2redirect",
        ] {
            check_redirect_uri(good).unwrap_or_else(|e| panic!("{good}: {e}"));
        }
        for bad in [
            "http://app.example/cb",
            "https://app.example/cb#x",
            "/relative",
            "javascript:alert(1)",
            "https://user@app.example/cb",
            "https:app.example",
            "myapp:/cb",
            "https://app.example/a b",
        ] {
            assert!(check_redirect_uri(bad).is_err(), "{bad} was accepted");
        }
    }

    #[test]
    fn new_clients_are_consistent() {
        let now = OffsetDateTime::UNIX_EPOCH;
        let public_machine = NewClient {
            name: "x".into(),
            public: true,
            grant_types: vec![GrantType::ClientCredentials],
            ..NewClient::default()
        };
        assert!(public_machine.build(now).is_err());
        let code_without_uri = NewClient {
            name: "x".into(),
            ..NewClient::default()
        };
        assert!(code_without_uri.build(now).is_err());
        let (client, secret) = NewClient {
            name: " reports ".into(),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: vec!["images:read".into()],
            ..NewClient::default()
        }
        .build(now)
        .unwrap();
        let secret = secret.unwrap();
        assert_eq!(client.name, "reports");
        assert_eq!(secret.shown().len(), 43);
        assert!(client.secret.as_ref().unwrap().matches(secret.shown()));
        assert!(!client.secret.as_ref().unwrap().matches("nope"));
        assert!(!client.to_json().to_string().contains(secret.shown()));
    }
}
