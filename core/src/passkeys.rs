//! Passkeys (WebAuthn, checked by webauthn-rs): registered from the
//! console, used as a second factor after the password, or to sign in with
//! no password at all (a discoverable credential that verified its user).
//!
//! Each ceremony has two requests: the options the browser's authenticator
//! answers, then its answer. The ceremony's state is kept in the store
//! between them under a random id, bound to the user (registration), the
//! sign-in's ticket (second factor) or nothing (a sign-in without a name),
//! and taken once, within [`CEREMONY_LIFETIME`].

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use time::OffsetDateTime;
use uuid::Uuid;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration,
    PublicKeyCredential, RegisterPublicKeyCredential, Url, Webauthn, WebauthnBuilder,
};

use crate::error::{Error, ErrorCode};
use crate::ports::{Clock, User};
use crate::user::UserId;

/// How long a ceremony's options may wait for the authenticator's answer.
pub const CEREMONY_LIFETIME: Duration = Duration::from_secs(300);
/// Passkeys one account may have.
pub const PASSKEYS_PER_USER: usize = 10;
/// The longest name of a passkey.
pub const NAME_MAX_CHARS: usize = 64;

/// Who the relying party is.
#[derive(Debug, Clone)]
pub struct PasskeySettings {
    /// The RP ID: the host name passkeys are bound to (never an IP address).
    pub rp_id: String,
    /// The origin the console is served from.
    pub origin: String,
    pub rp_name: String,
    /// Any port of the origin's host is taken (a development setting).
    pub allow_any_port: bool,
}

/// A passkey as listed: never its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasskeySummary {
    pub id: Uuid,
    pub name: String,
    pub created_at: OffsetDateTime,
    pub last_used_at: Option<OffsetDateTime>,
}

/// A stored passkey: its summary, and the credential webauthn-rs keeps.
#[derive(Debug, Clone)]
pub struct StoredPasskey {
    pub summary: PasskeySummary,
    pub user_id: UserId,
    pub credential: Value,
}

/// What a ceremony is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CeremonyKind {
    Register,
    SecondFactor,
    SignIn,
}

impl CeremonyKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            CeremonyKind::Register => "register",
            CeremonyKind::SecondFactor => "second_factor",
            CeremonyKind::SignIn => "sign_in",
        }
    }
}

/// A ceremony's state as stored.
#[derive(Debug, Clone)]
pub struct CeremonyRecord {
    pub id: Uuid,
    pub kind: CeremonyKind,
    /// The user it is for (registration, second factor).
    pub user_id: Option<UserId>,
    pub state: Value,
    pub expires_at: OffsetDateTime,
}

/// Where passkeys and ceremonies live. A user has at most one live
/// ceremony of each kind; sign-ins without a name are bounded by the
/// client's login budget.
#[async_trait]
pub trait PasskeyStore: Send + Sync {
    async fn list(&self, user: UserId) -> Result<Vec<StoredPasskey>, Error>;
    /// Stores a new passkey with its event, unless its credential id is
    /// registered already or the user has [`PASSKEYS_PER_USER`]: whether
    /// it was stored.
    /// Every other session of the user but `keep` is revoked with it, as
    /// they were opened without it.
    async fn add(
        &self,
        user: UserId,
        summary: &PasskeySummary,
        credential_id: &[u8],
        credential: &Value,
        keep: Option<crate::session::SessionId>,
    ) -> Result<bool, Error>;
    async fn by_credential_id(&self, credential_id: &[u8]) -> Result<Option<StoredPasskey>, Error>;
    /// Keeps the credential's new state (its counter) and when it was used.
    async fn used(&self, id: Uuid, credential: &Value, at: OffsetDateTime) -> Result<(), Error>;
    async fn rename(&self, user: UserId, id: Uuid, name: &str) -> Result<bool, Error>;
    /// Removes the passkey with its event (and the recovery codes, when no
    /// factor is left).
    async fn remove(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<bool, Error>;
    /// Keeps a ceremony's state (and drops expired ones).
    async fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), Error>;
    /// Takes a live ceremony of `kind` once.
    async fn take_ceremony(
        &self,
        id: Uuid,
        kind: CeremonyKind,
        at: OffsetDateTime,
    ) -> Result<Option<CeremonyRecord>, Error>;
}

/// The options for the browser (`navigator.credentials`), and the id of
/// the ceremony they belong to.
#[derive(Debug, Clone)]
pub struct Ceremony {
    pub id: Uuid,
    pub options: Value,
}

/// The passkey use case.
#[derive(Clone)]
pub struct Passkeys {
    webauthn: Arc<Webauthn>,
    store: Arc<dyn PasskeyStore>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Passkeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Passkeys").finish_non_exhaustive()
    }
}

fn refused(why: impl std::fmt::Display) -> Error {
    tracing::info!(reason = %why, "passkey refused");
    Error::new(ErrorCode::InvalidPasskey)
}

fn internal(what: &str, e: impl std::fmt::Display) -> Error {
    Error::internal(format!("{what}: {e}"))
}

fn lifetime() -> time::Duration {
    time::Duration::try_from(CEREMONY_LIFETIME).unwrap_or(time::Duration::MINUTE)
}

impl Passkeys {
    /// The relying party of `settings`; a bad origin or RP ID is an error
    /// naming the setting.
    pub fn new(
        settings: &PasskeySettings,
        store: Arc<dyn PasskeyStore>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        let origin = Url::parse(&settings.origin).map_err(|e| {
            Error::internal(format!(
                "webauthn.origin {:?} is not a URL: {e}",
                settings.origin
            ))
        })?;
        let webauthn = WebauthnBuilder::new(&settings.rp_id, &origin)
            .map_err(|e| {
                Error::internal(format!(
                    "webauthn.rp_id {:?} does not fit webauthn.origin {origin}: {e}",
                    settings.rp_id
                ))
            })?
            .rp_name(&settings.rp_name)
            .allow_any_port(settings.allow_any_port)
            .build()
            .map_err(|e| Error::internal(format!("the WebAuthn relying party: {e}")))?;
        Ok(Self {
            webauthn: Arc::new(webauthn),
            store,
            clock,
        })
    }

    async fn keep(
        &self,
        kind: CeremonyKind,
        user: Option<UserId>,
        options: Value,
        state: Value,
    ) -> Result<Ceremony, Error> {
        let id = Uuid::new_v4();
        self.store
            .put_ceremony(&CeremonyRecord {
                id,
                kind,
                user_id: user,
                state,
                expires_at: self.clock.now() + lifetime(),
            })
            .await?;
        Ok(Ceremony { id, options })
    }

    async fn take(&self, id: Uuid, kind: CeremonyKind) -> Result<CeremonyRecord, Error> {
        self.store
            .take_ceremony(id, kind, self.clock.now())
            .await?
            .ok_or_else(|| refused("the ceremony is unknown, used or expired"))
    }

    fn credentials(stored: &[StoredPasskey]) -> Vec<Passkey> {
        stored
            .iter()
            .filter_map(|p| serde_json::from_value(p.credential.clone()).ok())
            .collect()
    }

    pub async fn list(&self, user: UserId) -> Result<Vec<PasskeySummary>, Error> {
        Ok(self
            .store
            .list(user)
            .await?
            .into_iter()
            .map(|p| p.summary)
            .collect())
    }

    /// The options to register a new passkey of `user` (none of theirs
    /// registered twice).
    pub async fn begin_registration(&self, user: &User) -> Result<Ceremony, Error> {
        let existing = self.store.list(user.id).await?;
        if existing.len() >= PASSKEYS_PER_USER {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                format!("an account has at most {PASSKEYS_PER_USER} passkeys: remove one first"),
            ));
        }
        let exclude = Self::credentials(&existing)
            .iter()
            .map(|p| p.cred_id().clone())
            .collect::<Vec<_>>();
        let (options, state) = self
            .webauthn
            .start_passkey_registration(
                user.id.as_uuid(),
                user.username.as_str(),
                user.username.as_str(),
                Some(exclude),
            )
            .map_err(|e| internal("starting a passkey registration", e))?;
        let mut options = serde_json::to_value(options).map_err(|e| internal("the options", e))?;
        // A passkey must be kept by the authenticator (discoverable), or a
        // sign-in without a name cannot find it; webauthn-rs asks for it
        // to be "discouraged", and does not check it in the answer.
        if let Some(selection) = options
            .pointer_mut("/publicKey/authenticatorSelection")
            .and_then(Value::as_object_mut)
        {
            selection.insert("residentKey".into(), Value::from("required"));
            selection.insert("requireResidentKey".into(), Value::from(true));
        }
        let state = serde_json::to_value(state).map_err(|e| internal("the state", e))?;
        self.keep(CeremonyKind::Register, Some(user.id), options, state)
            .await
    }

    /// Registers the authenticator's answer to ceremony `id` as `user`'s
    /// passkey called `name`.
    /// The user's other sessions than `keep` are revoked with it.
    pub async fn finish_registration(
        &self,
        user: &User,
        id: Uuid,
        name: &str,
        answer: &str,
        keep: Option<crate::session::SessionId>,
    ) -> Result<PasskeySummary, Error> {
        let name = Self::name(name)?;
        let ceremony = self.take(id, CeremonyKind::Register).await?;
        if ceremony.user_id != Some(user.id) {
            return Err(refused("the ceremony is another user's"));
        }
        let state: PasskeyRegistration =
            serde_json::from_value(ceremony.state).map_err(|e| internal("a stored ceremony", e))?;
        let answer: RegisterPublicKeyCredential =
            serde_json::from_str(answer).map_err(|e| refused(format!("not an answer: {e}")))?;
        let passkey = self
            .webauthn
            .finish_passkey_registration(&answer, &state)
            .map_err(refused)?;
        let credential =
            serde_json::to_value(&passkey).map_err(|e| internal("a new passkey", e))?;
        let now = self.clock.now();
        let summary = PasskeySummary {
            id: Uuid::now_v7(),
            name,
            created_at: now,
            last_used_at: None,
        };
        if !self
            .store
            .add(
                user.id,
                &summary,
                passkey.cred_id().as_ref(),
                &credential,
                keep,
            )
            .await?
        {
            return Err(Error::with_message(
                ErrorCode::InvalidPasskey,
                "this passkey is registered already, or the account has as many as it may",
            ));
        }
        tracing::info!(user_id = %user.id, passkey = %summary.id, "passkey added");
        Ok(summary)
    }

    fn name(name: &str) -> Result<String, Error> {
        let name = name.trim();
        if name.is_empty()
            || name.chars().count() > NAME_MAX_CHARS
            || name.chars().any(char::is_control)
        {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                format!("a passkey's name is 1 to {NAME_MAX_CHARS} characters"),
            ));
        }
        Ok(name.to_owned())
    }

    pub async fn rename(&self, user: UserId, id: Uuid, name: &str) -> Result<(), Error> {
        let name = Self::name(name)?;
        if !self.store.rename(user, id, &name).await? {
            return Err(Error::with_message(ErrorCode::NotFound, "no such passkey"));
        }
        Ok(())
    }

    pub async fn remove(&self, user: UserId, id: Uuid) -> Result<(), Error> {
        if !self.store.remove(user, id, self.clock.now()).await? {
            return Err(Error::with_message(ErrorCode::NotFound, "no such passkey"));
        }
        tracing::info!(user_id = %user, passkey = %id, "passkey removed");
        Ok(())
    }

    /// The options to answer a sign-in's second step with one of `user`'s
    /// passkeys.
    pub async fn begin_second_factor(&self, user: UserId) -> Result<Ceremony, Error> {
        let passkeys = Self::credentials(&self.store.list(user).await?);
        if passkeys.is_empty() {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "this account has no passkey",
            ));
        }
        let (options, state) = self
            .webauthn
            .start_passkey_authentication(&passkeys)
            .map_err(|e| internal("starting a passkey check", e))?;
        let options = serde_json::to_value(options).map_err(|e| internal("the options", e))?;
        let state = serde_json::to_value(state).map_err(|e| internal("the state", e))?;
        self.keep(CeremonyKind::SecondFactor, Some(user), options, state)
            .await
    }

    /// Whether `answer` to ceremony `id` proves one of `user`'s passkeys.
    pub async fn finish_second_factor(
        &self,
        user: UserId,
        id: Uuid,
        answer: &str,
    ) -> Result<bool, Error> {
        let Ok(ceremony) = self.take(id, CeremonyKind::SecondFactor).await else {
            return Ok(false);
        };
        if ceremony.user_id != Some(user) {
            return Ok(false);
        }
        let state: PasskeyAuthentication =
            serde_json::from_value(ceremony.state).map_err(|e| internal("a stored ceremony", e))?;
        let Ok(answer) = serde_json::from_str::<PublicKeyCredential>(answer) else {
            return Ok(false);
        };
        let result = match self.webauthn.finish_passkey_authentication(&answer, &state) {
            Ok(result) => result,
            Err(e) => {
                tracing::info!(user_id = %user, reason = %e, "passkey refused");
                return Ok(false);
            }
        };
        let Some(stored) = self
            .store
            .by_credential_id(result.cred_id().as_ref())
            .await?
            .filter(|p| p.user_id == user)
        else {
            return Ok(false);
        };
        self.used(stored, &result).await?;
        Ok(true)
    }

    async fn used(
        &self,
        stored: StoredPasskey,
        result: &webauthn_rs::prelude::AuthenticationResult,
    ) -> Result<(), Error> {
        let mut passkey: Passkey = serde_json::from_value(stored.credential)
            .map_err(|e| internal("a stored passkey", e))?;
        passkey.update_credential(result);
        let credential = serde_json::to_value(&passkey).map_err(|e| internal("a passkey", e))?;
        self.store
            .used(stored.summary.id, &credential, self.clock.now())
            .await
    }

    /// The options to sign in with a passkey and no name: the browser
    /// offers the passkeys it has for this site.
    pub async fn begin_sign_in(&self) -> Result<Ceremony, Error> {
        let (options, state) = self
            .webauthn
            .start_discoverable_authentication()
            .map_err(|e| internal("starting a passkey sign-in", e))?;
        let mut options = serde_json::to_value(options).map_err(|e| internal("the options", e))?;
        // A button asks for it: the browser's usual dialog, not the
        // autofill (conditional) one.
        if let Some(object) = options.as_object_mut() {
            object.remove("mediation");
        }
        let state = serde_json::to_value(state).map_err(|e| internal("the state", e))?;
        self.keep(CeremonyKind::SignIn, None, options, state).await
    }

    /// The user whose passkey answered ceremony `id` (verifying its user:
    /// a second factor in itself).
    pub async fn finish_sign_in(&self, id: Uuid, answer: &str) -> Result<UserId, Error> {
        let ceremony = self.take(id, CeremonyKind::SignIn).await?;
        let state: DiscoverableAuthentication =
            serde_json::from_value(ceremony.state).map_err(|e| internal("a stored ceremony", e))?;
        let answer: PublicKeyCredential =
            serde_json::from_str(answer).map_err(|e| refused(format!("not an answer: {e}")))?;
        let (handle, credential_id) = self
            .webauthn
            .identify_discoverable_authentication(&answer)
            .map_err(refused)?;
        let stored = self
            .store
            .by_credential_id(credential_id)
            .await?
            .ok_or_else(|| refused("no passkey has this credential id"))?;
        if stored.user_id.as_uuid() != handle {
            return Err(refused("the user handle is not the passkey's user"));
        }
        let passkey: Passkey = serde_json::from_value(stored.credential.clone())
            .map_err(|e| internal("a stored passkey", e))?;
        let result = self
            .webauthn
            .finish_discoverable_authentication_v2(&answer, state, &passkey)
            .map_err(refused)?;
        let user = stored.user_id;
        self.used(stored, &result).await?;
        Ok(user)
    }
}
