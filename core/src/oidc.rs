//! OpenID Connect: the authorization code flow with PKCE (RFC 6749 §4.1,
//! RFC 7636), ID tokens, refresh tokens with rotation and reuse detection,
//! userinfo and RP-initiated logout.
//!
//! One session truth: exchanging a code opens a polyhub session for the
//! app (a "grant"), beside the browser session that signed in, named after
//! the client on the devices page. The app's access tokens are that
//! session's tokens, so everything that ends sessions (logout, an admin's
//! revoke, a password or role change) ends the grant too; and ending the
//! grant (a reused refresh token or code, revocation, RP-initiated logout)
//! revokes the session, so its access tokens stop at once everywhere.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::Algorithm;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey};
use rsa::traits::PublicKeyParts;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::authentication::Authentication;
use crate::error::{Error, ErrorCode, ErrorKind};
use crate::oauth::{ClientId, IdTokenAlg, OAuthClient, OAuthError, OAuthErrorCode, Scopes};
use crate::ports::{Clock, User};
use crate::session::{ClientInfo, SessionId};
use crate::token::{Jwk, Principal};
use crate::user::UserId;

/// The RSA key that signs ID tokens (RS256, which OpenID Connect Discovery
/// requires every provider to offer).
pub struct IdTokenKey {
    signing: ring::signature::RsaKeyPair,
    kid: String,
    jwk: Jwk,
}

impl std::fmt::Debug for IdTokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdTokenKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}

impl IdTokenKey {
    /// A PKCS#8 PEM RSA private key of at least 2048 bits.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = rsa::RsaPrivateKey::from_pkcs8_pem(pem)
            .map_err(|e| key_error("the ID token key is not an RSA PKCS#8 PEM", e))?;
        if key.size() < 256 {
            return Err(Error::internal(
                "the ID token key is shorter than 2048 bits",
            ));
        }
        let der = key
            .to_pkcs8_der()
            .map_err(|e| key_error("encoding the ID token key", e))?;
        let signing = ring::signature::RsaKeyPair::from_pkcs8(der.as_bytes())
            .map_err(|e| key_error("the ID token key cannot sign", e))?;
        let n = B64URL.encode(key.n().to_bytes_be());
        let e = B64URL.encode(key.e().to_bytes_be());
        // RFC 7638: the required members, sorted, no spaces.
        let kid = B64URL.encode(Sha256::digest(
            format!(r#"{{"e":"{e}","kty":"RSA","n":"{n}"}}"#).as_bytes(),
        ));
        let jwk = Jwk {
            kty: "RSA".into(),
            crv: None,
            x: None,
            n: Some(n),
            e: Some(e),
            kid: kid.clone(),
            alg: "RS256".into(),
            use_: "sig".into(),
        };
        Ok(Self { signing, kid, jwk })
    }

    /// A new 2048-bit key from the operating system's randomness, as
    /// PKCS#8 PEM.
    pub fn generate_pem() -> Result<String, Error> {
        let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
            .map_err(|e| key_error("generating an RSA key", e))?;
        Ok(key
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .map_err(|e| key_error("encoding the RSA key", e))?
            .to_string())
    }

    pub fn jwk(&self) -> &Jwk {
        &self.jwk
    }

    /// `claims` as a compact RS256 JWS (RFC 7515) with this key's `kid`.
    fn sign(&self, claims: &Value) -> Result<String, Error> {
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": self.kid });
        let input = format!(
            "{}.{}",
            B64URL.encode(header.to_string()),
            B64URL.encode(claims.to_string())
        );
        let mut signature = vec![0u8; self.signing.public().modulus_len()];
        self.signing
            .sign(
                &ring::signature::RSA_PKCS1_SHA256,
                &ring::rand::SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|e| key_error("signing an ID token", e))?;
        Ok(format!("{input}.{}", B64URL.encode(signature)))
    }
}

/// The left half of the SHA-256 of `token`, base64url: `at_hash` (OIDC
/// Core §3.1.3.6) for RS256 and EdDSA alike.
pub fn at_hash(token: &str) -> String {
    let digest = Sha256::digest(token.as_bytes());
    B64URL.encode(&digest[..16])
}

/// S256 (RFC 7636 §4.2): base64url(SHA-256(verifier)).
pub fn s256(verifier: &str) -> String {
    B64URL.encode(Sha256::digest(verifier.as_bytes()))
}

/// A random single-use secret (a code or a refresh token): 32 bytes,
/// base64url; stored only as its SHA-256.
pub fn random_token() -> Result<String, Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| Error::internal(format!("no randomness for a token: {e}")))?;
    Ok(B64URL.encode(bytes))
}

pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// The parameters of an authorization request, as sent.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
    pub prompt: Option<String>,
    pub max_age: Option<String>,
    pub login_hint: Option<String>,
    pub response_mode: Option<String>,
    pub request: Option<String>,
    pub request_uri: Option<String>,
}

/// Why an authorization request is refused.
#[derive(Debug, Clone)]
pub enum AuthorizeRefusal {
    /// The client or the redirect URI cannot be trusted, so the browser is
    /// shown a page and never redirected (RFC 6749 §4.1.2.1).
    Page(String),
    /// Sent back to the client's (registered, exact) redirect URI.
    Redirect {
        redirect_uri: String,
        error: OAuthError,
        state: Option<String>,
    },
}

impl AuthorizeRefusal {
    /// Where the browser goes for a [`Self::Redirect`]; `None` for a page.
    pub fn location(&self, issuer: &str) -> Option<String> {
        match self {
            Self::Page(_) => None,
            Self::Redirect {
                redirect_uri,
                error,
                state,
            } => {
                let mut pairs = vec![
                    ("error", error.code.as_str().to_owned()),
                    ("error_description", error.description.clone()),
                ];
                if let Some(state) = state {
                    pairs.push(("state", state.clone()));
                }
                pairs.push(("iss", issuer.to_owned()));
                Some(with_query(redirect_uri, &pairs))
            }
        }
    }
}

/// `uri` with `pairs` appended to its query.
pub fn with_query(uri: &str, pairs: &[(&str, String)]) -> String {
    let query: String = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs.iter().map(|(k, v)| (*k, v.as_str())))
        .finish();
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{query}")
}

/// `prompt` (OIDC Core §3.1.2.1): what the user must be shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prompt {
    /// Whatever is needed.
    Default,
    /// Nothing: an error if sign-in or consent is needed.
    None,
    /// Sign in again even with a session.
    Login,
    /// Ask for consent even when given before.
    Consent,
}

/// A checked authorization request.
#[derive(Debug, Clone)]
pub struct AuthorizationRequest {
    pub client: OAuthClient,
    pub redirect_uri: String,
    pub scopes: Scopes,
    pub state: Option<String>,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub prompt: Prompt,
    pub max_age: Option<u64>,
    pub login_hint: Option<String>,
}

/// What the authorize step does for a browser.
#[derive(Debug)]
pub enum Next {
    /// Send the browser to the sign-in page (it comes back here).
    SignIn,
    /// Ask the user to allow the client these scopes.
    Consent,
    /// Redirect to the client with a code (the location).
    Redirect(String),
}

/// A code as stored.
#[derive(Debug, Clone)]
pub struct StoredCode {
    pub digest: [u8; 32],
    pub client_id: ClientId,
    pub user_id: UserId,
    /// The browser session that signed in and allowed it.
    pub browser_session: SessionId,
    pub redirect_uri: String,
    pub scopes: Scopes,
    pub nonce: Option<String>,
    pub code_challenge: Option<String>,
    pub auth_time: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

/// What taking a code found.
#[derive(Debug)]
pub enum TakenCode {
    /// Fresh: now marked used.
    Fresh(StoredCode),
    /// Presented before: what its first exchange opened, to revoke.
    Used(Option<SessionId>),
    Missing,
}

/// An app's grant: a session opened for a client.
#[derive(Debug, Clone)]
pub struct Grant {
    pub session_id: SessionId,
    pub client_id: ClientId,
    pub user_id: UserId,
    pub scopes: Scopes,
    pub auth_time: OffsetDateTime,
}

/// What rotating a refresh token found.
#[derive(Debug)]
pub enum Rotation {
    /// The token was current: it is now used, its successor stored.
    Rotated(Grant),
    /// The token was used before: the grant it belongs to, to revoke.
    Reused(SessionId),
    /// Another client's token: nothing changed.
    OtherClient,
    Missing,
}

/// Codes, grants, refresh tokens and consents.
#[async_trait::async_trait]
pub trait OidcStore: Send + Sync {
    async fn save_code(&self, code: &StoredCode) -> Result<(), Error>;
    /// Marks `client`'s code used and returns it, once; another client's
    /// code is `Missing` (and stays as it was).
    async fn take_code(
        &self,
        digest: &[u8; 32],
        client: &ClientId,
        now: OffsetDateTime,
    ) -> Result<TakenCode, Error>;
    /// Records the grant a code's exchange opened and its first refresh
    /// token (if any), in one transaction.
    async fn save_grant(
        &self,
        code: &[u8; 32],
        grant: &Grant,
        refresh: Option<&[u8; 32]>,
        now: OffsetDateTime,
    ) -> Result<(), Error>;
    async fn grant(&self, session: SessionId) -> Result<Option<Grant>, Error>;
    /// Replaces `client`'s current refresh token `old` by `new`, once.
    async fn rotate_refresh(
        &self,
        client: &ClientId,
        old: &[u8; 32],
        new: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Rotation, Error>;
    /// The grant a refresh token (current or used) belongs to.
    async fn refresh_grant(&self, token: &[u8; 32]) -> Result<Option<Grant>, Error>;
    /// The scopes `user` allowed `client`, if any.
    async fn consent(&self, user: UserId, client: &ClientId) -> Result<Option<Scopes>, Error>;
    async fn save_consent(
        &self,
        user: UserId,
        client: &ClientId,
        scopes: &Scopes,
        now: OffsetDateTime,
    ) -> Result<(), Error>;
    /// The clients `user` allowed, with the scopes and when.
    async fn consents(
        &self,
        user: UserId,
    ) -> Result<Vec<(OAuthClient, Scopes, OffsetDateTime)>, Error>;
    /// Forgets the consent and returns the sessions of the user's grants
    /// to that client (to revoke).
    async fn withdraw_consent(
        &self,
        user: UserId,
        client: &ClientId,
    ) -> Result<Vec<SessionId>, Error>;
}

/// How long codes and ID tokens last.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub code_lifetime: Duration,
    pub id_token_lifetime: Duration,
    /// A grant is a session: past this many open sessions of the user, a
    /// code's exchange is refused (`sessions.max_open_per_user`), so codes,
    /// which cost no password, cannot fill the sessions table.
    pub max_open_sessions: u32,
}

impl Default for OidcSettings {
    fn default() -> Self {
        Self {
            code_lifetime: Duration::from_secs(60),
            id_token_lifetime: Duration::from_secs(300),
            max_open_sessions: 100,
        }
    }
}

/// Tokens from the token endpoint.
#[derive(Debug, Clone)]
pub struct UserTokens {
    pub access_token: String,
    pub expires_in: u64,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    pub scope: Scopes,
}

fn invalid_grant(why: &str) -> OAuthError {
    OAuthError::new(OAuthErrorCode::InvalidGrant, why)
}

/// The code flow's use cases.
#[derive(Clone)]
pub struct Oidc {
    oauth: crate::oauth::OAuth,
    store: Arc<dyn OidcStore>,
    authentication: Authentication,
    key: Arc<IdTokenKey>,
    clock: Arc<dyn Clock>,
    settings: OidcSettings,
}

impl std::fmt::Debug for Oidc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Oidc").finish_non_exhaustive()
    }
}

impl Oidc {
    pub fn new(
        oauth: crate::oauth::OAuth,
        store: Arc<dyn OidcStore>,
        authentication: Authentication,
        key: Arc<IdTokenKey>,
        clock: Arc<dyn Clock>,
        settings: OidcSettings,
    ) -> Self {
        Self {
            oauth,
            store,
            authentication,
            key,
            clock,
            settings,
        }
    }

    pub fn issuer(&self) -> &str {
        &self.oauth.settings().issuer
    }

    pub fn oauth(&self) -> &crate::oauth::OAuth {
        &self.oauth
    }

    /// Every key that verifies polyhub's tokens: the RSA key of ID tokens
    /// and the Ed25519 keys of access tokens.
    pub fn jwks(&self) -> crate::token::Jwks {
        let mut jwks = self.authentication.tokens().jwks();
        jwks.keys.push(self.key.jwk.clone());
        jwks
    }

    /// Checks an authorization request (RFC 6749 §4.1.1, OIDC Core
    /// §3.1.2.1): first the client and redirect URI (a page when either is
    /// wrong), then the rest (a redirect with the error).
    pub async fn authorization_request(
        &self,
        params: &AuthorizeParams,
    ) -> Result<AuthorizationRequest, AuthorizeRefusal> {
        let page = |why: &str| AuthorizeRefusal::Page(why.to_owned());
        let client_id = params
            .client_id
            .as_deref()
            .ok_or_else(|| page("The request names no client (client_id)."))?;
        let client = match ClientId::parse(client_id) {
            Ok(id) => self.oauth.client(&id).await.map_err(|e| match e.kind() {
                ErrorKind::Unavailable | ErrorKind::TooMany => {
                    page("The service is unavailable; try again shortly.")
                }
                _ => page("The service could not read this client."),
            })?,
            Err(_) => None,
        }
        .ok_or_else(|| page("No application is registered with this client_id."))?;
        let redirect_uri = match params.redirect_uri.as_deref() {
            Some(uri) if client.redirect_uris.iter().any(|r| r == uri) => uri.to_owned(),
            Some(_) => {
                return Err(page(
                    "The redirect_uri is not one this application registered (they must match exactly).",
                ));
            }
            None if client.redirect_uris.len() == 1 => client.redirect_uris[0].clone(),
            None => return Err(page("The request names no redirect_uri.")),
        };
        let state = params.state.clone();
        let refuse = |code: OAuthErrorCode, why: &str| AuthorizeRefusal::Redirect {
            redirect_uri: redirect_uri.clone(),
            error: OAuthError::new(code, why),
            state: state.clone(),
        };
        if !client.allows(crate::oauth::GrantType::AuthorizationCode) {
            return Err(refuse(
                OAuthErrorCode::UnauthorizedClient,
                "this client is not registered for the authorization code flow",
            ));
        }
        if params.request.is_some() || params.request_uri.is_some() {
            return Err(AuthorizeRefusal::Redirect {
                redirect_uri: redirect_uri.clone(),
                error: OAuthError::new(
                    OAuthErrorCode::InvalidRequest,
                    "request objects are not supported",
                ),
                state: state.clone(),
            });
        }
        match params.response_type.as_deref() {
            Some("code") => {}
            None => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "response_type is required",
                ));
            }
            Some(_) => {
                return Err(refuse(
                    OAuthErrorCode::UnsupportedResponseType,
                    "only response_type=code is served (no implicit or hybrid flow)",
                ));
            }
        }
        if params
            .response_mode
            .as_deref()
            .is_some_and(|mode| mode != "query")
        {
            return Err(refuse(
                OAuthErrorCode::InvalidRequest,
                "only response_mode=query is served",
            ));
        }
        let scopes = Scopes::parse(params.scope.as_deref().unwrap_or(""))
            .map_err(|e| refuse(OAuthErrorCode::InvalidScope, &e.description))?;
        if scopes.is_empty() {
            return Err(refuse(OAuthErrorCode::InvalidScope, "scope is required"));
        }
        if !scopes.is_subset(&client.scopes) {
            return Err(refuse(
                OAuthErrorCode::InvalidScope,
                &format!("this client may ask for: {}", client.scopes),
            ));
        }
        let code_challenge = match (
            params.code_challenge.as_deref(),
            params.code_challenge_method.as_deref(),
        ) {
            (Some(challenge), Some("S256")) => {
                let ok = (43..=128).contains(&challenge.len())
                    && challenge
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !ok {
                    return Err(refuse(
                        OAuthErrorCode::InvalidRequest,
                        "code_challenge is not 43 to 128 characters of base64url",
                    ));
                }
                Some(challenge.to_owned())
            }
            (Some(_), Some("plain") | None) => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "code_challenge_method must be S256 (plain is refused)",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "code_challenge_method must be S256",
                ));
            }
            (None, Some(_)) => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "code_challenge_method without a code_challenge",
                ));
            }
            // RFC 9700 §2.1.1: PKCE for every client, confidential ones too
            // (a stolen code is then useless without the verifier).
            (None, None) => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "PKCE is required: code_challenge with code_challenge_method=S256",
                ));
            }
        };
        let prompt = match params.prompt.as_deref() {
            None | Some("") => Prompt::Default,
            Some("none") => Prompt::None,
            Some("login") => Prompt::Login,
            Some("consent") => Prompt::Consent,
            Some(_) => {
                return Err(refuse(
                    OAuthErrorCode::InvalidRequest,
                    "prompt must be none, login or consent",
                ));
            }
        };
        let max_age = match params.max_age.as_deref() {
            None => None,
            Some(text) => Some(text.parse::<u64>().map_err(|_| {
                refuse(
                    OAuthErrorCode::InvalidRequest,
                    "max_age is not a number of seconds",
                )
            })?),
        };
        let bounded = |value: &Option<String>, what: &str| match value {
            Some(v) if v.len() > 512 => Err(refuse(
                OAuthErrorCode::InvalidRequest,
                &format!("{what} is longer than 512 characters"),
            )),
            _ => Ok(value.clone()),
        };
        let nonce = bounded(&params.nonce, "nonce")?;
        bounded(&params.state, "state")?;
        let login_hint = bounded(&params.login_hint, "login_hint")?;
        Ok(AuthorizationRequest {
            client,
            redirect_uri,
            scopes,
            state,
            nonce,
            code_challenge,
            prompt,
            max_age,
            login_hint,
        })
    }

    /// What to do for `request` with the browser's session (`None` when
    /// signed out); `fresh` when the browser has just signed in for it.
    pub async fn next(
        &self,
        request: &AuthorizationRequest,
        signed_in: Option<&(Principal, OffsetDateTime)>,
        fresh: bool,
    ) -> Result<Next, AuthorizeRefusal> {
        let redirect = |code: OAuthErrorCode, why: &str| AuthorizeRefusal::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            error: OAuthError::new(code, why),
            state: request.state.clone(),
        };
        let Some((principal, auth_time)) = signed_in else {
            if request.prompt == Prompt::None {
                return Err(redirect(
                    OAuthErrorCode::LoginRequired,
                    "the user is not signed in",
                ));
            }
            return Ok(Next::SignIn);
        };
        let now = self.clock.now();
        let too_old = request.max_age.is_some_and(|max| {
            (now - *auth_time).whole_seconds() > i64::try_from(max).unwrap_or(i64::MAX)
        });
        if !fresh && (request.prompt == Prompt::Login || too_old) {
            if request.prompt == Prompt::None {
                return Err(redirect(
                    OAuthErrorCode::LoginRequired,
                    "the user signed in longer ago than max_age",
                ));
            }
            return Ok(Next::SignIn);
        }
        if !request.client.first_party {
            let allowed = self
                .store
                .consent(principal.user_id, &request.client.id)
                .await
                .map_err(|e| redirect_error(request, e))?;
            let covered = allowed.is_some_and(|a| request.scopes.is_subset(&a));
            if !covered || request.prompt == Prompt::Consent {
                if request.prompt == Prompt::None {
                    return Err(redirect(
                        OAuthErrorCode::ConsentRequired,
                        "the user has not allowed this application these scopes",
                    ));
                }
                return Ok(Next::Consent);
            }
        }
        self.issue_code(request, principal, *auth_time)
            .await
            .map(Next::Redirect)
    }

    /// The user allowed the request: remembered, then a code.
    pub async fn allow(
        &self,
        request: &AuthorizationRequest,
        principal: &Principal,
        auth_time: OffsetDateTime,
    ) -> Result<String, AuthorizeRefusal> {
        self.store
            .save_consent(
                principal.user_id,
                &request.client.id,
                &request.scopes,
                self.clock.now(),
            )
            .await
            .map_err(|e| redirect_error(request, e))?;
        tracing::info!(user_id = %principal.user_id, client_id = %request.client.id, scope = %request.scopes, "consent given");
        self.issue_code(request, principal, auth_time).await
    }

    /// The user refused: `access_denied` at the client.
    pub fn deny(&self, request: &AuthorizationRequest) -> String {
        AuthorizeRefusal::Redirect {
            redirect_uri: request.redirect_uri.clone(),
            error: OAuthError::new(OAuthErrorCode::AccessDenied, "the user refused"),
            state: request.state.clone(),
        }
        .location(self.issuer())
        .unwrap_or_default()
    }

    async fn issue_code(
        &self,
        request: &AuthorizationRequest,
        principal: &Principal,
        auth_time: OffsetDateTime,
    ) -> Result<String, AuthorizeRefusal> {
        let code = random_token().map_err(|e| redirect_error(request, e))?;
        let now = self.clock.now();
        let lifetime =
            time::Duration::try_from(self.settings.code_lifetime).unwrap_or(time::Duration::MINUTE);
        self.store
            .save_code(&StoredCode {
                digest: digest(&code),
                client_id: request.client.id.clone(),
                user_id: principal.user_id,
                browser_session: principal.session_id,
                redirect_uri: request.redirect_uri.clone(),
                scopes: request.scopes.clone(),
                nonce: request.nonce.clone(),
                code_challenge: request.code_challenge.clone(),
                auth_time,
                expires_at: now + lifetime,
            })
            .await
            .map_err(|e| redirect_error(request, e))?;
        let mut pairs = vec![("code", code)];
        if let Some(state) = &request.state {
            pairs.push(("state", state.clone()));
        }
        pairs.push(("iss", self.issuer().to_owned()));
        Ok(with_query(&request.redirect_uri, &pairs))
    }

    /// RFC 6749 §4.1.3: the code's tokens. A code presented twice revokes
    /// what its first exchange issued (RFC 6749 §10.5).
    pub async fn exchange_code(
        &self,
        client: &OAuthClient,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<UserTokens, OAuthError> {
        if !client.allows(crate::oauth::GrantType::AuthorizationCode) {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "this client is not registered for the authorization code flow",
            ));
        }
        let now = self.clock.now();
        let stored = match self.store.take_code(&digest(code), &client.id, now).await? {
            TakenCode::Fresh(stored) => stored,
            TakenCode::Used(issued) => {
                if let Some(session) = issued {
                    self.end_grant(session, "authorization code reused").await?;
                }
                tracing::warn!(client_id = %client.id, "an authorization code was presented twice; its grant is revoked");
                return Err(invalid_grant(
                    "the code was used already; what it issued is revoked",
                ));
            }
            TakenCode::Missing => return Err(invalid_grant("unknown code")),
        };
        if stored.client_id != client.id {
            return Err(invalid_grant("the code was issued to another client"));
        }
        if stored.expires_at < now {
            return Err(invalid_grant("the code has expired"));
        }
        if redirect_uri != Some(stored.redirect_uri.as_str()) {
            return Err(invalid_grant(
                "redirect_uri is not the one of the authorization request",
            ));
        }
        match (&stored.code_challenge, code_verifier) {
            (Some(challenge), Some(verifier)) => {
                let well_formed = (43..=128).contains(&verifier.len())
                    && verifier
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b));
                if !well_formed || s256(verifier) != *challenge {
                    return Err(invalid_grant(
                        "code_verifier does not match the code_challenge",
                    ));
                }
            }
            (Some(_), None) => return Err(invalid_grant("code_verifier is required")),
            (None, Some(_)) => {
                return Err(invalid_grant(
                    "the authorization request had no code_challenge",
                ));
            }
            (None, None) => {}
        }
        let user = self
            .authentication
            .user(stored.user_id)
            .await?
            .ok_or_else(|| invalid_grant("the user no longer exists"))?;
        let max_open = self.settings.max_open_sessions.max(1);
        if self.authentication.open_sessions(user.id, max_open).await? >= max_open as usize {
            tracing::warn!(user_id = %user.id, client_id = %client.id, max_open, "code exchange refused: the user's open sessions are at the limit");
            return Err(invalid_grant(&format!(
                "the user has {max_open} open sessions, the most allowed; one must end first"
            )));
        }
        let (session, _) = self
            .authentication
            .open_session(
                &user,
                Some(stored.browser_session),
                ClientInfo::new(ip, Some(&format!("{} (OpenID Connect)", client.name))),
            )
            .await
            .map_err(|e| match e.code() {
                ErrorCode::InvalidToken => {
                    invalid_grant("the browser session that signed in has ended")
                }
                _ => OAuthError::from(e),
            })?;
        let grant = Grant {
            session_id: session.id,
            client_id: client.id.clone(),
            user_id: user.id,
            scopes: stored.scopes.clone(),
            auth_time: stored.auth_time,
        };
        // The app's token, not the user's: only what names a scope takes it.
        let token = self.authentication.tokens().issue_app(
            user.id,
            user.role,
            &session,
            client.id.as_str(),
            &grant.scopes,
            now,
        )?;
        let refresh = self.refresh_for(client, &grant)?;
        self.store
            .save_grant(
                &stored.digest,
                &grant,
                refresh.as_deref().map(digest).as_ref(),
                now,
            )
            .await?;
        tracing::info!(user_id = %user.id, client_id = %client.id, session_id = %session.id, scope = %grant.scopes, "authorization code exchanged");
        let id_token = if grant.scopes.contains("openid") {
            Some(self.id_token(
                client,
                &grant,
                &user,
                stored.nonce.as_deref(),
                &token.token,
                now,
            )?)
        } else {
            None
        };
        Ok(UserTokens {
            access_token: token.token,
            expires_in: token.expires_in,
            refresh_token: refresh,
            id_token,
            scope: grant.scopes,
        })
    }

    /// A refresh token when the client may refresh and the scope asks for
    /// one (`offline_access`, or any scope for a client without openid).
    fn refresh_for(
        &self,
        client: &OAuthClient,
        grant: &Grant,
    ) -> Result<Option<String>, OAuthError> {
        let wanted = client.allows(crate::oauth::GrantType::RefreshToken)
            && (grant.scopes.contains("offline_access") || !grant.scopes.contains("openid"));
        Ok(if wanted { Some(random_token()?) } else { None })
    }

    /// RFC 6749 §6 with rotation: a new refresh token each time; a used one
    /// presented again revokes the whole grant.
    pub async fn refresh(
        &self,
        client: &OAuthClient,
        refresh_token: &str,
        scope: Option<&str>,
    ) -> Result<UserTokens, OAuthError> {
        if !client.allows(crate::oauth::GrantType::RefreshToken) {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "this client is not registered for the refresh_token grant",
            ));
        }
        let old = digest(refresh_token);
        let next = random_token()?;
        let now = self.clock.now();
        let grant = match self
            .store
            .rotate_refresh(&client.id, &old, &digest(&next), now)
            .await?
        {
            Rotation::Rotated(grant) => grant,
            Rotation::Reused(session) => {
                self.end_grant(session, "refresh token reused").await?;
                tracing::warn!(client_id = %client.id, session_id = %session, "a refresh token was presented twice; the grant is revoked");
                return Err(invalid_grant(
                    "the refresh token was used already; the grant is revoked",
                ));
            }
            Rotation::OtherClient => {
                return Err(invalid_grant(
                    "the refresh token was issued to another client",
                ));
            }
            Rotation::Missing => return Err(invalid_grant("unknown refresh token")),
        };
        if let Some(text) = scope {
            let asked = Scopes::parse(text)?;
            if !asked.is_subset(&grant.scopes) {
                return Err(OAuthError::new(
                    OAuthErrorCode::InvalidScope,
                    "a refresh may only narrow the scopes granted",
                ));
            }
        }
        let (session, user) = self
            .authentication
            .open_session_with_user(grant.session_id)
            .await?
            .ok_or_else(|| invalid_grant("the grant has ended (signed out, revoked or expired)"))?;
        let token = self.authentication.tokens().issue_app(
            user.id,
            user.role,
            &session,
            client.id.as_str(),
            &grant.scopes,
            now,
        )?;
        let id_token = if grant.scopes.contains("openid") {
            Some(self.id_token(client, &grant, &user, None, &token.token, now)?)
        } else {
            None
        };
        Ok(UserTokens {
            access_token: token.token,
            expires_in: token.expires_in,
            refresh_token: Some(next),
            id_token,
            scope: grant.scopes,
        })
    }

    /// The grant's session is revoked: every token of it stops.
    async fn end_grant(&self, session: SessionId, reason: &str) -> Result<(), Error> {
        self.authentication.revoke_session(session, reason).await
    }

    /// An ID token for `grant`, signed as `client` asked (RS256 unless it
    /// registered EdDSA).
    fn id_token(
        &self,
        client: &OAuthClient,
        grant: &Grant,
        user: &User,
        nonce: Option<&str>,
        access_token: &str,
        now: OffsetDateTime,
    ) -> Result<String, Error> {
        let lifetime = time::Duration::try_from(self.settings.id_token_lifetime)
            .unwrap_or(time::Duration::MINUTE);
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": user.id.to_string(),
            "aud": grant.client_id.as_str(),
            "exp": (now + lifetime).unix_timestamp(),
            "iat": now.unix_timestamp(),
            "auth_time": grant.auth_time.unix_timestamp(),
            "at_hash": at_hash(access_token),
            "sid": grant.session_id.to_string(),
        });
        if let Some(object) = claims.as_object_mut() {
            if let Some(nonce) = nonce {
                object.insert("nonce".into(), nonce.into());
            }
            for (key, value) in profile_claims(user, &grant.scopes) {
                object.insert(key.into(), value);
            }
        }
        match client.id_token_alg {
            IdTokenAlg::EdDsa => self.authentication.tokens().sign_ed25519(&claims),
            IdTokenAlg::Rs256 => self.key.sign(&claims),
        }
    }

    /// OIDC Core §5.3: the claims of the access token's user that its grant's
    /// scopes allow.
    pub async fn userinfo(&self, access_token: &str) -> Result<Value, Error> {
        let app = self
            .authentication
            .authenticate_app(access_token)
            .await
            .map_err(|e| match e.code() {
                ErrorCode::InvalidToken => Error::with_message(
                    ErrorCode::InvalidToken,
                    "userinfo takes a live access token an application got through OpenID Connect",
                ),
                _ => e,
            })?;
        app.require_scope("openid")?;
        let user = self
            .authentication
            .user(app.principal.user_id)
            .await?
            .ok_or_else(|| Error::new(ErrorCode::InvalidToken))?;
        let mut claims = json!({ "sub": user.id.to_string() });
        if let Some(object) = claims.as_object_mut() {
            for (key, value) in profile_claims(&user, &app.scopes) {
                object.insert(key.into(), value);
            }
        }
        Ok(claims)
    }

    /// RFC 7009 for tokens of grants: a refresh token or an access token of
    /// one of `client`'s grants ends the grant. `Ok(false)` when `token` is
    /// neither (the caller tries the other kinds).
    pub async fn revoke(&self, client: &OAuthClient, token: &str) -> Result<bool, OAuthError> {
        let grant = match self.store.refresh_grant(&digest(token)).await? {
            Some(grant) => grant,
            None => {
                let Ok(app) = self.authentication.authenticate_app(token).await else {
                    return Ok(false);
                };
                match self.store.grant(app.principal.session_id).await? {
                    Some(grant) => grant,
                    None => return Ok(false),
                }
            }
        };
        if grant.client_id != client.id {
            return Err(OAuthError::new(
                OAuthErrorCode::UnauthorizedClient,
                "this token was not issued to the client revoking it",
            ));
        }
        self.end_grant(grant.session_id, "revoked by the application")
            .await?;
        tracing::info!(client_id = %client.id, session_id = %grant.session_id, "grant revoked");
        Ok(true)
    }

    /// RP-initiated logout (OIDC RP-Initiated Logout 1.0): ends the grant
    /// the ID token names and the browser's own session, and says where to
    /// send the browser (the registered post-logout URI with `state`), or
    /// `None` to show the signed-out page.
    pub async fn end_session(
        &self,
        id_token_hint: Option<&str>,
        client_id: Option<&str>,
        post_logout_redirect_uri: Option<&str>,
        state: Option<&str>,
        browser: Option<&Principal>,
    ) -> Result<Option<String>, Error> {
        let hint = match id_token_hint {
            Some(token) => Some(self.read_id_token_hint(token)?),
            None => None,
        };
        let client_id = match (&hint, client_id) {
            (Some((aud, _, _)), Some(given)) if aud != given => {
                return Err(Error::with_message(
                    ErrorCode::InvalidRequest,
                    "client_id is not the audience of id_token_hint",
                ));
            }
            (Some((aud, _, _)), _) => Some(aud.clone()),
            (None, given) => given.map(str::to_owned),
        };
        let client =
            match &client_id {
                Some(id) => Some(self.oauth.client(&ClientId::parse(id)?).await?.ok_or_else(
                    || Error::with_message(ErrorCode::InvalidRequest, "unknown client_id"),
                )?),
                None => None,
            };
        let target = match post_logout_redirect_uri {
            None => None,
            Some(uri) => {
                let registered = client
                    .as_ref()
                    .is_some_and(|c| c.post_logout_redirect_uris.iter().any(|r| r == uri));
                if !registered {
                    return Err(Error::with_message(
                        ErrorCode::InvalidRequest,
                        "post_logout_redirect_uri is not one the application registered (exact match), or no client was named",
                    ));
                }
                let mut pairs = Vec::new();
                if let Some(state) = state {
                    pairs.push(("state", state.to_owned()));
                }
                Some(if pairs.is_empty() {
                    uri.to_owned()
                } else {
                    with_query(uri, &pairs)
                })
            }
        };
        if let Some((_, Some(sid), _)) = &hint {
            // Only a grant of the hint's client, whoever holds the browser.
            if let Some(grant) = self.store.grant(*sid).await?
                && client.as_ref().is_some_and(|c| c.id == grant.client_id)
            {
                self.end_grant(grant.session_id, "logout (RP-initiated)")
                    .await?;
            }
        }
        // The browser's own session ends only when it is the hint's user's:
        // another's ID token signs no one else out.
        if let (Some(principal), Some((_, _, sub))) = (browser, &hint)
            && principal.user_id.to_string() == *sub
        {
            self.authentication.logout(principal).await?;
        }
        Ok(target)
    }

    /// The audience and session of an ID token polyhub signed; expiry is
    /// not checked (a hint may be old, OIDC RP-Initiated Logout §2).
    fn read_id_token_hint(
        &self,
        token: &str,
    ) -> Result<(String, Option<SessionId>, String), Error> {
        #[derive(serde::Deserialize)]
        struct Hint {
            aud: String,
            sid: Option<String>,
            sub: String,
        }
        let refused = || {
            Error::with_message(
                ErrorCode::InvalidRequest,
                "id_token_hint is not an ID token polyhub signed",
            )
        };
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused())?;
        let rsa;
        let key = match header.alg {
            Algorithm::RS256 => {
                rsa = rsa_decoding(&self.key.jwk).ok_or_else(refused)?;
                &rsa
            }
            Algorithm::EdDSA => self
                .authentication
                .tokens()
                .ed25519_key(header.kid.as_deref().unwrap_or_default())
                .ok_or_else(refused)?,
            _ => return Err(refused()),
        };
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.set_issuer(&[self.issuer()]);
        validation.set_required_spec_claims(&["iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<Hint>(token, key, &validation).map_err(|_| refused())?;
        let sid = data
            .claims
            .sid
            .as_deref()
            .and_then(|s| SessionId::parse(s).ok());
        Ok((data.claims.aud, sid, data.claims.sub))
    }

    // The console's pages about apps.

    /// The applications a user allowed.
    pub async fn consents(
        &self,
        user: UserId,
    ) -> Result<Vec<(OAuthClient, Scopes, OffsetDateTime)>, Error> {
        self.store.consents(user).await
    }

    /// Withdraws the consent and ends the user's grants to that client.
    pub async fn withdraw(&self, user: UserId, client: &ClientId) -> Result<(), Error> {
        for session in self.store.withdraw_consent(user, client).await? {
            self.end_grant(session, "access withdrawn").await?;
        }
        tracing::info!(user_id = %user, client_id = %client, "access withdrawn");
        Ok(())
    }
}

fn rsa_decoding(jwk: &Jwk) -> Option<jsonwebtoken::DecodingKey> {
    jsonwebtoken::DecodingKey::from_rsa_components(jwk.n.as_deref()?, jwk.e.as_deref()?).ok()
}

fn redirect_error(request: &AuthorizationRequest, error: Error) -> AuthorizeRefusal {
    let error = OAuthError::from(error);
    AuthorizeRefusal::Redirect {
        redirect_uri: request.redirect_uri.clone(),
        error,
        state: request.state.clone(),
    }
}

/// The claims `scopes` allow of `user` (OIDC Core §5.4).
fn profile_claims(user: &User, scopes: &Scopes) -> Vec<(&'static str, Value)> {
    let mut claims = Vec::new();
    if scopes.contains("profile") {
        claims.push(("preferred_username", Value::from(user.username.as_str())));
        claims.push(("updated_at", Value::from(user.updated_at.unix_timestamp())));
    }
    if scopes.contains("email") {
        claims.push(("email", Value::from(user.email.as_str())));
        // polyhub does not verify addresses yet.
        claims.push(("email_verified", Value::from(false)));
    }
    claims
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rs256_id_tokens_verify_with_the_published_key() {
        let key = IdTokenKey::from_pem(&IdTokenKey::generate_pem().unwrap()).unwrap();
        let token = key.sign(&json!({"sub": "u", "aud": "app"})).unwrap();
        let decoding = rsa_decoding(key.jwk()).unwrap();
        let mut validation = jsonwebtoken::Validation::new(Algorithm::RS256);
        validation.set_audience(&["app"]);
        validation.set_required_spec_claims(&["sub"]);
        let data = jsonwebtoken::decode::<Value>(&token, &decoding, &validation).unwrap();
        assert_eq!(data.claims["sub"], "u");
        assert_eq!(data.header.kid.as_deref(), Some(key.jwk().kid.as_str()));
    }

    #[test]
    fn pkce_s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn refusals_redirect_with_state_and_issuer() {
        let refusal = AuthorizeRefusal::Redirect {
            redirect_uri: "https://app.example/cb?x=1".into(),
            error: OAuthError::new(OAuthErrorCode::InvalidRequest, "no & good"),
            state: Some("s t".into()),
        };
        assert_eq!(
            refusal.location("http://127.0.0.1:5001").unwrap(),
            "https://app.example/cb?x=1&error=invalid_request&error_description=no+%26+good&state=s+t&iss=http%3A%2F%2F127.0.0.1%3A5001"
        );
        assert!(AuthorizeRefusal::Page("x".into()).location("i").is_none());
    }
}
