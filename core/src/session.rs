//! Sessions: a token is valid only while its session is open, so logging out
//! really revokes. Every session change produces a [`SessionEvent`] that the
//! store writes to the outbox in the same transaction as the change.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::{Error, ErrorCode};
use crate::user::UserId;

/// A session's identifier: a UUID v7, carried in tokens as `sid`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "Uuid", into = "Uuid")]
pub struct SessionId(Uuid);

impl SessionId {
    pub fn generate() -> Self {
        Self(Uuid::now_v7())
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        let uuid = Uuid::try_parse(raw).map_err(|_| invalid_session_id())?;
        Self::try_from(uuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

fn invalid_session_id() -> Error {
    Error::with_message(
        ErrorCode::InvalidRequest,
        "session id is not a valid identifier",
    )
}

impl TryFrom<Uuid> for SessionId {
    type Error = Error;
    fn try_from(uuid: Uuid) -> Result<Self, Error> {
        if uuid.get_version_num() != 7 {
            return Err(invalid_session_id());
        }
        Ok(Self(uuid))
    }
}

impl From<SessionId> for Uuid {
    fn from(id: SessionId) -> Uuid {
        id.0
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({})", self.0)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Where a session was opened from, as far as the edge can tell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    pub user_agent: Option<String>,
}

impl ClientInfo {
    /// The longest user agent kept; longer ones are cut (they are only a hint).
    pub const MAX_USER_AGENT: usize = 512;

    pub fn new(ip: Option<IpAddr>, user_agent: Option<&str>) -> Self {
        let user_agent = user_agent.map(|ua| {
            let mut end = ua.len().min(Self::MAX_USER_AGENT);
            while !ua.is_char_boundary(end) {
                end -= 1;
            }
            ua[..end].to_owned()
        });
        Self { ip, user_agent }
    }
}

/// A session as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: SessionId,
    pub user_id: UserId,
    pub created_at: OffsetDateTime,
    pub expires_at: OffsetDateTime,
    pub last_seen_at: OffsetDateTime,
    pub revoked_at: Option<OffsetDateTime>,
    pub client: ClientInfo,
}

/// Where a session stands at a moment. The one rule: revoked wins, then
/// expiry; adapters print it, never work it out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open,
    Revoked,
    Expired,
}

impl SessionState {
    /// `open`, `revoked` or `expired`: how the APIs write it.
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionState::Open => "open",
            SessionState::Revoked => "revoked",
            SessionState::Expired => "expired",
        }
    }
}

impl std::fmt::Display for SessionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Session {
    pub fn state_at(&self, now: OffsetDateTime) -> SessionState {
        if self.revoked_at.is_some() {
            SessionState::Revoked
        } else if self.expires_at <= now {
            SessionState::Expired
        } else {
            SessionState::Open
        }
    }

    pub fn is_open_at(&self, now: OffsetDateTime) -> bool {
        self.state_at(now) == SessionState::Open
    }
}

/// What happened to a session: the outbox's event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SessionEventKind {
    #[serde(rename = "session.opened")]
    Opened,
    #[serde(rename = "session.revoked")]
    Revoked,
    #[serde(rename = "session.touched")]
    Touched,
}

impl SessionEventKind {
    pub const fn as_str(self) -> &'static str {
        match self {
            SessionEventKind::Opened => "session.opened",
            SessionEventKind::Revoked => "session.revoked",
            SessionEventKind::Touched => "session.touched",
        }
    }

    pub fn parse(raw: &str) -> Result<Self, Error> {
        match raw {
            "session.opened" => Ok(Self::Opened),
            "session.revoked" => Ok(Self::Revoked),
            "session.touched" => Ok(Self::Touched),
            other => Err(Error::internal(format!(
                "unknown session event kind {other:?}"
            ))),
        }
    }
}

/// One outbox event: written in the same transaction as the session change it
/// describes; its id is the idempotency key downstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionEvent {
    pub id: Uuid,
    pub kind: SessionEventKind,
    pub session_id: SessionId,
    pub user_id: UserId,
    pub at: OffsetDateTime,
    pub client: ClientInfo,
    /// Why a revocation happened ("logout", "password_changed", ...).
    pub reason: Option<String>,
}

impl SessionEvent {
    pub fn new(kind: SessionEventKind, session: &Session, at: OffsetDateTime) -> Self {
        Self {
            id: Uuid::now_v7(),
            kind,
            session_id: session.id,
            user_id: session.user_id,
            at,
            client: session.client.clone(),
            reason: None,
        }
    }

    pub fn because(mut self, reason: &str) -> Self {
        self.reason = Some(reason.to_owned());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_v7() {
        let id = SessionId::generate();
        assert_eq!(SessionId::parse(&id.to_string()).unwrap(), id);
        assert!(SessionId::parse("6ba7b810-9dad-11d1-80b4-00c04fd430c8").is_err());
        assert!(SessionId::parse("nope").is_err());
    }

    #[test]
    fn long_user_agents_are_cut_on_a_character_boundary() {
        let ua = "é".repeat(400); // 800 bytes
        let client = ClientInfo::new(None, Some(&ua));
        let kept = client.user_agent.unwrap();
        assert!(kept.len() <= ClientInfo::MAX_USER_AGENT);
        assert!(kept.chars().all(|c| c == 'é'));
    }

    #[test]
    fn event_kinds_round_trip() {
        for kind in [
            SessionEventKind::Opened,
            SessionEventKind::Revoked,
            SessionEventKind::Touched,
        ] {
            assert_eq!(SessionEventKind::parse(kind.as_str()).unwrap(), kind);
        }
    }
}
