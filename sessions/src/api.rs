//! The JSON bodies of the session service. Wire types stop here.

use hub_core::{Session, SessionId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use uuid::Uuid;

/// Sessions per page unless `page_size` says otherwise (at most 100).
pub const DEFAULT_PAGE: u32 = 20;

pub fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&Rfc3339).unwrap_or_default()
}

/// One session as its user sees it.
#[derive(Debug, Serialize, Deserialize)]
pub struct SessionView {
    pub id: Uuid,
    pub user_id: Uuid,
    /// `open`, `revoked` or `expired`.
    pub state: String,
    /// Whether this is the session of the token that asked.
    pub current: bool,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<OffsetDateTime>,
    pub client_ip: Option<String>,
    pub user_agent: Option<String>,
}

impl SessionView {
    pub fn new(session: &Session, current: Option<SessionId>, now: OffsetDateTime) -> Self {
        Self {
            id: session.id.as_uuid(),
            user_id: session.user_id.as_uuid(),
            state: session.state_at(now).as_str().to_owned(),
            current: current == Some(session.id),
            created_at: session.created_at,
            last_seen_at: session.last_seen_at,
            expires_at: session.expires_at,
            revoked_at: session.revoked_at,
            client_ip: session.client.ip.map(|ip| ip.to_string()),
            user_agent: session.client.user_agent.clone(),
        }
    }
}

/// `POST /api/sessions` -> 201.
#[derive(Debug, Serialize, Deserialize)]
pub struct NewSession {
    pub session: SessionView,
    pub token: String,
    pub token_type: String,
    pub expires_in: u64,
}

/// `PUT /api/sessions/{user_id}`: the touched session and a fresh token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Touched {
    pub session: SessionView,
    pub token: String,
    pub token_type: String,
    pub expires_in: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SessionList {
    pub sessions: Vec<SessionView>,
    /// Pass as `page_token` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `open` (default) or `all` (revoked and expired too).
    pub include: Option<String>,
    pub page_size: Option<u32>,
    pub page_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// One session to revoke instead of all.
    pub session: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Revoked {
    /// How many sessions were open and are now revoked.
    pub revoked: u64,
}

/// `GET /api/sessions/verify` -> 200.
#[derive(Debug, Serialize, Deserialize)]
pub struct Verified {
    pub valid: bool,
    pub user_id: Uuid,
    pub session_id: Uuid,
    pub role: String,
    /// When the token stops being accepted (never after its session).
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `GET /api/sessions/verify` -> 200, for a client-credentials token.
#[derive(Debug, Serialize, Deserialize)]
pub struct VerifiedClient {
    pub valid: bool,
    pub client_id: String,
    /// The token's scopes, space-separated.
    pub scope: String,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

/// `GET /last-connection`.
#[derive(Debug, Serialize, Deserialize)]
pub struct LastConnectionView {
    pub user_id: Uuid,
    pub username: String,
    /// When the user last logged in or touched a session; null if never
    /// (or not yet delivered to MongoDB).
    #[serde(with = "time::serde::rfc3339::option")]
    pub last_connection: Option<OffsetDateTime>,
    pub session_id: Option<Uuid>,
}
