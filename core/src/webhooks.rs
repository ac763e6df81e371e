//! Webhooks: URLs that receive the event log's events, signed per Standard
//! Webhooks (`webhook-id`, `webhook-timestamp`, `webhook-signature:
//! v1,<base64 HMAC-SHA256 of "id.timestamp.body">`).
//!
//! Each endpoint is a subscriber of the event log, so it has its own queue
//! ([`Outbox`]) and no endpoint's outage holds back another or the activity
//! log. Admins manage endpoints through [`Webhooks`] (REST, the console,
//! `hub webhooks`); [`crate::delivery::Dispatcher`] carries the events.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::ports::{Clock, UserRepository};
use crate::token::Principal;
use crate::user::UserId;

/// Every type an endpoint or a feed may ask for; a pattern naming none of
/// them is refused, so a typo does not silently subscribe to nothing.
pub const EVENT_TYPES: &[&str] = &[
    "user.created",
    "user.email_changed",
    "user.password_changed",
    "user.role_changed",
    "user.deleted",
    "users.imported",
    "user.updated",
    "user.deactivated",
    "user.reactivated",
    "user.factors_changed",
    "user.password_reset_requested",
    "user.email_verification_requested",
    "user.new_device",
    "group.created",
    "group.updated",
    "group.deleted",
    "session.opened",
    "session.touched",
    "session.revoked",
    "webhook.created",
    "webhook.deleted",
    "webhook.secret_rotated",
    "webhook.disabled",
    "webhook.enabled",
];

/// Whether `pattern` (`*`, `prefix.*` or an exact type) takes `type_name`:
/// the same rule as the log's `event_type_matches`.
pub fn type_matches(pattern: &str, type_name: &str) -> bool {
    if pattern == "*" || pattern == type_name {
        return true;
    }
    match pattern.strip_suffix('*') {
        Some(prefix) if prefix.ends_with('.') => type_name.starts_with(prefix),
        _ => false,
    }
}

/// The event types an endpoint takes: 1 to 32 patterns, each `*`, `prefix.*`
/// or an exact type, each matching at least one type polyhub emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(Vec<String>);

impl EventTypes {
    pub fn parse<I, S>(patterns: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut kept: Vec<String> = Vec::new();
        for pattern in patterns {
            let pattern = pattern.as_ref().trim();
            if !EVENT_TYPES.iter().any(|t| type_matches(pattern, t)) {
                return Err(Error::with_message(
                    ErrorCode::InvalidRequest,
                    format!(
                        "{pattern:?} matches no event type; use *, a prefix such as user.* or one of: {}",
                        EVENT_TYPES.join(", ")
                    ),
                ));
            }
            if !kept.iter().any(|p| p == pattern) {
                kept.push(pattern.to_owned());
            }
        }
        if kept.is_empty() || kept.len() > 32 {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "give 1 to 32 event types",
            ));
        }
        Ok(Self(kept))
    }

    pub fn as_slice(&self) -> &[String] {
        &self.0
    }

    pub fn matches(&self, type_name: &str) -> bool {
        self.0.iter().any(|p| type_matches(p, type_name))
    }
}

/// A URL's scheme, host and port, without path or query: what logs and
/// events show of an endpoint's URL, whose path or query may itself be a
/// credential (a token in a chat service's hook URL).
pub fn origin(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return String::new();
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    format!("{scheme}://{host}")
}

/// An endpoint's id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EndpointId(Uuid);

impl EndpointId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        Uuid::parse_str(text).map(Self).map_err(|_| {
            Error::with_message(ErrorCode::NotFound, "no webhook endpoint with this id")
        })
    }

    pub const fn as_uuid(self) -> Uuid {
        self.0
    }

    /// Its queue's name in the event log's subscribers.
    pub fn subscriber(self) -> String {
        format!("webhook:{}", self.0)
    }
}

impl From<Uuid> for EndpointId {
    fn from(id: Uuid) -> Self {
        Self(id)
    }
}

impl std::fmt::Display for EndpointId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// A signing secret: 32 random bytes, shown once as `whsec_<base64>` (the
/// form Standard Webhooks' libraries take).
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(Vec<u8>);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl WebhookSecret {
    pub fn generate() -> Result<Self, Error> {
        let mut key = vec![0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| Error::internal(format!("no randomness for a webhook secret: {e}")))?;
        Ok(Self(key))
    }

    /// As stored.
    pub fn from_bytes(key: Vec<u8>) -> Self {
        Self(key)
    }

    pub fn bytes(&self) -> &[u8] {
        &self.0
    }

    /// `whsec_<base64>`: what the receiver configures.
    pub fn shown(&self) -> String {
        format!("whsec_{}", STANDARD.encode(&self.0))
    }
}

/// The `webhook-signature` value for one key: `v1,<base64 HMAC-SHA256 of
/// "{id}.{timestamp}.{body}">`.
pub fn signature(
    key: &[u8],
    message_id: &str,
    timestamp: i64,
    body: &[u8],
) -> Result<String, Error> {
    let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(key)
        .map_err(|e| Error::internal(format!("a webhook key HMAC cannot take: {e}")))?;
    mac.update(message_id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Ok(format!(
        "v1,{}",
        STANDARD.encode(mac.finalize().into_bytes())
    ))
}

/// The keys an endpoint's deliveries are signed with now: the current one,
/// and during a rotation's grace period the previous one beside it.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    pub current: WebhookSecret,
    pub previous: Option<WebhookSecret>,
}

impl SigningKeys {
    /// The `webhook-signature` header: one `v1,` signature per key,
    /// space-separated.
    pub fn header(&self, message_id: &str, timestamp: i64, body: &[u8]) -> Result<String, Error> {
        let mut header = signature(self.current.bytes(), message_id, timestamp, body)?;
        if let Some(previous) = &self.previous {
            header.push(' ');
            header.push_str(&signature(previous.bytes(), message_id, timestamp, body)?);
        }
        Ok(header)
    }
}

/// An endpoint as admins see it (never its secret).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEndpoint {
    pub id: EndpointId,
    pub url: String,
    pub types: EventTypes,
    pub description: String,
    pub created_at: OffsetDateTime,
    pub created_by: Option<UserId>,
    /// Since when deliveries have been failing (none while they succeed).
    pub failing_since: Option<OffsetDateTime>,
    /// The last failure's reason, as the sender saw it.
    pub last_error: Option<String>,
    pub disabled_at: Option<OffsetDateTime>,
    pub disabled_reason: Option<String>,
    /// While a rotated secret still signs beside the new one.
    pub previous_secret_until: Option<OffsetDateTime>,
}

fn rfc3339(at: OffsetDateTime) -> Option<String> {
    at.format(&time::format_description::well_known::Rfc3339)
        .ok()
}

impl WebhookEndpoint {
    /// As the REST API, the CLI and the console show it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "url": self.url,
            "events": self.types.as_slice(),
            "description": self.description,
            "created_at": rfc3339(self.created_at),
            "created_by": self.created_by.map(|u| u.to_string()),
            "status": if self.disabled_at.is_some() { "disabled" } else if self.failing_since.is_some() { "failing" } else { "active" },
            "failing_since": self.failing_since.and_then(rfc3339),
            "last_error": self.last_error,
            "disabled_at": self.disabled_at.and_then(rfc3339),
            "disabled_reason": self.disabled_reason,
            "previous_secret_until": self.previous_secret_until.and_then(rfc3339),
        })
    }
}

/// What happened to an endpoint: its own events in the log (`webhook.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookChange {
    Created {
        url: String,
        types: Vec<String>,
    },
    Deleted {
        url: String,
    },
    SecretRotated,
    /// Delivery stopped: failing for too long, or the receiver said 410 Gone.
    Disabled {
        url: String,
        reason: String,
    },
    Enabled,
}

impl WebhookChange {
    pub const fn type_name(&self) -> &'static str {
        match self {
            WebhookChange::Created { .. } => "webhook.created",
            WebhookChange::Deleted { .. } => "webhook.deleted",
            WebhookChange::SecretRotated => "webhook.secret_rotated",
            WebhookChange::Disabled { .. } => "webhook.disabled",
            WebhookChange::Enabled => "webhook.enabled",
        }
    }
}

/// An endpoint's event: which, by whom (none when polyhub itself disabled
/// it) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookEvent {
    pub id: Uuid,
    pub endpoint: EndpointId,
    pub by: Option<UserId>,
    pub at: OffsetDateTime,
    pub change: WebhookChange,
}

impl WebhookEvent {
    pub fn new(
        endpoint: EndpointId,
        by: Option<UserId>,
        at: OffsetDateTime,
        change: WebhookChange,
    ) -> Self {
        Self {
            id: Uuid::now_v7(),
            endpoint,
            by,
            at,
            change,
        }
    }

    pub fn data(&self) -> Value {
        let mut data = match &self.change {
            WebhookChange::Created { url, types } => json!({ "url": url, "events": types }),
            WebhookChange::Deleted { url } => json!({ "url": url }),
            WebhookChange::SecretRotated | WebhookChange::Enabled => json!({}),
            WebhookChange::Disabled { url, reason } => json!({ "url": url, "reason": reason }),
        };
        if let Some(object) = data.as_object_mut() {
            object.insert("endpoint_id".to_owned(), json!(self.endpoint.to_string()));
        }
        data
    }

    /// Reads a stored one back (the log's columns: `by` is its user id).
    pub fn parse(
        id: Uuid,
        type_name: &str,
        by: Option<UserId>,
        at: OffsetDateTime,
        data: &Value,
    ) -> Result<Self, Error> {
        let text = |field: &str| {
            data.get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::internal(format!("a {type_name} event has no {field}")))
        };
        let endpoint =
            EndpointId(Uuid::parse_str(&text("endpoint_id")?).map_err(|_| {
                Error::internal(format!("a {type_name} event has a bad endpoint_id"))
            })?);
        let change = match type_name {
            "webhook.created" => WebhookChange::Created {
                url: text("url")?,
                types: data
                    .get("events")
                    .and_then(Value::as_array)
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "webhook.deleted" => WebhookChange::Deleted { url: text("url")? },
            "webhook.secret_rotated" => WebhookChange::SecretRotated,
            "webhook.disabled" => WebhookChange::Disabled {
                url: text("url")?,
                reason: text("reason")?,
            },
            "webhook.enabled" => WebhookChange::Enabled,
            other => return Err(Error::internal(format!("unknown event type {other:?}"))),
        };
        Ok(Self {
            id,
            endpoint,
            by,
            at,
            change,
        })
    }
}

/// Where endpoints are kept; every change of one writes its event in the
/// same transaction.
#[async_trait::async_trait]
pub trait WebhookEndpoints: Send + Sync + 'static {
    /// Stores the endpoint and subscribes it to the log: it gets the
    /// events written from now on.
    async fn create(
        &self,
        endpoint: &WebhookEndpoint,
        secret: &WebhookSecret,
        event: &WebhookEvent,
    ) -> Result<(), Error>;
    async fn list(&self) -> Result<Vec<WebhookEndpoint>, Error>;
    async fn get(&self, id: EndpointId) -> Result<Option<WebhookEndpoint>, Error>;
    /// Removes it with its queue; false when there was none.
    async fn delete(&self, id: EndpointId, event: &WebhookEvent) -> Result<bool, Error>;
    /// A new secret; the old one signs beside it until `previous_until`.
    async fn rotate_secret(
        &self,
        id: EndpointId,
        secret: &WebhookSecret,
        previous_until: OffsetDateTime,
        event: &WebhookEvent,
    ) -> Result<bool, Error>;
    /// Queues again, for delivery, every event of its types after position
    /// `after` that the log still keeps; how many.
    async fn replay(&self, id: EndpointId, after: i64) -> Result<u64, Error>;
    /// The keys its deliveries are signed with at `now`.
    async fn keys(&self, id: EndpointId, now: OffsetDateTime)
    -> Result<Option<SigningKeys>, Error>;
    /// Records a failed delivery; since when it has been failing.
    async fn failed(
        &self,
        id: EndpointId,
        at: OffsetDateTime,
        error: &str,
    ) -> Result<OffsetDateTime, Error>;
    /// Records that deliveries succeed again.
    async fn recovered(&self, id: EndpointId) -> Result<(), Error>;
    /// Stops deliveries and drops its queue (a dead receiver must not keep
    /// the log from being pruned).
    async fn disable(
        &self,
        id: EndpointId,
        reason: &str,
        event: &WebhookEvent,
    ) -> Result<(), Error>;
    /// Subscribes it again: it gets the events written from now on
    /// (`replay` fills the gap).
    async fn enable(&self, id: EndpointId, event: &WebhookEvent) -> Result<bool, Error>;
    /// Its queue of the event log.
    fn queue(&self, id: EndpointId) -> Arc<dyn WebhookQueue>;
}

/// An endpoint's queue as its worker claims it.
#[async_trait::async_trait]
pub trait WebhookQueue: Send + Sync + 'static {
    /// Up to `limit` of the oldest pending events, leaving out those of the
    /// users in `waiting` (whose earlier event waits for its retry), so
    /// that one such user's backlog never fills a batch and stalls the rest.
    async fn claim(
        &self,
        limit: u32,
        waiting: &[Uuid],
    ) -> Result<Box<dyn crate::ports::ClaimedEvents>, Error>;
}

/// The HTTP side of webhooks: where a URL may point, and one POST.
#[async_trait::async_trait]
pub trait WebhookTransport: Send + Sync + 'static {
    /// Refuses a URL that is not absolute http(s), or whose host resolves
    /// to an address webhooks may not reach (`WEBHOOK_TARGET_REFUSED`).
    async fn check_target(&self, url: &str) -> Result<(), Error>;
    /// POSTs `body` with `headers`; the receiver's verdict.
    async fn post(&self, url: &str, headers: &[(&'static str, String)], body: &[u8]) -> Delivery;
}

/// What became of one POST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// A 2xx answer.
    Accepted,
    /// 410 Gone: the receiver asks never to be called again.
    Gone,
    /// Any other answer, or none: retried later. Says why, for operators.
    Failed(String),
}

/// Limits on what admins may configure.
#[derive(Debug, Clone)]
pub struct WebhookLimits {
    /// Endpoints at most (each is a queue, a worker and its sockets).
    pub max_endpoints: usize,
    /// How long a rotated secret still signs beside the new one.
    pub rotation_grace: Duration,
}

/// Managing endpoints: for admins only, checked against the current role
/// on every call.
#[derive(Clone)]
pub struct Webhooks {
    endpoints: Arc<dyn WebhookEndpoints>,
    transport: Arc<dyn WebhookTransport>,
    users: Arc<dyn UserRepository>,
    clock: Arc<dyn Clock>,
    limits: WebhookLimits,
}

/// A new endpoint and its secret, shown this once.
#[derive(Debug, Clone)]
pub struct CreatedEndpoint {
    pub endpoint: WebhookEndpoint,
    pub secret: WebhookSecret,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Webhooks {
    pub fn new(
        endpoints: Arc<dyn WebhookEndpoints>,
        transport: Arc<dyn WebhookTransport>,
        users: Arc<dyn UserRepository>,
        clock: Arc<dyn Clock>,
        limits: WebhookLimits,
    ) -> Self {
        Self {
            endpoints,
            transport,
            users,
            clock,
            limits,
        }
    }

    async fn admin(&self, principal: Option<&Principal>) -> Result<Option<UserId>, Error> {
        match principal {
            // The operator's CLI: whoever runs `hub` owns the database.
            None => Ok(None),
            Some(principal) => {
                crate::administration::require_admin(
                    &*self.users,
                    principal,
                    "managing webhooks is for admins",
                )
                .await?;
                Ok(Some(principal.user_id))
            }
        }
    }

    /// Adds an endpoint: `principal` is the admin (none for the operator's
    /// CLI). The URL is checked where it points before it is stored.
    pub async fn add(
        &self,
        principal: Option<&Principal>,
        url: &str,
        types: EventTypes,
        description: &str,
    ) -> Result<CreatedEndpoint, Error> {
        let by = self.admin(principal).await?;
        let url = url.trim();
        if url.len() > 2048 || description.chars().count() > 200 {
            return Err(Error::with_message(
                ErrorCode::InvalidRequest,
                "the URL is at most 2048 characters and the description 200",
            ));
        }
        self.transport.check_target(url).await?;
        if self.endpoints.list().await?.len() >= self.limits.max_endpoints {
            return Err(Error::with_message(
                ErrorCode::QuotaExceeded,
                format!(
                    "there are already {} webhook endpoints (webhooks.max_endpoints); delete one first",
                    self.limits.max_endpoints
                ),
            ));
        }
        let now = self.clock.now();
        let endpoint = WebhookEndpoint {
            id: EndpointId::generate(),
            url: url.to_owned(),
            types,
            description: description.to_owned(),
            created_at: now,
            created_by: by,
            failing_since: None,
            last_error: None,
            disabled_at: None,
            disabled_reason: None,
            previous_secret_until: None,
        };
        let secret = WebhookSecret::generate()?;
        let event = WebhookEvent::new(
            endpoint.id,
            by,
            now,
            WebhookChange::Created {
                url: origin(&endpoint.url),
                types: endpoint.types.as_slice().to_vec(),
            },
        );
        self.endpoints.create(&endpoint, &secret, &event).await?;
        tracing::info!(endpoint = %endpoint.id, origin = %origin(&endpoint.url), by = ?by, "webhook endpoint added");
        Ok(CreatedEndpoint { endpoint, secret })
    }

    pub async fn list(&self, principal: Option<&Principal>) -> Result<Vec<WebhookEndpoint>, Error> {
        self.admin(principal).await?;
        self.endpoints.list().await
    }

    pub async fn get(
        &self,
        principal: Option<&Principal>,
        id: EndpointId,
    ) -> Result<WebhookEndpoint, Error> {
        self.admin(principal).await?;
        self.endpoints.get(id).await?.ok_or_else(no_endpoint)
    }

    pub async fn delete(&self, principal: Option<&Principal>, id: EndpointId) -> Result<(), Error> {
        let by = self.admin(principal).await?;
        let endpoint = self.endpoints.get(id).await?.ok_or_else(no_endpoint)?;
        let event = WebhookEvent::new(
            id,
            by,
            self.clock.now(),
            WebhookChange::Deleted {
                url: origin(&endpoint.url),
            },
        );
        if !self.endpoints.delete(id, &event).await? {
            return Err(no_endpoint());
        }
        tracing::info!(endpoint = %id, origin = %origin(&endpoint.url), by = ?by, "webhook endpoint deleted");
        Ok(())
    }

    /// A new secret, shown this once; the old one keeps signing beside it
    /// for `webhooks.rotation_grace_seconds`.
    pub async fn rotate_secret(
        &self,
        principal: Option<&Principal>,
        id: EndpointId,
    ) -> Result<(WebhookSecret, OffsetDateTime), Error> {
        let by = self.admin(principal).await?;
        let now = self.clock.now();
        let until = now + self.limits.rotation_grace;
        let secret = WebhookSecret::generate()?;
        let event = WebhookEvent::new(id, by, now, WebhookChange::SecretRotated);
        if !self
            .endpoints
            .rotate_secret(id, &secret, until, &event)
            .await?
        {
            return Err(no_endpoint());
        }
        tracing::info!(endpoint = %id, by = ?by, "webhook secret rotated");
        Ok((secret, until))
    }

    /// Delivers again every event after position `after` (`hub events
    /// tail` shows positions); how many were queued.
    pub async fn replay(
        &self,
        principal: Option<&Principal>,
        id: EndpointId,
        after: i64,
    ) -> Result<u64, Error> {
        self.admin(principal).await?;
        self.endpoints.get(id).await?.ok_or_else(no_endpoint)?;
        let queued = self.endpoints.replay(id, after).await?;
        tracing::info!(endpoint = %id, after, queued, "webhook events queued again");
        Ok(queued)
    }

    /// Delivers to a disabled endpoint again: the events written from now
    /// on, and with [`Self::replay`] those it missed.
    pub async fn enable(&self, principal: Option<&Principal>, id: EndpointId) -> Result<(), Error> {
        let by = self.admin(principal).await?;
        let event = WebhookEvent::new(id, by, self.clock.now(), WebhookChange::Enabled);
        if !self.endpoints.enable(id, &event).await? {
            return Err(no_endpoint());
        }
        tracing::info!(endpoint = %id, by = ?by, "webhook endpoint enabled");
        Ok(())
    }
}

fn no_endpoint() -> Error {
    Error::with_message(ErrorCode::NotFound, "no webhook endpoint with this id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_as_the_log_matches() {
        assert!(type_matches("*", "user.created"));
        assert!(type_matches("user.*", "user.created"));
        assert!(!type_matches("user.*", "users.imported"));
        assert!(!type_matches("user*", "user.created"));
        assert!(type_matches("session.revoked", "session.revoked"));
        assert!(EventTypes::parse(["user.*", "user.*", "session.opened"]).is_ok());
        assert_eq!(
            EventTypes::parse(["user.*", "user.*"]).unwrap().as_slice(),
            ["user.*"]
        );
        assert!(EventTypes::parse(["user.creatd"]).is_err());
        assert!(EventTypes::parse(Vec::<String>::new()).is_err());
    }

    #[test]
    fn logs_and_events_show_only_the_origin() {
        assert_eq!(
            origin("https://hooks.example.com/services/T0/B0/secret?x=1"),
            "https://hooks.example.com"
        );
        assert_eq!(
            origin("http://u:p@127.0.0.1:8080?t=1"),
            "http://127.0.0.1:8080"
        );
        assert_eq!(origin("nonsense"), "");
    }

    #[test]
    fn the_signature_is_standard_webhooks() {
        // The example of the Standard Webhooks specification's test vectors.
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        let signed = signature(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap();
        assert_eq!(signed, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }
}
