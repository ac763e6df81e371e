//! Access tokens: JWTs signed with Ed25519 (`alg: EdDSA`).
//!
//! The current key signs; every key of the set verifies, so keys rotate without
//! downtime (add the new key, let old tokens expire, drop the old key). Each
//! key's `kid` is its RFC 7638 JWK thumbprint, so no one has to name keys.
//! Verification pins the algorithm, requires every claim it checks, and checks
//! `iss`, `aud`, `exp` and `iat`. That a token's session is still open is the
//! [`crate::Authentication`] use case's check, not this module's.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{SigningKey, VerifyingKey};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

use crate::error::{Error, ErrorCode};
use crate::session::{Session, SessionId};
use crate::user::{Role, UserId};

/// The claims of a polyhub access token. Every field is required: a token
/// missing one, or carrying one of the wrong type, does not verify.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub aud: String,
    /// The user id.
    pub sub: String,
    /// The session id: the token dies with its session.
    pub sid: String,
    pub role: Role,
    pub iat: i64,
    pub exp: i64,
}

/// The user and session a token *claims*, read without verifying it.
///
/// Never an authorization: the one use is comparing a gateway's identity
/// headers with the token they came with, before the token itself is
/// verified as usual. `None` when the token is not a readable JWT.
pub fn claimed_identity(token: &str) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Claimed {
        sub: String,
        sid: String,
    }
    let payload = token.split('.').nth(1)?;
    let bytes = B64URL.decode(payload).ok()?;
    let claimed: Claimed = serde_json::from_slice(&bytes).ok()?;
    Some((claimed.sub, claimed.sid))
}

/// Who a verified token speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub user_id: UserId,
    pub session_id: SessionId,
    pub role: Role,
    /// When the token expires (never after its session).
    pub expires_at: OffsetDateTime,
}

/// A freshly signed token.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_at: OffsetDateTime,
    /// Seconds from now until it expires.
    pub expires_in: u64,
}

/// One public key as a JWK: OKP/Ed25519 (RFC 8037, `crv` and `x`) for
/// access tokens, RSA (`n` and `e`) for ID tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    pub kty: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub crv: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub x: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub n: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub e: Option<String>,
    pub kid: String,
    pub alg: String,
    #[serde(rename = "use")]
    pub use_: String,
}

/// The public key set, as served at `/.well-known/jwks.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<Jwk>,
}

/// A freshly generated key pair, PEM-encoded (PKCS#8 private, SPKI public).
pub struct GeneratedKey {
    pub kid: String,
    pub private_pem: String,
    pub public_pem: String,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

fn key_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}

/// The RFC 7638 thumbprint of an Ed25519 public key.
fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64URL.encode(Sha256::digest(canonical.as_bytes()))
}

struct VerifyKey {
    decoding: DecodingKey,
    jwk: Jwk,
}

/// The signing key and every key that verifies.
pub struct KeySet {
    signing: EncodingKey,
    /// The same key, for the deterministic signatures of mailed links.
    signer: SigningKey,
    signing_kid: String,
    verifying: HashMap<String, VerifyKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("signing_kid", &self.signing_kid)
            .field("verifying", &self.verifying.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl KeySet {
    /// The current private key (PKCS#8 PEM) and the public keys (SPKI PEM) of
    /// earlier keys whose tokens must still verify.
    pub fn from_pem(current_private: &str, previous_public: &[String]) -> Result<Self, Error> {
        let signing_key = SigningKey::from_pkcs8_pem(current_private)
            .map_err(|e| key_error("the signing key is not an Ed25519 PKCS#8 PEM", e))?;
        let signing = EncodingKey::from_ed_pem(current_private.as_bytes())
            .map_err(|e| key_error("the signing key cannot be used", e))?;
        let mut set = Self {
            signing,
            signer: signing_key.clone(),
            signing_kid: String::new(),
            verifying: HashMap::new(),
        };
        set.signing_kid = set.add_verifying(signing_key.verifying_key())?;
        for pem in previous_public {
            let key = VerifyingKey::from_public_key_pem(pem)
                .map_err(|e| key_error("a verification key is not an Ed25519 public PEM", e))?;
            set.add_verifying(key)?;
        }
        Ok(set)
    }

    fn add_verifying(&mut self, key: VerifyingKey) -> Result<String, Error> {
        let x = B64URL.encode(key.to_bytes());
        let kid = thumbprint(&x);
        let decoding = DecodingKey::from_ed_components(&x)
            .map_err(|e| key_error("a verification key cannot be used", e))?;
        let jwk = Jwk {
            kty: "OKP".into(),
            crv: Some("Ed25519".into()),
            x: Some(x),
            n: None,
            e: None,
            kid: kid.clone(),
            alg: "EdDSA".into(),
            use_: "sig".into(),
        };
        self.verifying
            .insert(kid.clone(), VerifyKey { decoding, jwk });
        Ok(kid)
    }

    /// Makes a new Ed25519 key pair from the operating system's randomness.
    pub fn generate() -> Result<GeneratedKey, Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| key_error("the random source failed", e))?;
        let key = SigningKey::from_bytes(&seed);
        let line = ed25519_dalek::pkcs8::spki::der::pem::LineEnding::LF;
        let private_pem = key
            .to_pkcs8_pem(line)
            .map_err(|e| key_error("encoding the private key", e))?
            .to_string();
        let public_pem = key
            .verifying_key()
            .to_public_key_pem(line)
            .map_err(|e| key_error("encoding the public key", e))?;
        Ok(GeneratedKey {
            kid: thumbprint(&B64URL.encode(key.verifying_key().to_bytes())),
            private_pem,
            public_pem,
        })
    }

    pub fn signing_kid(&self) -> &str {
        &self.signing_kid
    }

    /// Every verifying key, the signing key's first.
    pub fn jwks(&self) -> Jwks {
        let mut keys: Vec<Jwk> = self.verifying.values().map(|k| k.jwk.clone()).collect();
        keys.sort_by_key(|k| (k.kid != self.signing_kid, k.kid.clone()));
        Jwks { keys }
    }
}

/// Who issues tokens, for whom, and for how long.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    pub issuer: String,
    pub audience: String,
    pub lifetime: Duration,
}

/// Tokens already verified, so a client's repeated calls skip the signature
/// check. Only what verified is kept, keyed by the whole token, so a hit can
/// never let through a token that would not verify; expiry is checked on
/// every hit. Bounded: when full it starts again empty.
#[derive(Debug, Default)]
struct VerifiedTokens {
    entries: Mutex<HashMap<Box<str>, (Principal, i64)>>,
}

impl VerifiedTokens {
    const CAPACITY: usize = 10_000;

    fn get(&self, token: &str, now: i64) -> Option<Principal> {
        let entries = self.entries.lock().ok()?;
        let (principal, exp) = entries.get(token)?;
        #[allow(clippy::cast_possible_wrap)]
        let fresh = now <= *exp + LEEWAY_SECS as i64;
        fresh.then_some(*principal)
    }

    fn put(&self, token: &str, principal: Principal, exp: i64) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= Self::CAPACITY {
                entries.clear();
            }
            entries.insert(token.into(), (principal, exp));
        }
    }
}

/// Issues and verifies access tokens.
#[derive(Debug)]
pub struct Tokens {
    keys: KeySet,
    settings: TokenSettings,
    validation: Validation,
    /// The same checks with the device tokens' audience.
    device_validation: Validation,
    verified: VerifiedTokens,
}

/// Clock skew tolerated between hub instances when checking `exp` and `iat`.
const LEEWAY_SECS: u64 = 5;

impl Tokens {
    pub fn new(keys: KeySet, settings: TokenSettings) -> Self {
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.algorithms = vec![Algorithm::EdDSA];
        validation.set_issuer(&[&settings.issuer]);
        validation.set_audience(&[&settings.audience]);
        validation.set_required_spec_claims(&["exp", "iat", "iss", "aud", "sub"]);
        validation.leeway = LEEWAY_SECS;
        // `exp` and `iat` are checked below against the domain clock, not the
        // system clock the library would read; the claims stay required.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        let mut device_validation = validation.clone();
        device_validation.set_audience(&[device_audience(&settings.audience)]);
        Self {
            keys,
            settings,
            validation,
            device_validation,
            verified: VerifiedTokens::default(),
        }
    }

    pub fn jwks(&self) -> Jwks {
        self.keys.jwks()
    }

    pub fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// Signs a token for `session`, expiring at the token lifetime or when the
    /// session does, whichever is first.
    pub fn issue(
        &self,
        user_id: UserId,
        role: Role,
        session: &Session,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, Error> {
        let lifetime = time::Duration::try_from(self.settings.lifetime)
            .map_err(|e| key_error("token lifetime out of range", e))?;
        let expires_at = (now + lifetime).min(session.expires_at);
        let claims = Claims {
            iss: self.settings.issuer.clone(),
            aud: self.settings.audience.clone(),
            sub: user_id.to_string(),
            sid: session.id.to_string(),
            role,
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.keys.signing)
            .map_err(|e| key_error("signing a token", e))?;
        let expires_in = u64::try_from((expires_at - now).whole_seconds()).unwrap_or(0);
        Ok(IssuedToken {
            token,
            expires_at,
            expires_in,
        })
    }

    /// Checks signature and claims; every failure is `INVALID_TOKEN`, with the
    /// reason logged at debug level only.
    pub fn verify(&self, token: &str, now: OffsetDateTime) -> Result<Principal, Error> {
        if let Some(principal) = self.verified.get(token, now.unix_timestamp()) {
            return Ok(principal);
        }
        let invalid = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "token refused");
            Error::new(ErrorCode::InvalidToken)
        };
        let claims: Claims = self
            .decode_ours(token, None, &self.validation, now)
            .map_err(|why| invalid(&why))?;
        let principal = Principal {
            user_id: UserId::parse(&claims.sub).map_err(|e| invalid(&e))?,
            session_id: SessionId::parse(&claims.sid).map_err(|e| invalid(&e))?,
            role: claims.role,
            expires_at: OffsetDateTime::from_unix_timestamp(claims.exp).map_err(|e| invalid(&e))?,
        };
        self.verified.put(token, principal, claims.exp);
        Ok(principal)
    }

    /// Signs a device token for `user_id`: proof, shown at a later login,
    /// that this browser or client has signed in to the account before
    /// (OWASP's device cookie). It opens nothing and is not a bearer token.
    pub fn issue_device(
        &self,
        user_id: UserId,
        device: &str,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, Error> {
        let lifetime = time::Duration::try_from(lifetime)
            .map_err(|e| key_error("device token lifetime out of range", e))?;
        let expires_at = now + lifetime;
        let claims = DeviceClaims {
            iss: self.settings.issuer.clone(),
            aud: device_audience(&self.settings.audience),
            sub: user_id.to_string(),
            dev: device.to_owned(),
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.keys.signing)
            .map_err(|e| key_error("signing a device token", e))?;
        Ok(IssuedToken {
            token,
            expires_at,
            expires_in: u64::try_from(lifetime.whole_seconds()).unwrap_or(0),
        })
    }

    /// The device a device token names, when its signature and claims hold;
    /// `None` for anything else (a device token is a hint, never a failure).
    pub fn verify_device(&self, token: &str, now: OffsetDateTime) -> Option<KnownDevice> {
        let refused = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "device token ignored");
        };
        if token.len() > MAX_DEVICE_TOKEN {
            refused(&"too long");
            return None;
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| refused(&e))
            .ok()?;
        let key = self.keys.verifying.get(header.kid.as_deref()?)?;
        let claims =
            jsonwebtoken::decode::<DeviceClaims>(token, &key.decoding, &self.device_validation)
                .map_err(|e| refused(&e))
                .ok()?
                .claims;
        #[allow(clippy::cast_possible_wrap)]
        let leeway = LEEWAY_SECS as i64;
        if now.unix_timestamp() > claims.exp + leeway || claims.iat > now.unix_timestamp() + leeway
        {
            refused(&"expired or issued in the future");
            return None;
        }
        Some(KnownDevice {
            user_id: UserId::parse(&claims.sub).map_err(|e| refused(&e)).ok()?,
            device: claims.dev,
        })
    }
}

/// The claims of a client-credentials access token (RFC 9068): a client
/// and its scopes, no user and no session, so [`Tokens::verify`] (which
/// needs `sid` and `role`) refuses it and [`Tokens::verify_client`] refuses
/// every other token (it needs `typ: at+jwt`, `client_id`, `scope`, `jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct ClientClaims {
    iss: String,
    aud: String,
    /// The client itself (RFC 9068 §2.2: no resource owner).
    sub: String,
    client_id: String,
    scope: String,
    jti: String,
    iat: i64,
    exp: i64,
}

/// The `typ` of a client-credentials access token (RFC 9068 §2.1).
const ACCESS_TOKEN_TYP: &str = "at+jwt";

/// A client a verified client-credentials token speaks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPrincipal {
    pub client_id: String,
    pub scopes: crate::oauth::Scopes,
    pub jti: uuid::Uuid,
    pub issued_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
}

impl ClientPrincipal {
    /// `FORBIDDEN` naming the scope unless the token carries it.
    pub fn require_scope(&self, scope: &str) -> Result<(), Error> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Error::with_message(
                ErrorCode::Forbidden,
                format!("the token's scope lacks {scope}"),
            ))
        }
    }
}

impl Tokens {
    /// The secret of a mailed link (a password reset, an address to
    /// verify): the Ed25519 signature of `purpose` and `id` under the
    /// current signing key. Deterministic, so the mailer computes it again
    /// from the id the event log carries, while the log and the database
    /// keep only the id and the secret's hash; unforgeable without the key,
    /// which every instance has. A key rotation voids the links in flight.
    pub fn link_secret(&self, purpose: &str, id: uuid::Uuid) -> String {
        use ed25519_dalek::Signer as _;
        let message = format!("polyhub link\0{purpose}\0{id}");
        B64URL.encode(self.keys.signer.sign(message.as_bytes()).to_bytes())
    }

    /// Signs `claims` (an EdDSA ID token's) with the current Ed25519 key.
    pub fn sign_ed25519(&self, claims: &serde_json::Value) -> Result<String, Error> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.signing_kid.clone());
        jsonwebtoken::encode(&header, claims, &self.keys.signing)
            .map_err(|e| key_error("signing an ID token", e))
    }

    /// The Ed25519 key `kid`, to check a token polyhub signed with it.
    pub(crate) fn ed25519_key(&self, kid: &str) -> Option<&DecodingKey> {
        self.keys.verifying.get(kid).map(|k| &k.decoding)
    }

    /// Signs a client-credentials access token from `issuer` for `client_id`.
    pub fn issue_client(
        &self,
        issuer: &str,
        client_id: &str,
        scopes: &crate::oauth::Scopes,
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, Error> {
        let lifetime = time::Duration::try_from(lifetime)
            .map_err(|e| key_error("access token lifetime out of range", e))?;
        let expires_at = now + lifetime;
        let claims = ClientClaims {
            iss: issuer.to_owned(),
            aud: self.settings.audience.clone(),
            sub: client_id.to_owned(),
            client_id: client_id.to_owned(),
            scope: scopes.to_string(),
            jti: uuid::Uuid::now_v7().to_string(),
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.typ = Some(ACCESS_TOKEN_TYP.to_owned());
        header.kid = Some(self.keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.keys.signing)
            .map_err(|e| key_error("signing an access token", e))?;
        Ok(IssuedToken {
            token,
            expires_at,
            expires_in: u64::try_from(lifetime.whole_seconds()).unwrap_or(0),
        })
    }

    /// Checks a client-credentials access token from `issuer`: signature,
    /// `typ`, claims and expiry. Whether it was revoked is the store's
    /// question ([`crate::OAuth::machine`]). Every failure is `INVALID_TOKEN`.
    pub fn verify_client(
        &self,
        issuer: &str,
        token: &str,
        now: OffsetDateTime,
    ) -> Result<ClientPrincipal, Error> {
        let invalid = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "client token refused");
            Error::new(ErrorCode::InvalidToken)
        };
        let mut validation = self.validation.clone();
        validation.set_issuer(&[issuer]);
        let claims: ClientClaims = self
            .decode_ours(token, Some(ACCESS_TOKEN_TYP), &validation, now)
            .map_err(|why| invalid(&why))?;
        if claims.sub != claims.client_id {
            return Err(invalid(&"sub is not the client"));
        }
        let at = |t: i64| OffsetDateTime::from_unix_timestamp(t).map_err(|e| invalid(&e));
        Ok(ClientPrincipal {
            scopes: crate::oauth::Scopes::parse(&claims.scope)
                .map_err(|e| invalid(&e.description))?,
            jti: uuid::Uuid::parse_str(&claims.jti).map_err(|e| invalid(&e))?,
            issued_at: at(claims.iat)?,
            expires_at: at(claims.exp)?,
            client_id: claims.client_id,
        })
    }
}

/// The times every token of ours carries, checked against the domain clock.
trait Timed {
    fn exp(&self) -> i64;
    fn iat(&self) -> i64;
}

macro_rules! timed {
    ($($claims:ty),+) => {
        $(impl Timed for $claims {
            fn exp(&self) -> i64 {
                self.exp
            }
            fn iat(&self) -> i64 {
                self.iat
            }
        })+
    };
}

timed!(Claims, ClientClaims, AppClaims);

impl Tokens {
    /// The claims of an EdDSA token of ours: the algorithm pinned (and the
    /// header's `typ` when one is required), the key by `kid`, the
    /// signature, `validation`'s claims, then `exp` and `iat` against `now`
    /// with the leeway. `Err` says why, for the caller's debug log.
    fn decode_ours<T: serde::de::DeserializeOwned + Timed>(
        &self,
        token: &str,
        typ: Option<&str>,
        validation: &Validation,
        now: OffsetDateTime,
    ) -> Result<T, String> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| e.to_string())?;
        if header.alg != Algorithm::EdDSA {
            return Err(format!("algorithm {:?} is not accepted", header.alg));
        }
        if typ.is_some() && header.typ.as_deref() != typ {
            return Err(format!("typ {:?} is not {typ:?}", header.typ));
        }
        let kid = header.kid.ok_or("no kid in the header")?;
        let key = self
            .keys
            .verifying
            .get(&kid)
            .ok_or_else(|| format!("unknown kid {kid:?}"))?;
        let claims = jsonwebtoken::decode::<T>(token, &key.decoding, validation)
            .map_err(|e| e.to_string())?
            .claims;
        #[allow(clippy::cast_possible_wrap)]
        let leeway = LEEWAY_SECS as i64;
        if now.unix_timestamp() > claims.exp() + leeway {
            return Err("expired".into());
        }
        if claims.iat() > now.unix_timestamp() + leeway {
            return Err("issued in the future".into());
        }
        Ok(claims)
    }
}

/// A new random device id (22 characters): what a device's failure budget
/// and its place among the user's remembered devices are kept under.
pub fn new_device_id() -> Result<String, Error> {
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| key_error("the random source failed", e))?;
    Ok(B64URL.encode(nonce))
}

/// The audience of device tokens: never the access tokens' own, so neither
/// kind verifies as the other.
fn device_audience(audience: &str) -> String {
    format!("{audience}#device")
}

/// The audience of an app's access tokens (OpenID Connect grants): never a
/// user's own, so no endpoint that acts with the user's full rights takes
/// one; only those that name a scope do ([`Tokens::verify_app`]).
fn app_audience(audience: &str) -> String {
    format!("{audience}#app")
}

/// The claims of an app's access token: the user's token's, for the
/// grant's session, with the app and the scopes the user allowed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct AppClaims {
    iss: String,
    aud: String,
    sub: String,
    sid: String,
    role: Role,
    client_id: String,
    scope: String,
    iat: i64,
    exp: i64,
}

/// Who a verified app token speaks for, and for which app and scopes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppPrincipal {
    /// The user and the grant's session.
    pub principal: Principal,
    pub client_id: String,
    pub scopes: crate::oauth::Scopes,
}

impl AppPrincipal {
    /// `FORBIDDEN` naming the scope unless the grant carries it.
    pub fn require_scope(&self, scope: &str) -> Result<(), Error> {
        if self.scopes.contains(scope) {
            Ok(())
        } else {
            Err(Error::with_message(
                ErrorCode::Forbidden,
                format!("the application's token lacks the scope {scope}"),
            ))
        }
    }
}

impl Tokens {
    /// Signs an app's access token for `session` (a grant's), as
    /// [`Self::issue`] does a user's, naming the app and its scopes.
    pub fn issue_app(
        &self,
        user_id: UserId,
        role: Role,
        session: &Session,
        client_id: &str,
        scopes: &crate::oauth::Scopes,
        now: OffsetDateTime,
    ) -> Result<IssuedToken, Error> {
        let lifetime = time::Duration::try_from(self.settings.lifetime)
            .map_err(|e| key_error("token lifetime out of range", e))?;
        let expires_at = (now + lifetime).min(session.expires_at);
        let claims = AppClaims {
            iss: self.settings.issuer.clone(),
            aud: app_audience(&self.settings.audience),
            sub: user_id.to_string(),
            sid: session.id.to_string(),
            role,
            client_id: client_id.to_owned(),
            scope: scopes.to_string(),
            iat: now.unix_timestamp(),
            exp: expires_at.unix_timestamp(),
        };
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.keys.signing_kid.clone());
        let token = jsonwebtoken::encode(&header, &claims, &self.keys.signing)
            .map_err(|e| key_error("signing an app's token", e))?;
        let expires_in = u64::try_from((expires_at - now).whole_seconds()).unwrap_or(0);
        Ok(IssuedToken {
            token,
            expires_at,
            expires_in,
        })
    }

    /// Checks an app's access token: signature, its own audience, claims
    /// and expiry. That its session is still open is
    /// [`crate::Authentication::authenticate_app`]'s check. Every failure is
    /// `INVALID_TOKEN`.
    pub fn verify_app(&self, token: &str, now: OffsetDateTime) -> Result<AppPrincipal, Error> {
        let invalid = |why: &dyn std::fmt::Display| {
            tracing::debug!(reason = %why, "app token refused");
            Error::new(ErrorCode::InvalidToken)
        };
        let mut validation = self.validation.clone();
        validation.set_audience(&[app_audience(&self.settings.audience)]);
        let claims: AppClaims = self
            .decode_ours(token, None, &validation, now)
            .map_err(|why| invalid(&why))?;
        Ok(AppPrincipal {
            principal: Principal {
                user_id: UserId::parse(&claims.sub).map_err(|e| invalid(&e))?,
                session_id: SessionId::parse(&claims.sid).map_err(|e| invalid(&e))?,
                role: claims.role,
                expires_at: OffsetDateTime::from_unix_timestamp(claims.exp)
                    .map_err(|e| invalid(&e))?,
            },
            client_id: claims.client_id,
            scopes: crate::oauth::Scopes::parse(&claims.scope)
                .map_err(|e| invalid(&e.description))?,
        })
    }
}

/// The longest device token looked at; ours are about 400 bytes.
const MAX_DEVICE_TOKEN: usize = 2_048;

/// The claims of a device token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct DeviceClaims {
    iss: String,
    aud: String,
    /// The user who signed in on this device.
    sub: String,
    /// This device's random id: what its own failure budget is kept under.
    dev: String,
    iat: i64,
    exp: i64,
}

/// A device that has signed in to `user_id` before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KnownDevice {
    pub user_id: UserId,
    /// The device's random id (22 characters).
    pub device: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::ClientInfo;

    fn settings() -> TokenSettings {
        TokenSettings {
            issuer: "polyhub".into(),
            audience: "polyhub-api".into(),
            lifetime: Duration::from_secs(900),
        }
    }

    fn session(now: OffsetDateTime) -> Session {
        Session {
            id: SessionId::generate(),
            user_id: UserId::generate(),
            created_at: now,
            expires_at: now + time::Duration::hours(8),
            last_seen_at: now,
            revoked_at: None,
            client: ClientInfo::default(),
        }
    }

    fn tokens_with(key: &GeneratedKey, previous: &[String]) -> Tokens {
        Tokens::new(
            KeySet::from_pem(&key.private_pem, previous).unwrap(),
            settings(),
        )
    }

    #[test]
    fn a_device_token_names_its_user_and_is_no_access_token() {
        let tokens = tokens_with(&KeySet::generate().unwrap(), &[]);
        let now = OffsetDateTime::now_utc();
        let user = UserId::generate();
        let device = tokens
            .issue_device(
                user,
                &new_device_id().unwrap(),
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        let known = tokens.verify_device(&device.token, now).unwrap();
        assert_eq!(known.user_id, user);
        assert_eq!(known.device.len(), 22);
        let other = tokens
            .issue_device(
                user,
                &new_device_id().unwrap(),
                Duration::from_secs(3600),
                now,
            )
            .unwrap();
        assert_ne!(
            tokens.verify_device(&other.token, now).unwrap().device,
            known.device
        );
        // Neither kind passes for the other.
        assert_eq!(
            tokens.verify(&device.token, now).unwrap_err().code(),
            ErrorCode::InvalidToken
        );
        let s = session(now);
        let access = tokens.issue(s.user_id, Role::User, &s, now).unwrap();
        assert!(tokens.verify_device(&access.token, now).is_none());
        // Expired, tampered with, or signed by a key not ours: ignored.
        let later = now + time::Duration::hours(2);
        assert!(tokens.verify_device(&device.token, later).is_none());
        let mut tampered = device.token.clone();
        tampered.pop();
        assert!(tokens.verify_device(&tampered, now).is_none());
        let stranger = tokens_with(&KeySet::generate().unwrap(), &[]);
        assert!(stranger.verify_device(&device.token, now).is_none());
    }

    #[test]
    fn issue_then_verify() {
        let key = KeySet::generate().unwrap();
        let tokens = tokens_with(&key, &[]);
        let now = OffsetDateTime::now_utc();
        let s = session(now);
        let issued = tokens.issue(s.user_id, Role::Admin, &s, now).unwrap();
        assert_eq!(issued.expires_in, 900);
        let principal = tokens.verify(&issued.token, now).unwrap();
        assert_eq!(principal.user_id, s.user_id);
        assert_eq!(principal.session_id, s.id);
        assert_eq!(principal.role, Role::Admin);
        let header = jsonwebtoken::decode_header(&issued.token).unwrap();
        assert_eq!(header.kid.as_deref(), Some(key.kid.as_str()));
    }

    #[test]
    fn the_claimed_identity_is_read_but_not_believed() {
        let tokens = tokens_with(&KeySet::generate().unwrap(), &[]);
        let now = OffsetDateTime::now_utc();
        let s = session(now);
        let issued = tokens.issue(s.user_id, Role::User, &s, now).unwrap();
        assert_eq!(
            claimed_identity(&issued.token),
            Some((s.user_id.to_string(), s.id.to_string()))
        );
        // Read as well from a token no key of ours signed: it says nothing.
        let stranger = tokens_with(&KeySet::generate().unwrap(), &[]);
        let forged = stranger.issue(s.user_id, Role::Admin, &s, now).unwrap();
        assert!(claimed_identity(&forged.token).is_some());
        assert!(tokens.verify(&forged.token, now).is_err());
        for junk in ["", "abc", "a.b.c", "a.e30.c"] {
            assert_eq!(claimed_identity(junk), None, "{junk:?}");
        }
    }

    #[test]
    fn token_never_outlives_its_session() {
        let tokens = tokens_with(&KeySet::generate().unwrap(), &[]);
        let now = OffsetDateTime::now_utc();
        let mut s = session(now);
        s.expires_at = now + time::Duration::seconds(60);
        assert_eq!(
            tokens
                .issue(s.user_id, Role::User, &s, now)
                .unwrap()
                .expires_in,
            60
        );
    }

    #[test]
    fn a_verified_token_still_expires() {
        let tokens = tokens_with(&KeySet::generate().unwrap(), &[]);
        let now = OffsetDateTime::now_utc();
        let mut s = session(now);
        s.expires_at = now + time::Duration::seconds(60);
        let issued = tokens.issue(s.user_id, Role::User, &s, now).unwrap();
        assert!(tokens.verify(&issued.token, now).is_ok());
        assert!(
            tokens.verify(&issued.token, now).is_ok(),
            "and again, from the cache"
        );
        let later = now + time::Duration::seconds(60 + LEEWAY_SECS as i64 + 1);
        assert_eq!(
            tokens.verify(&issued.token, later).unwrap_err().code(),
            ErrorCode::InvalidToken
        );
    }

    #[test]
    fn expired_tokens_are_refused() {
        let tokens = tokens_with(&KeySet::generate().unwrap(), &[]);
        let then = OffsetDateTime::now_utc() - time::Duration::hours(1);
        let s = session(then);
        let issued = tokens.issue(s.user_id, Role::User, &s, then).unwrap();
        let err = tokens
            .verify(&issued.token, OffsetDateTime::now_utc())
            .unwrap_err();
        assert_eq!(err.code(), ErrorCode::InvalidToken);
    }

    #[test]
    fn rotation_keeps_old_tokens_valid_while_the_old_key_is_in_the_set() {
        let old = KeySet::generate().unwrap();
        let new = KeySet::generate().unwrap();
        let now = OffsetDateTime::now_utc();
        let s = session(now);
        let old_token = tokens_with(&old, &[])
            .issue(s.user_id, Role::User, &s, now)
            .unwrap();

        let rotated = tokens_with(&new, std::slice::from_ref(&old.public_pem));
        assert!(rotated.verify(&old_token.token, now).is_ok());
        assert_eq!(rotated.jwks().keys.len(), 2);
        assert_eq!(rotated.jwks().keys[0].kid, new.kid, "signing key first");

        let dropped = tokens_with(&new, &[]);
        assert_eq!(
            dropped.verify(&old_token.token, now).unwrap_err().code(),
            ErrorCode::InvalidToken
        );
    }

    #[test]
    fn jwks_is_rfc8037_with_thumbprint_kids() {
        let key = KeySet::generate().unwrap();
        let jwks = tokens_with(&key, &[]).jwks();
        let jwk = &jwks.keys[0];
        assert_eq!(
            (
                jwk.kty.as_str(),
                jwk.crv.as_deref().unwrap(),
                jwk.alg.as_str()
            ),
            ("OKP", "Ed25519", "EdDSA")
        );
        let x = jwk.x.as_deref().unwrap();
        assert_eq!(B64URL.decode(x).unwrap().len(), 32);
        assert_eq!(jwk.kid, thumbprint(x));
        let json = serde_json::to_value(&jwks).unwrap();
        assert_eq!(json["keys"][0]["use"], "sig");
    }

    /// RFC 8037 appendix A.3: the thumbprint of the RFC's example key.
    #[test]
    fn thumbprint_known_answer() {
        assert_eq!(
            thumbprint("11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"),
            "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
        );
    }

    #[test]
    fn garbage_keys_are_refused() {
        assert!(KeySet::from_pem("not a pem", &[]).is_err());
        let key = KeySet::generate().unwrap();
        assert!(KeySet::from_pem(&key.private_pem, &["junk".into()]).is_err());
        assert!(KeySet::from_pem(&key.public_pem, &[]).is_err());
    }

    #[test]
    fn generated_key_debug_hides_the_private_key() {
        let key = KeySet::generate().unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"));
    }
}
