//! SCIM 2.0 provisioning (RFC 7643, RFC 7644): an enterprise directory
//! (Entra ID, Okta, an HR system) creates, updates, deactivates and deletes
//! polyhub's users and groups, and through groups mapped to a role
//! (`scim.admin_groups`) decides who is admin.
//!
//! One use case, [`Scim`], behind every route of `/scim/v2`. It works on
//! the resources' JSON: a PATCH is applied to the resource as it is
//! rendered, then the result is checked as a PUT body is, so every write,
//! whatever its shape (Entra ID's `"True"` strings and path-less values,
//! Okta's PUTs), passes the same rules as polyhub's own registration:
//! the username, email and password policies, and the same hashing.
//!
//! Deactivating (`active: false`) revokes every session and forgets every
//! device of the user in the write's transaction, so every token is dead
//! on every protocol at once; sign-in refuses the account
//! (`ACCOUNT_DISABLED`) until it is active again. DELETE does the same,
//! then removes the user. Every change is an event in the log.

pub mod filter;
pub mod patch;
pub mod schema;

use std::sync::Arc;

use async_trait::async_trait;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, ErrorCode, ErrorKind};
use crate::events::{GroupChangeKind, UserChange, UserEvent};
use crate::password::PasswordHash;
use crate::ports::{Clock, SessionRepository};
use crate::user::{Email, Password, Role, UserId, Username};
use crate::work_pool::HashingPool;

pub use filter::{AttrPath, CompValue, CompareOp, Filter, PatchPath};
pub use patch::Resource;

/// SCIM's error response (RFC 7644 §3.12).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScimError {
    pub status: u16,
    pub scim_type: Option<&'static str>,
    pub detail: String,
}

impl ScimError {
    pub fn new(status: u16, scim_type: Option<&'static str>, detail: impl Into<String>) -> Self {
        Self {
            status,
            scim_type,
            detail: detail.into(),
        }
    }

    pub fn invalid_filter(detail: String) -> Self {
        Self::new(400, Some("invalidFilter"), detail)
    }

    pub fn invalid_path(detail: String) -> Self {
        Self::new(400, Some("invalidPath"), detail)
    }

    pub fn invalid_value(detail: String) -> Self {
        Self::new(400, Some("invalidValue"), detail)
    }

    pub fn invalid_syntax(detail: impl Into<String>) -> Self {
        Self::new(400, Some("invalidSyntax"), detail)
    }

    pub fn no_target(detail: String) -> Self {
        Self::new(400, Some("noTarget"), detail)
    }

    pub fn mutability(detail: String) -> Self {
        Self::new(400, Some("mutability"), detail)
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::new(404, None, format!("no {what} with id {id:?}"))
    }

    pub fn precondition_failed() -> Self {
        Self::new(
            412,
            None,
            "the resource changed since the version in If-Match: read it again",
        )
    }

    /// The response body.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
            "status": self.status.to_string(),
            "detail": self.detail,
        });
        if let Some(t) = self.scim_type {
            body["scimType"] = t.into();
        }
        body
    }
}

impl From<Error> for ScimError {
    fn from(e: Error) -> Self {
        let message = e.message().to_owned();
        match (e.code(), e.kind()) {
            (ErrorCode::UsernameTaken | ErrorCode::EmailTaken | ErrorCode::GroupNameTaken, _) => {
                Self::new(409, Some("uniqueness"), message)
            }
            (ErrorCode::Forbidden, _) => Self::new(409, None, message),
            (_, ErrorKind::Invalid) => Self::invalid_value(message),
            (_, ErrorKind::NotFound) => Self::new(404, None, message),
            (_, ErrorKind::TooMany) => Self::new(429, None, message),
            (_, ErrorKind::Unavailable) => Self::new(503, None, message),
            _ => {
                tracing::error!(error = %e, "SCIM request failed");
                Self::new(500, None, "internal error")
            }
        }
    }
}

/// A group a user is in, as the user's `groups` attribute shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupRef {
    pub id: Uuid,
    pub display: String,
}

/// A user as SCIM sees it.
#[derive(Debug, Clone)]
pub struct ScimUser {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub active: bool,
    pub role: Role,
    pub external_id: Option<String>,
    /// Every other attribute, in canonical case; the enterprise
    /// extension under its URN.
    pub attributes: Map<String, Value>,
    pub groups: Vec<GroupRef>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub version: i64,
}

/// A user about to be written.
#[derive(Debug, Clone)]
pub struct UserWrite {
    pub id: UserId,
    pub username: Username,
    pub email: Email,
    pub active: bool,
    pub external_id: Option<String>,
    pub attributes: Map<String, Value>,
    /// A new password's hash, or for a new user without one,
    /// [`PasswordHash::unset`].
    pub password_hash: Option<PasswordHash>,
    pub at: OffsetDateTime,
}

/// A member of a group, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: UserId,
    pub display: String,
}

/// A group as SCIM sees it.
#[derive(Debug, Clone)]
pub struct ScimGroup {
    pub id: Uuid,
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: Vec<Member>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub version: i64,
}

/// A group about to be written. `admin` says whether its name is one of
/// `scim.admin_groups`: its members are admins while they are in it.
#[derive(Debug, Clone)]
pub struct GroupWrite {
    pub id: Uuid,
    pub display_name: String,
    pub external_id: Option<String>,
    pub members: Vec<UserId>,
    pub admin: bool,
    pub at: OffsetDateTime,
}

/// One page of a query.
#[derive(Debug, Clone)]
pub struct ListQuery {
    pub filter: Option<Filter>,
    pub sort_by: Option<AttrPath>,
    pub descending: bool,
    /// 1-based.
    pub start_index: u64,
    pub count: u32,
}

#[derive(Debug, Clone)]
pub struct Page<T> {
    pub total: u64,
    pub items: Vec<T>,
}

/// What a conditional write found.
#[derive(Debug)]
pub enum Written<T> {
    Done(T),
    /// The version was not the one expected (or the resource is gone).
    Stale,
}

/// Where SCIM's users and groups live. Every write stores its events in
/// the same transaction. Writes are conditional on the version read.
#[async_trait]
pub trait ScimStore: Send + Sync + 'static {
    /// `USERNAME_TAKEN` or `EMAIL_TAKEN` on a clash.
    async fn insert_user(&self, user: &UserWrite, event: &UserEvent) -> Result<ScimUser, Error>;
    async fn find_user(&self, id: UserId) -> Result<Option<ScimUser>, Error>;
    /// Writes `user` while its version is `version`, with `events`; with
    /// `revoke`, revokes every open session of the user (each with its
    /// event, for that reason) and forgets their devices, in the same
    /// transaction.
    async fn update_user(
        &self,
        user: &UserWrite,
        version: i64,
        events: &[UserEvent],
        revoke: Option<&'static str>,
    ) -> Result<Written<ScimUser>, Error>;
    /// Revokes the user's sessions, then removes the user, with `event`,
    /// while the version is `version` (any, with None). False when there
    /// was no such user.
    async fn delete_user(
        &self,
        id: UserId,
        version: Option<i64>,
        event: &UserEvent,
    ) -> Result<Written<bool>, Error>;
    /// `INVALID_FILTER`-free: the filter was checked by the caller.
    async fn query_users(&self, query: &ListQuery) -> Result<Page<ScimUser>, Error>;

    /// `admin_groups` are the names (folded) of the groups that grant admin.
    async fn insert_group(
        &self,
        group: &GroupWrite,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<ScimGroup, Error>;
    async fn find_group(&self, id: Uuid) -> Result<Option<ScimGroup>, Error>;
    /// Writes the group, its members and the roles they bring (a user in
    /// an admin group is admin; one who leaves the last such group is a
    /// user again; each role change revokes the user's sessions), all in
    /// one transaction; refused (`FORBIDDEN`) if no admin would remain.
    async fn update_group(
        &self,
        group: &GroupWrite,
        version: i64,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<Written<ScimGroup>, Error>;
    async fn delete_group(
        &self,
        id: Uuid,
        version: Option<i64>,
        admin_groups: &[String],
        event: &UserEvent,
    ) -> Result<Written<bool>, Error>;
    async fn query_groups(&self, query: &ListQuery) -> Result<Page<ScimGroup>, Error>;
    /// Which of `ids` are users.
    async fn existing_users(&self, ids: &[UserId]) -> Result<Vec<UserId>, Error>;
}

/// SCIM's settings.
#[derive(Debug, Clone)]
pub struct ScimSettings {
    /// The absolute URL of `/scim/v2`, for `meta.location`.
    pub base_url: String,
    /// Groups whose members are admins, by name (compared folded).
    pub admin_groups: Vec<String>,
    /// The most resources one page holds.
    pub max_results: u32,
    /// The most members a group may have.
    pub max_members: usize,
}

/// Why a deactivation revokes sessions, as their events record it.
pub const DEACTIVATED: &str = "deactivated";

/// How many times a write whose resource changed under it is redone.
const ATTEMPTS: usize = 5;

/// The SCIM use case.
#[derive(Clone)]
pub struct Scim {
    store: Arc<dyn ScimStore>,
    sessions: Arc<dyn SessionRepository>,
    hashing: HashingPool,
    clock: Arc<dyn Clock>,
    settings: ScimSettings,
}

impl std::fmt::Debug for Scim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scim")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

/// A version as `If-Match` or `ETag` spells it: `W/"n"` or `"n"`.
pub fn parse_etag(text: &str) -> Option<i64> {
    let text = text.trim();
    let text = text.strip_prefix("W/").unwrap_or(text);
    text.strip_prefix('"')?.strip_suffix('"')?.parse().ok()
}

pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl Scim {
    pub fn new(
        store: Arc<dyn ScimStore>,
        sessions: Arc<dyn SessionRepository>,
        hashing: HashingPool,
        clock: Arc<dyn Clock>,
        settings: ScimSettings,
    ) -> Self {
        Self {
            store,
            sessions,
            hashing,
            clock,
            settings,
        }
    }

    pub fn settings(&self) -> &ScimSettings {
        &self.settings
    }

    fn admin_groups(&self) -> Vec<String> {
        self.settings
            .admin_groups
            .iter()
            .map(|g| g.to_lowercase())
            .collect()
    }

    fn is_admin_group(&self, name: &str) -> bool {
        let name = name.to_lowercase();
        self.admin_groups().contains(&name)
    }

    // ----- either kind, for the routes they share -----

    /// A page of users or groups.
    pub async fn list(&self, kind: Resource, query: &ListQuery) -> Result<Value, ScimError> {
        match kind {
            Resource::User => self.list_users(query).await,
            Resource::Group => self.list_groups(query).await,
        }
    }

    /// POST /Users or /Groups.
    pub async fn create(
        &self,
        kind: Resource,
        body: &Value,
        client: &str,
    ) -> Result<Value, ScimError> {
        match kind {
            Resource::User => self.create_user(body, client).await,
            Resource::Group => self.create_group(body, client).await,
        }
    }

    /// GET of one user or group, and its version.
    pub async fn get(&self, kind: Resource, id: &str) -> Result<(Value, i64), ScimError> {
        match kind {
            Resource::User => self.get_user(id).await,
            Resource::Group => self.get_group(id).await,
        }
    }

    /// PUT of one user or group.
    pub async fn replace(
        &self,
        kind: Resource,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        match kind {
            Resource::User => self.replace_user(id, body, if_match, client).await,
            Resource::Group => self.replace_group(id, body, if_match, client).await,
        }
    }

    /// PATCH of one user or group.
    pub async fn patch(
        &self,
        kind: Resource,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        match kind {
            Resource::User => self.patch_user(id, body, if_match, client).await,
            Resource::Group => self.patch_group(id, body, if_match, client).await,
        }
    }

    /// DELETE of one user or group.
    pub async fn delete(
        &self,
        kind: Resource,
        id: &str,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(), ScimError> {
        match kind {
            Resource::User => self.delete_user(id, if_match, client).await,
            Resource::Group => self.delete_group(id, if_match, client).await,
        }
    }

    // ----- users -----

    /// The user's resource.
    pub fn render_user(&self, user: &ScimUser) -> Value {
        let mut out = Map::new();
        let mut schemas = vec![Value::from(schema::USER)];
        if user.attributes.contains_key(schema::ENTERPRISE) {
            schemas.push(schema::ENTERPRISE.into());
        }
        out.insert("schemas".into(), schemas.into());
        out.insert("id".into(), user.id.to_string().into());
        if let Some(e) = &user.external_id {
            out.insert("externalId".into(), e.clone().into());
        }
        out.insert("userName".into(), user.username.as_str().into());
        out.insert("active".into(), user.active.into());
        for (k, v) in &user.attributes {
            out.insert(k.clone(), v.clone());
        }
        // The account's email is the primary one, whichever way it changed.
        let emails = out.entry("emails").or_insert_with(
            || json!([{"value": user.email.as_str(), "type": "work", "primary": true}]),
        );
        if let Value::Array(items) = emails {
            let primary = items
                .iter()
                .position(|e| e.get("primary") == Some(&Value::Bool(true)))
                .unwrap_or(0);
            if let Some(Value::Object(first)) = items.get_mut(primary)
                && first.get("value").and_then(Value::as_str) != Some(user.email.as_str())
            {
                first.insert("value".into(), user.email.as_str().into());
            }
        }
        if !user.groups.is_empty() {
            let groups: Vec<Value> = user
                .groups
                .iter()
                .map(|g| {
                    json!({
                        "value": g.id.to_string(),
                        "display": g.display,
                        "$ref": format!("{}/Groups/{}", self.settings.base_url, g.id),
                        "type": "direct",
                    })
                })
                .collect();
            out.insert("groups".into(), groups.into());
        }
        out.insert(
            "meta".into(),
            json!({
                "resourceType": "User",
                "created": rfc3339(user.created_at),
                "lastModified": rfc3339(user.updated_at),
                "version": etag(user.version),
                "location": format!("{}/Users/{}", self.settings.base_url, user.id),
            }),
        );
        Value::Object(out)
    }

    /// Reads a User body (POST, PUT, or a PATCH's result) into a write,
    /// and the password it sets, if any.
    fn user_write(
        &self,
        id: UserId,
        body: &Value,
        at: OffsetDateTime,
    ) -> Result<(UserWrite, Option<String>), ScimError> {
        let Value::Object(map) = body else {
            return Err(ScimError::invalid_syntax("a User must be a JSON object"));
        };
        let mut attributes = Map::new();
        let (mut username, mut active, mut external_id, mut password) = (None, true, None, None);
        for (key, value) in map {
            let lower = key.to_ascii_lowercase();
            match lower.as_str() {
                "schemas" | "id" | "meta" | "groups" => continue,
                "username" => username = Some(value),
                "externalid" => match value {
                    Value::Null => {}
                    Value::String(s) if s.len() <= 256 => external_id = Some(s.clone()),
                    _ => {
                        return Err(ScimError::invalid_value(
                            "externalId must be a string of at most 256 bytes".into(),
                        ));
                    }
                },
                "password" => match value {
                    Value::Null => {}
                    Value::String(s) => password = Some(s.clone()),
                    _ => return Err(ScimError::invalid_value("password must be a string".into())),
                },
                "active" => {
                    if let Some(attr) = schema::find(schema::USER_ATTRS, "active")
                        && let Some(Value::Bool(b)) = schema::normalize_value(attr, value)?
                    {
                        active = b;
                    }
                }
                _ if lower == schema::ENTERPRISE.to_ascii_lowercase() => {
                    let Value::Object(ext) = value else {
                        return Err(ScimError::invalid_value(format!(
                            "{} must be a JSON object",
                            schema::ENTERPRISE
                        )));
                    };
                    let mut out = Map::new();
                    for (k, v) in ext {
                        if let Some(attr) = schema::find(schema::ENTERPRISE_ATTRS, k)
                            && let Some(v) = schema::normalize_value(attr, v)?
                        {
                            out.insert(attr.name.to_owned(), v);
                        }
                    }
                    if !out.is_empty() {
                        attributes.insert(schema::ENTERPRISE.to_owned(), Value::Object(out));
                    }
                }
                _ => {
                    if let Some(attr) = schema::find(schema::USER_ATTRS, key)
                        && let Some(v) = schema::normalize_value(attr, value)?
                    {
                        attributes.insert(attr.name.to_owned(), v);
                    }
                }
            }
        }
        let username = match username {
            Some(Value::String(s)) => Username::parse(s)
                .map_err(|e| ScimError::invalid_value(format!("userName: {}", e.message())))?,
            Some(_) => return Err(ScimError::invalid_value("userName must be a string".into())),
            None => {
                return Err(ScimError::invalid_value("userName is required".to_owned()));
            }
        };
        // Every email is checked as polyhub's own are; the primary one (or
        // the first) is the account's.
        let mut primary = None;
        if let Some(Value::Array(emails)) = attributes.get("emails") {
            for (i, e) in emails.iter().enumerate() {
                let value = e.get("value").and_then(Value::as_str).ok_or_else(|| {
                    ScimError::invalid_value("every email needs a value".to_owned())
                })?;
                let parsed = Email::parse(value).map_err(|_| {
                    ScimError::invalid_value(format!("{value:?} is not a valid email address"))
                })?;
                if primary.is_none() || e.get("primary") == Some(&Value::Bool(true)) {
                    primary = Some((i, parsed));
                }
            }
        }
        let Some((_, email)) = primary else {
            return Err(ScimError::invalid_value(
                "polyhub needs an email for every user: send emails with at least one value"
                    .to_owned(),
            ));
        };
        Ok((
            UserWrite {
                id,
                username,
                email,
                active,
                external_id,
                attributes,
                password_hash: None,
                at,
            },
            password,
        ))
    }

    async fn hash(&self, username: &Username, password: &str) -> Result<PasswordHash, ScimError> {
        let password = Password::parse(password, username)
            .map_err(|e| ScimError::invalid_value(format!("password: {}", e.message())))?;
        Ok(self
            .hashing
            .run(move |hasher| hasher.hash(&password))
            .await??)
    }

    /// POST /Users.
    pub async fn create_user(&self, body: &Value, client: &str) -> Result<Value, ScimError> {
        let at = self.clock.now();
        let (mut write, password) = self.user_write(UserId::generate(), body, at)?;
        write.password_hash = Some(match password {
            Some(p) => self.hash(&write.username, &p).await?,
            None => PasswordHash::unset(),
        });
        let event = UserEvent::new(
            Some(write.id),
            at,
            UserChange::Created {
                username: write.username.as_str().to_owned(),
                email: write.email.as_str().to_owned(),
                role: Role::User,
                by: None,
            },
        );
        let user = self.store.insert_user(&write, &event).await?;
        tracing::info!(user_id = %user.id, client, active = user.active, "user provisioned over SCIM");
        Ok(self.render_user(&user))
    }

    fn user_id(id: &str) -> Result<UserId, ScimError> {
        UserId::parse(id).map_err(|_| ScimError::not_found("User", id))
    }

    async fn load_user(&self, id: &str) -> Result<ScimUser, ScimError> {
        self.store
            .find_user(Self::user_id(id)?)
            .await?
            .ok_or_else(|| ScimError::not_found("User", id))
    }

    /// GET /Users/{id}.
    pub async fn get_user(&self, id: &str) -> Result<(Value, i64), ScimError> {
        let user = self.load_user(id).await?;
        Ok((self.render_user(&user), user.version))
    }

    /// PUT /Users/{id}: `body` replaces the user, except its password
    /// (kept unless sent) and what is read-only.
    pub async fn replace_user(
        &self,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        self.modify_user(id, if_match, client, |_, _| Ok(body.clone()))
            .await
    }

    /// PATCH /Users/{id}.
    pub async fn patch_user(
        &self,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        let ops = patch::Operations::parse(body)?;
        self.modify_user(id, if_match, client, |current, _| {
            let mut doc = current.clone();
            ops.apply(&mut doc, patch::Resource::User)?;
            Ok(doc)
        })
        .await
    }

    /// Reads, changes with `change` (given the rendered user), checks and
    /// writes while the version read is still current, redone a few times
    /// if another write came between (unless `If-Match` named a version).
    async fn modify_user<F>(
        &self,
        id: &str,
        if_match: Option<i64>,
        client: &str,
        change: F,
    ) -> Result<(Value, i64), ScimError>
    where
        F: Fn(&Value, &ScimUser) -> Result<Value, ScimError>,
    {
        for _ in 0..ATTEMPTS {
            let current = self.load_user(id).await?;
            if if_match.is_some_and(|v| v != current.version) {
                return Err(ScimError::precondition_failed());
            }
            let rendered = self.render_user(&current);
            let mut wanted = change(&rendered, &current)?;
            // What the client cannot change, put back as it was.
            if let Value::Object(map) = &mut wanted {
                map.remove("groups");
            }
            let at = self.clock.now();
            let (mut write, password) = self.user_write(current.id, &wanted, at)?;
            if let Some(p) = password {
                write.password_hash = Some(self.hash(&write.username, &p).await?);
            }
            let (events, revoke) = self.user_events(&current, &write, client);
            if events.is_empty() {
                return Ok((rendered, current.version));
            }
            match self
                .store
                .update_user(&write, current.version, &events, revoke)
                .await?
            {
                Written::Done(user) => {
                    // What this process remembers of the user (its cached
                    // sessions, the directory's entry) goes at once, not
                    // when PostgreSQL's notification comes: a reactivated
                    // user signs in on the next request.
                    self.sessions.forget_user(user.id);
                    tracing::info!(user_id = %user.id, client, changes = events.len(), "user changed over SCIM");
                    return Ok((self.render_user(&user), user.version));
                }
                Written::Stale if if_match.is_some() => {
                    return Err(ScimError::precondition_failed());
                }
                Written::Stale => continue,
            }
        }
        Err(ScimError::new(
            409,
            None,
            "the user kept changing while this request was applied: retry",
        ))
    }

    /// The events a change from `current` to `write` is stored with, and
    /// whether it revokes the user's sessions (a new password, a
    /// deactivation).
    fn user_events(
        &self,
        current: &ScimUser,
        write: &UserWrite,
        client: &str,
    ) -> (Vec<UserEvent>, Option<&'static str>) {
        let at = write.at;
        let event = |change| UserEvent::new(Some(current.id), at, change);
        let mut events = Vec::new();
        let mut revoke = None;
        let mut attributes = Vec::new();
        if write.username != current.username {
            attributes.push("userName".to_owned());
        }
        if write.external_id != current.external_id {
            attributes.push("externalId".to_owned());
        }
        let mut keys: Vec<&String> = write
            .attributes
            .keys()
            .chain(current.attributes.keys())
            .collect();
        keys.sort();
        keys.dedup();
        for key in keys {
            if write.attributes.get(key) != current.attributes.get(key) {
                attributes.push(key.clone());
            }
        }
        if !attributes.is_empty() {
            events.push(event(UserChange::Updated {
                attributes,
                client: client.to_owned(),
            }));
        }
        if write.email != current.email {
            events.push(event(UserChange::EmailChanged {
                email: write.email.as_str().to_owned(),
            }));
        }
        if write.password_hash.is_some() {
            events.push(event(UserChange::PasswordChanged));
            revoke = Some(crate::ports::PASSWORD_CHANGED);
        }
        if write.active != current.active {
            if write.active {
                events.push(event(UserChange::Reactivated));
            } else {
                events.push(event(UserChange::Deactivated));
                revoke = Some(DEACTIVATED);
            }
        }
        (events, revoke)
    }

    /// DELETE /Users/{id}.
    pub async fn delete_user(
        &self,
        id: &str,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(), ScimError> {
        let current = self.load_user(id).await?;
        let event = UserEvent::new(
            Some(current.id),
            self.clock.now(),
            UserChange::Deleted {
                username: current.username.as_str().to_owned(),
            },
        );
        match self.store.delete_user(current.id, if_match, &event).await? {
            Written::Done(true) => {
                self.sessions.forget_user(current.id);
                tracing::info!(user_id = %current.id, client, "user deleted over SCIM");
                Ok(())
            }
            Written::Done(false) => Err(ScimError::not_found("User", id)),
            Written::Stale => Err(ScimError::precondition_failed()),
        }
    }

    /// GET /Users (and POST /Users/.search).
    pub async fn list_users(&self, query: &ListQuery) -> Result<Value, ScimError> {
        if let Some(filter) = &query.filter {
            check_filter(filter, &|p| schema::user_path(p).is_some())?;
        }
        if let Some(sort) = &query.sort_by
            && schema::user_path(sort).is_none()
            && !is_meta(sort)
            && !sort.is("id")
            && !sort.is("externalId")
        {
            return Err(ScimError::invalid_value(format!("cannot sort by {sort}")));
        }
        let page = self.store.query_users(query).await?;
        let items = page.items.iter().map(|u| self.render_user(u)).collect();
        Ok(list_response(page.total, query, items))
    }

    // ----- groups -----

    pub fn render_group(&self, group: &ScimGroup) -> Value {
        let mut out = json!({
            "schemas": [schema::GROUP],
            "id": group.id.to_string(),
            "displayName": group.display_name,
            "members": group.members.iter().map(|m| json!({
                "value": m.id.to_string(),
                "type": "User",
                "$ref": format!("{}/Users/{}", self.settings.base_url, m.id),
            })).collect::<Vec<_>>(),
            "meta": {
                "resourceType": "Group",
                "created": rfc3339(group.created_at),
                "lastModified": rfc3339(group.updated_at),
                "version": etag(group.version),
                "location": format!("{}/Groups/{}", self.settings.base_url, group.id),
            },
        });
        if let Some(e) = &group.external_id {
            out["externalId"] = e.clone().into();
        }
        out
    }

    async fn group_write(
        &self,
        id: Uuid,
        body: &Value,
        at: OffsetDateTime,
    ) -> Result<GroupWrite, ScimError> {
        let Value::Object(map) = body else {
            return Err(ScimError::invalid_syntax("a Group must be a JSON object"));
        };
        let (mut display_name, mut external_id, mut members) = (None, None, Vec::new());
        for (key, value) in map {
            match key.to_ascii_lowercase().as_str() {
                "displayname" => match value {
                    Value::String(s) if !s.trim().is_empty() && s.chars().count() <= 256 => {
                        display_name = Some(s.clone())
                    }
                    _ => {
                        return Err(ScimError::invalid_value(
                            "displayName must be 1 to 256 characters".into(),
                        ));
                    }
                },
                "externalid" => match value {
                    Value::Null => {}
                    Value::String(s) if s.len() <= 256 => external_id = Some(s.clone()),
                    _ => {
                        return Err(ScimError::invalid_value(
                            "externalId must be a string of at most 256 bytes".into(),
                        ));
                    }
                },
                "members" => {
                    let Some(attr) = schema::find(schema::GROUP_ATTRS, "members") else {
                        continue;
                    };
                    let Some(Value::Array(items)) = schema::normalize_value(attr, value)? else {
                        continue;
                    };
                    for item in items {
                        if item
                            .get("type")
                            .and_then(Value::as_str)
                            .is_some_and(|t| !t.eq_ignore_ascii_case("User"))
                        {
                            return Err(ScimError::invalid_value(
                                "only users can be members: polyhub has no nested groups".into(),
                            ));
                        }
                        let id = item.get("value").and_then(Value::as_str).ok_or_else(|| {
                            ScimError::invalid_value("every member needs a value".into())
                        })?;
                        let id = UserId::parse(id).map_err(|_| {
                            ScimError::invalid_value(format!("no user with id {id:?}"))
                        })?;
                        if !members.contains(&id) {
                            members.push(id);
                        }
                    }
                }
                _ => {}
            }
        }
        let display_name = display_name
            .ok_or_else(|| ScimError::invalid_value("displayName is required".into()))?;
        if members.len() > self.settings.max_members {
            return Err(ScimError::invalid_value(format!(
                "a group has at most {} members",
                self.settings.max_members
            )));
        }
        let existing = self.store.existing_users(&members).await?;
        if let Some(missing) = members.iter().find(|m| !existing.contains(m)) {
            return Err(ScimError::invalid_value(format!(
                "no user with id {missing}"
            )));
        }
        let admin = self.is_admin_group(&display_name);
        Ok(GroupWrite {
            id,
            display_name,
            external_id,
            members,
            admin,
            at,
        })
    }

    fn group_event(kind: GroupChangeKind, write: &GroupWrite, before: &[UserId]) -> UserEvent {
        UserEvent::new(
            None,
            write.at,
            UserChange::Group {
                kind,
                group_id: write.id,
                display_name: write.display_name.clone(),
                added: write
                    .members
                    .iter()
                    .filter(|m| !before.contains(m))
                    .copied()
                    .collect(),
                removed: before
                    .iter()
                    .filter(|m| !write.members.contains(m))
                    .copied()
                    .collect(),
            },
        )
    }

    /// POST /Groups.
    pub async fn create_group(&self, body: &Value, client: &str) -> Result<Value, ScimError> {
        let write = self
            .group_write(Uuid::now_v7(), body, self.clock.now())
            .await?;
        let event = Self::group_event(GroupChangeKind::Created, &write, &[]);
        let group = self
            .store
            .insert_group(&write, &self.admin_groups(), &event)
            .await?;
        if write.admin {
            for m in &write.members {
                self.sessions.forget_user(*m);
            }
        }
        tracing::info!(group_id = %group.id, client, admin = write.admin, "group provisioned over SCIM");
        Ok(self.render_group(&group))
    }

    async fn load_group(&self, id: &str) -> Result<ScimGroup, ScimError> {
        let uuid = Uuid::parse_str(id).map_err(|_| ScimError::not_found("Group", id))?;
        self.store
            .find_group(uuid)
            .await?
            .ok_or_else(|| ScimError::not_found("Group", id))
    }

    pub async fn get_group(&self, id: &str) -> Result<(Value, i64), ScimError> {
        let group = self.load_group(id).await?;
        Ok((self.render_group(&group), group.version))
    }

    pub async fn replace_group(
        &self,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        self.modify_group(id, if_match, client, |_| Ok(body.clone()))
            .await
    }

    pub async fn patch_group(
        &self,
        id: &str,
        body: &Value,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(Value, i64), ScimError> {
        let ops = patch::Operations::parse(body)?;
        self.modify_group(id, if_match, client, |current| {
            let mut doc = current.clone();
            ops.apply(&mut doc, patch::Resource::Group)?;
            Ok(doc)
        })
        .await
    }

    async fn modify_group<F>(
        &self,
        id: &str,
        if_match: Option<i64>,
        client: &str,
        change: F,
    ) -> Result<(Value, i64), ScimError>
    where
        F: Fn(&Value) -> Result<Value, ScimError>,
    {
        for _ in 0..ATTEMPTS {
            let current = self.load_group(id).await?;
            if if_match.is_some_and(|v| v != current.version) {
                return Err(ScimError::precondition_failed());
            }
            let rendered = self.render_group(&current);
            let wanted = change(&rendered)?;
            let write = self
                .group_write(current.id, &wanted, self.clock.now())
                .await?;
            let before: Vec<UserId> = current.members.iter().map(|m| m.id).collect();
            let event = Self::group_event(GroupChangeKind::Updated, &write, &before);
            match self
                .store
                .update_group(&write, current.version, &self.admin_groups(), &event)
                .await?
            {
                Written::Done(group) => {
                    let was_admin = self.is_admin_group(&current.display_name);
                    if was_admin || write.admin {
                        for m in before.iter().chain(write.members.iter()) {
                            self.sessions.forget_user(*m);
                        }
                    }
                    tracing::info!(group_id = %group.id, client, "group changed over SCIM");
                    return Ok((self.render_group(&group), group.version));
                }
                Written::Stale if if_match.is_some() => {
                    return Err(ScimError::precondition_failed());
                }
                Written::Stale => continue,
            }
        }
        Err(ScimError::new(
            409,
            None,
            "the group kept changing while this request was applied: retry",
        ))
    }

    pub async fn delete_group(
        &self,
        id: &str,
        if_match: Option<i64>,
        client: &str,
    ) -> Result<(), ScimError> {
        let current = self.load_group(id).await?;
        let before: Vec<UserId> = current.members.iter().map(|m| m.id).collect();
        let write = GroupWrite {
            id: current.id,
            display_name: current.display_name.clone(),
            external_id: current.external_id.clone(),
            members: Vec::new(),
            admin: false,
            at: self.clock.now(),
        };
        let event = Self::group_event(GroupChangeKind::Deleted, &write, &before);
        match self
            .store
            .delete_group(current.id, if_match, &self.admin_groups(), &event)
            .await?
        {
            Written::Done(true) => {
                for m in &before {
                    self.sessions.forget_user(*m);
                }
                tracing::info!(group_id = %current.id, client, "group deleted over SCIM");
                Ok(())
            }
            Written::Done(false) => Err(ScimError::not_found("Group", id)),
            Written::Stale => Err(ScimError::precondition_failed()),
        }
    }

    pub async fn list_groups(&self, query: &ListQuery) -> Result<Value, ScimError> {
        let known = |p: &AttrPath| {
            p.schema
                .as_deref()
                .is_none_or(|s| s.eq_ignore_ascii_case(schema::GROUP))
                && (p.is("id")
                    || p.is("externalId")
                    || p.is_sub("displayName", None)
                    || p.is("members")
                    || is_meta(p))
        };
        if let Some(filter) = &query.filter {
            check_filter(filter, &known)?;
        }
        if let Some(sort) = &query.sort_by
            && !known(sort)
        {
            return Err(ScimError::invalid_value(format!("cannot sort by {sort}")));
        }
        let page = self.store.query_groups(query).await?;
        let items = page.items.iter().map(|g| self.render_group(g)).collect();
        Ok(list_response(page.total, query, items))
    }

    // ----- discovery -----

    pub fn service_provider_config(&self) -> Value {
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
            "documentationUri": "https://github.com/polyhub/polyhub/blob/main/docs/SCIM.md",
            "patch": {"supported": true},
            "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
            "filter": {"supported": true, "maxResults": self.settings.max_results},
            "changePassword": {"supported": true},
            "sort": {"supported": true},
            "etag": {"supported": true},
            "authenticationSchemes": [{
                "type": "oauthbearertoken",
                "name": "OAuth Bearer Token",
                "description": "A client-credentials access token with the scope scim, from POST /oauth2/token",
                "specUri": "https://www.rfc-editor.org/rfc/rfc6750",
                "primary": true,
            }],
            "meta": {
                "resourceType": "ServiceProviderConfig",
                "location": format!("{}/ServiceProviderConfig", self.settings.base_url),
            },
        })
    }

    pub fn resource_types(&self) -> Vec<Value> {
        let base = &self.settings.base_url;
        vec![
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
                "id": "User",
                "name": "User",
                "endpoint": "/Users",
                "description": "A polyhub user",
                "schema": schema::USER,
                "schemaExtensions": [{"schema": schema::ENTERPRISE, "required": false}],
                "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
            }),
            json!({
                "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
                "id": "Group",
                "name": "Group",
                "endpoint": "/Groups",
                "description": "A group of polyhub users; some grant admin (scim.admin_groups)",
                "schema": schema::GROUP,
                "schemaExtensions": [],
                "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
            }),
        ]
    }

    pub fn schemas(&self) -> Vec<Value> {
        let base = &self.settings.base_url;
        vec![
            schema::document(
                schema::USER,
                "User",
                "User Account",
                schema::USER_ATTRS,
                base,
            ),
            schema::document(schema::GROUP, "Group", "Group", schema::GROUP_ATTRS, base),
            schema::document(
                schema::ENTERPRISE,
                "EnterpriseUser",
                "Enterprise User",
                schema::ENTERPRISE_ATTRS,
                base,
            ),
        ]
    }
}

fn is_meta(path: &AttrPath) -> bool {
    path.is_sub("meta", Some("created")) || path.is_sub("meta", Some("lastModified"))
}

/// Refuses a filter naming an attribute `known` does not know.
fn check_filter(filter: &Filter, known: &dyn Fn(&AttrPath) -> bool) -> Result<(), ScimError> {
    match filter {
        Filter::And(a, b) | Filter::Or(a, b) => {
            check_filter(a, known)?;
            check_filter(b, known)
        }
        Filter::Not(a) => check_filter(a, known),
        Filter::Present(p) | Filter::Compare { path: p, .. } => {
            if known(p) || p.is("id") || p.is("externalId") || is_meta(p) {
                Ok(())
            } else {
                Err(ScimError::invalid_filter(format!("unknown attribute {p}")))
            }
        }
        Filter::ValuePath { path, .. } => {
            if known(path) {
                Ok(())
            } else {
                Err(ScimError::invalid_filter(format!(
                    "unknown attribute {path}"
                )))
            }
        }
    }
}

/// A list response (RFC 7644 §3.4.2).
pub fn list_response(total: u64, query: &ListQuery, items: Vec<Value>) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
        "totalResults": total,
        "startIndex": query.start_index,
        "itemsPerPage": items.len(),
        "Resources": items,
    })
}

/// Applies `attributes` / `excludedAttributes` (RFC 7644 §3.9) to a
/// rendered resource: `id` and `schemas` always stay.
pub fn project(resource: &mut Value, attributes: &[AttrPath], excluded: &[AttrPath]) {
    let Value::Object(map) = resource else { return };
    if !attributes.is_empty() {
        let mut kept = Map::new();
        for (key, value) in map.iter() {
            if key == "id" || key == "schemas" {
                kept.insert(key.clone(), value.clone());
                continue;
            }
            let extension = key.starts_with("urn:");
            for path in attributes {
                let targets_key = if extension {
                    path.schema
                        .as_deref()
                        .is_some_and(|s| s.eq_ignore_ascii_case(key))
                } else {
                    path.is(key)
                        && path
                            .schema
                            .as_deref()
                            .is_none_or(|s| !s.eq_ignore_ascii_case(schema::ENTERPRISE))
                };
                if !targets_key {
                    continue;
                }
                let (inner, sub) = if extension {
                    (Some(path.attr.as_str()), path.sub.as_deref())
                } else {
                    (path.sub.as_deref(), None)
                };
                let picked = match (inner, value) {
                    (None, v) => v.clone(),
                    (Some(name), Value::Object(obj)) => {
                        let mut part = kept
                            .get(key)
                            .cloned()
                            .unwrap_or_else(|| Value::Object(Map::new()));
                        if let Some((found, inner_value)) =
                            obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(name))
                        {
                            let v = match (sub, inner_value) {
                                (Some(s), Value::Object(o)) => o
                                    .iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(s))
                                    .map(|(k, v)| json!({ k.clone(): v.clone() }))
                                    .unwrap_or(Value::Null),
                                (_, v) => v.clone(),
                            };
                            part[found.as_str()] = v;
                        }
                        part
                    }
                    (Some(name), Value::Array(items)) => Value::Array(
                        items
                            .iter()
                            .filter_map(|i| {
                                i.as_object()?
                                    .iter()
                                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                                    .map(|(k, v)| json!({ k.clone(): v.clone() }))
                            })
                            .collect(),
                    ),
                    (Some(_), v) => v.clone(),
                };
                kept.insert(key.clone(), picked);
            }
        }
        *map = kept;
    }
    for path in excluded {
        if path.is("id") || path.is("schemas") {
            continue;
        }
        let key = match &path.schema {
            Some(s) if s.eq_ignore_ascii_case(schema::ENTERPRISE) => {
                if let Some(Value::Object(ext)) = map.get_mut(schema::ENTERPRISE)
                    && let Some(k) = schema::key_of(ext, &path.attr)
                {
                    ext.remove(&k);
                }
                continue;
            }
            _ => schema::key_of(map, &path.attr),
        };
        if let Some(key) = key {
            match (&path.sub, map.get_mut(&key)) {
                (None, _) => {
                    map.remove(&key);
                }
                (Some(sub), Some(Value::Object(obj))) => {
                    if let Some(k) = schema::key_of(obj, sub) {
                        obj.remove(&k);
                    }
                }
                (Some(sub), Some(Value::Array(items))) => {
                    for item in items {
                        if let Value::Object(obj) = item
                            && let Some(k) = schema::key_of(obj, sub)
                        {
                            obj.remove(&k);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}
