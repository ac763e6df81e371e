//! The domain event log: what happened to users and sessions, each event
//! written in the same transaction as the change it describes, so the log
//! never tells of a change that did not happen nor misses one that did.
//!
//! Subscribers (the MongoDB activity log first; webhooks, mail and SCIM
//! change tracking later) each keep their own delivery state, so one that is
//! away or slow holds back no other. An event's `id` is its idempotency key
//! downstream; its `position` (given by the log when it is stored) orders
//! the log for readers such as `hub events tail`.

use serde_json::{Value, json};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::error::Error;
use crate::session::{ClientInfo, SessionEvent, SessionEventKind, SessionId};
use crate::user::{Role, UserId};
use crate::webhooks::WebhookEvent;

/// What happened to a user (or to many, for an import).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserChange {
    /// Registered through any protocol or created by an admin.
    Created {
        username: String,
        email: String,
        role: Role,
        /// The admin who registered the user (a provisioning system
        /// authenticated over WS-Security), when not the user themself.
        by: Option<UserId>,
    },
    EmailChanged {
        email: String,
    },
    /// A new password; the user's other sessions and devices were dropped
    /// with it.
    PasswordChanged,
    RoleChanged {
        role: Role,
    },
    Deleted {
        username: String,
    },
    /// A bulk import stored `count` users in one transaction; one event for
    /// the batch, not one per user, so an import of a million users does not
    /// write a million events.
    Imported {
        count: u64,
    },
    /// Attributes a directory changed over SCIM (their SCIM names), by the
    /// OAuth client it authenticated as. A change of email, password,
    /// role or `active` has its own event besides.
    Updated {
        attributes: Vec<String>,
        client: String,
    },
    /// `active` set false over SCIM: every session was revoked with it.
    Deactivated,
    /// `active` set true again over SCIM.
    Reactivated,
    /// A second factor added or removed, recovery codes replaced, or every
    /// factor reset by the admin `by`. Never a secret or a code.
    FactorsChanged {
        change: String,
        by: Option<UserId>,
    },
    /// Someone asked for a password reset link for the user's address
    /// (mailed by the mail subscriber; the link's secret is derived from
    /// `reset_id`, never stored or logged).
    PasswordResetRequested {
        reset_id: Uuid,
    },
    /// The user gave a new address, which becomes theirs once the link
    /// mailed to it is followed.
    EmailVerificationRequested {
        verification_id: Uuid,
        email: String,
    },
    /// A sign-in from a device the account did not know (noticed by mail).
    NewDevice {
        client_ip: Option<String>,
        user_agent: Option<String>,
    },
    /// A SCIM group created, changed (name or members) or deleted; no
    /// `user_id`. Members are user ids.
    Group {
        kind: GroupChangeKind,
        group_id: Uuid,
        display_name: String,
        added: Vec<UserId>,
        removed: Vec<UserId>,
    },
}

/// What happened to a SCIM group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupChangeKind {
    Created,
    Updated,
    Deleted,
}

impl UserChange {
    /// The event's type, as every consumer sees it.
    pub const fn type_name(&self) -> &'static str {
        match self {
            UserChange::Created { .. } => "user.created",
            UserChange::EmailChanged { .. } => "user.email_changed",
            UserChange::PasswordChanged => "user.password_changed",
            UserChange::RoleChanged { .. } => "user.role_changed",
            UserChange::Deleted { .. } => "user.deleted",
            UserChange::Imported { .. } => "users.imported",
            UserChange::Updated { .. } => "user.updated",
            UserChange::Deactivated => "user.deactivated",
            UserChange::Reactivated => "user.reactivated",
            UserChange::FactorsChanged { .. } => "user.factors_changed",
            UserChange::PasswordResetRequested { .. } => "user.password_reset_requested",
            UserChange::EmailVerificationRequested { .. } => "user.email_verification_requested",
            UserChange::NewDevice { .. } => "user.new_device",
            UserChange::Group {
                kind: GroupChangeKind::Created,
                ..
            } => "group.created",
            UserChange::Group {
                kind: GroupChangeKind::Updated,
                ..
            } => "group.updated",
            UserChange::Group {
                kind: GroupChangeKind::Deleted,
                ..
            } => "group.deleted",
        }
    }

    /// The type-specific fields, as stored and as shown. Never a secret: no
    /// password or hash ever goes into an event.
    pub fn data(&self) -> Value {
        match self {
            UserChange::Created {
                username,
                email,
                role,
                by: None,
            } => json!({ "username": username, "email": email, "role": role.as_str() }),
            UserChange::Created {
                username,
                email,
                role,
                by: Some(by),
            } => json!({
                "username": username, "email": email, "role": role.as_str(), "by": by.to_string()
            }),
            UserChange::EmailChanged { email } => json!({ "email": email }),
            UserChange::PasswordChanged => json!({}),
            UserChange::RoleChanged { role } => json!({ "role": role.as_str() }),
            UserChange::Deleted { username } => json!({ "username": username }),
            UserChange::Imported { count } => json!({ "count": count }),
            UserChange::Updated { attributes, client } => {
                json!({ "attributes": attributes, "client": client })
            }
            UserChange::Deactivated | UserChange::Reactivated => json!({}),
            UserChange::FactorsChanged { change, by: None } => json!({ "change": change }),
            UserChange::FactorsChanged {
                change,
                by: Some(by),
            } => json!({ "change": change, "by": by.to_string() }),
            UserChange::PasswordResetRequested { reset_id } => {
                json!({ "reset_id": reset_id.to_string() })
            }
            UserChange::EmailVerificationRequested {
                verification_id,
                email,
            } => json!({ "verification_id": verification_id.to_string(), "email": email }),
            UserChange::NewDevice {
                client_ip,
                user_agent,
            } => json!({ "client_ip": client_ip, "user_agent": user_agent }),
            UserChange::Group {
                group_id,
                display_name,
                added,
                removed,
                ..
            } => json!({
                "group_id": group_id.to_string(),
                "display_name": display_name,
                "added": added.iter().map(UserId::to_string).collect::<Vec<_>>(),
                "removed": removed.iter().map(UserId::to_string).collect::<Vec<_>>(),
            }),
        }
    }

    /// Reads a stored change back; an unknown type or a missing field is an
    /// error (the row is quarantined, not guessed at).
    pub fn parse(type_name: &str, data: &Value) -> Result<Self, Error> {
        let text = |field: &str| {
            data.get(field)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::internal(format!("a {type_name} event has no {field}")))
        };
        let role = || text("role").and_then(|r| Role::parse(&r));
        let texts = |field: &str| -> Result<Vec<String>, Error> {
            data.get(field)
                .and_then(Value::as_array)
                .ok_or_else(|| Error::internal(format!("a {type_name} event has no {field}")))?
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_owned).ok_or_else(|| {
                        Error::internal(format!("a {type_name} event has a bad {field}"))
                    })
                })
                .collect()
        };
        let ids = |field: &str| -> Result<Vec<UserId>, Error> {
            texts(field)?.iter().map(|id| UserId::parse(id)).collect()
        };
        Ok(match type_name {
            "user.created" => UserChange::Created {
                username: text("username")?,
                email: text("email")?,
                role: role()?,
                by: match data.get("by").and_then(Value::as_str) {
                    Some(by) => Some(UserId::parse(by)?),
                    None => None,
                },
            },
            "user.email_changed" => UserChange::EmailChanged {
                email: text("email")?,
            },
            "user.password_changed" => UserChange::PasswordChanged,
            "user.role_changed" => UserChange::RoleChanged { role: role()? },
            "user.deleted" => UserChange::Deleted {
                username: text("username")?,
            },
            "users.imported" => UserChange::Imported {
                count: data.get("count").and_then(Value::as_u64).ok_or_else(|| {
                    Error::internal("a users.imported event has no count".to_owned())
                })?,
            },
            "user.updated" => UserChange::Updated {
                attributes: texts("attributes")?,
                client: text("client")?,
            },
            "user.deactivated" => UserChange::Deactivated,
            "user.reactivated" => UserChange::Reactivated,
            "user.password_reset_requested" => UserChange::PasswordResetRequested {
                reset_id: Uuid::parse_str(&text("reset_id")?).map_err(|_| {
                    Error::internal(format!("a {type_name} event has a bad reset_id"))
                })?,
            },
            "user.email_verification_requested" => UserChange::EmailVerificationRequested {
                verification_id: Uuid::parse_str(&text("verification_id")?).map_err(|_| {
                    Error::internal(format!("a {type_name} event has a bad verification_id"))
                })?,
                email: text("email")?,
            },
            "user.new_device" => UserChange::NewDevice {
                client_ip: data
                    .get("client_ip")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                user_agent: data
                    .get("user_agent")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            },
            "user.factors_changed" => UserChange::FactorsChanged {
                change: text("change")?,
                by: match data.get("by").and_then(Value::as_str) {
                    Some(by) => Some(UserId::parse(by)?),
                    None => None,
                },
            },
            "group.created" | "group.updated" | "group.deleted" => UserChange::Group {
                kind: match type_name {
                    "group.created" => GroupChangeKind::Created,
                    "group.updated" => GroupChangeKind::Updated,
                    _ => GroupChangeKind::Deleted,
                },
                group_id: Uuid::parse_str(&text("group_id")?).map_err(|_| {
                    Error::internal(format!("a {type_name} event has a bad group_id"))
                })?,
                display_name: text("display_name")?,
                added: ids("added")?,
                removed: ids("removed")?,
            },
            other => return Err(Error::internal(format!("unknown event type {other:?}"))),
        })
    }
}

/// A user event: the change, whose it is (none for an import) and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserEvent {
    pub id: Uuid,
    pub user_id: Option<UserId>,
    pub at: OffsetDateTime,
    pub change: UserChange,
}

impl UserEvent {
    pub fn new(user_id: Option<UserId>, at: OffsetDateTime, change: UserChange) -> Self {
        Self {
            id: Uuid::now_v7(),
            user_id,
            at,
            change,
        }
    }
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainEvent {
    Session(SessionEvent),
    User(UserEvent),
    /// A webhook endpoint's own events: added, deleted, rotated, disabled.
    Webhook(WebhookEvent),
}

impl From<WebhookEvent> for DomainEvent {
    fn from(event: WebhookEvent) -> Self {
        DomainEvent::Webhook(event)
    }
}

impl From<SessionEvent> for DomainEvent {
    fn from(event: SessionEvent) -> Self {
        DomainEvent::Session(event)
    }
}

impl From<UserEvent> for DomainEvent {
    fn from(event: UserEvent) -> Self {
        DomainEvent::User(event)
    }
}

impl DomainEvent {
    /// The idempotency key downstream.
    pub fn id(&self) -> Uuid {
        match self {
            DomainEvent::Session(e) => e.id,
            DomainEvent::User(e) => e.id,
            DomainEvent::Webhook(e) => e.id,
        }
    }

    pub fn at(&self) -> OffsetDateTime {
        match self {
            DomainEvent::Session(e) => e.at,
            DomainEvent::User(e) => e.at,
            DomainEvent::Webhook(e) => e.at,
        }
    }

    pub fn user_id(&self) -> Option<UserId> {
        match self {
            DomainEvent::Session(e) => Some(e.user_id),
            DomainEvent::User(e) => e.user_id,
            // The admin who changed it (none when polyhub disabled it).
            DomainEvent::Webhook(e) => e.by,
        }
    }

    pub fn session_id(&self) -> Option<SessionId> {
        match self {
            DomainEvent::Session(e) => Some(e.session_id),
            DomainEvent::User(_) | DomainEvent::Webhook(_) => None,
        }
    }

    pub fn type_name(&self) -> &'static str {
        match self {
            DomainEvent::Session(e) => e.kind.as_str(),
            DomainEvent::User(e) => e.change.type_name(),
            DomainEvent::Webhook(e) => e.change.type_name(),
        }
    }

    /// What must arrive in order: a session's events (opened before touched
    /// before revoked), and a user's own events; an import's stands alone.
    pub fn stream(&self) -> Uuid {
        match self {
            DomainEvent::Session(e) => e.session_id.as_uuid(),
            DomainEvent::User(e) => e.user_id.map_or(e.id, |user| user.as_uuid()),
            DomainEvent::Webhook(e) => e.endpoint.as_uuid(),
        }
    }

    /// The type-specific fields, as stored in the log.
    pub fn data(&self) -> Value {
        match self {
            DomainEvent::Session(e) => json!({
                "client_ip": e.client.ip.map(|ip| ip.to_string()),
                "user_agent": e.client.user_agent,
                "reason": e.reason,
            }),
            DomainEvent::User(e) => e.change.data(),
            DomainEvent::Webhook(e) => e.data(),
        }
    }

    /// Reads a stored entry back (the log's columns); an unreadable one is
    /// an error naming what was wrong.
    pub fn from_stored(
        id: Uuid,
        type_name: &str,
        user_id: Option<Uuid>,
        session_id: Option<Uuid>,
        at: OffsetDateTime,
        data: &Value,
    ) -> Result<Self, Error> {
        let corrupt = |field: &str| Error::internal(format!("event {id} has a bad {field}"));
        let user_id = user_id
            .map(UserId::try_from)
            .transpose()
            .map_err(|_| corrupt("user_id"))?;
        if type_name.starts_with("session.") {
            let kind = SessionEventKind::parse(type_name)?;
            let session_id = session_id
                .map(SessionId::try_from)
                .transpose()
                .map_err(|_| corrupt("session_id"))?
                .ok_or_else(|| corrupt("session_id"))?;
            let field = |name: &str| -> Result<Option<String>, Error> {
                match data.get(name) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::String(s)) => Ok(Some(s.clone())),
                    Some(_) => Err(corrupt(name)),
                }
            };
            return Ok(DomainEvent::Session(SessionEvent {
                id,
                kind,
                session_id,
                user_id: user_id.ok_or_else(|| corrupt("user_id"))?,
                at,
                client: ClientInfo {
                    ip: field("client_ip")?
                        .map(|ip| ip.parse())
                        .transpose()
                        .map_err(|_| corrupt("client_ip"))?,
                    user_agent: field("user_agent")?,
                },
                reason: field("reason")?,
            }));
        }
        if type_name.starts_with("webhook.") {
            return Ok(DomainEvent::Webhook(WebhookEvent::parse(
                id, type_name, user_id, at, data,
            )?));
        }
        Ok(DomainEvent::User(UserEvent {
            id,
            user_id,
            at,
            change: UserChange::parse(type_name, data)?,
        }))
    }
}

/// An event as the log keeps it: its place in the log, and the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Orders the log (see [`EventLog::read`]).
    pub position: i64,
    pub event: DomainEvent,
}

impl LoggedEvent {
    /// The one JSON shape every reader of the log shows an event in:
    /// `{"id","event_id","type","occurred_at","user_id","session_id","data"}`,
    /// `id` being the position, which `--after` and resumption take.
    pub fn to_json(&self) -> Value {
        let occurred_at = self
            .event
            .at()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        let mut shown = json!({
            "id": self.position,
            "event_id": self.event.id().to_string(),
            "type": self.event.type_name(),
            "occurred_at": occurred_at,
            "user_id": self.event.user_id().map(|id| id.to_string()),
            "data": self.event.data(),
        });
        if let (Some(session), Some(object)) = (self.event.session_id(), shown.as_object_mut()) {
            object.insert("session_id".to_owned(), json!(session.to_string()));
        }
        shown
    }
}

/// Reading the log in its order, for operators (`hub events tail`) and
/// later for subscribers that resume from a position.
#[async_trait::async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Up to `limit` events after the one at position `after`, in the log's
    /// order; without `after`, the latest `limit` events, oldest first.
    /// Only events whose transactions have all ended are shown, so a reader
    /// that resumes after the last one it saw misses none that commit
    /// later. `INVALID_REQUEST` when `after` names no event the log still
    /// keeps.
    async fn read(&self, after: Option<i64>, limit: u32) -> Result<Vec<LoggedEvent>, Error>;
    /// Every subscriber and how far behind it is, by name.
    async fn subscribers(&self) -> Result<Vec<Subscriber>, Error>;
}

/// A subscriber of the log and its delivery state: what it waits for, and
/// what it has set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscriber {
    pub name: String,
    /// The types it takes: exact, `prefix.*` or `*`.
    pub types: Vec<String>,
    /// Events it has yet to take (neither delivered nor set aside).
    pub pending: u64,
    /// When the oldest of them happened.
    pub oldest_pending: Option<OffsetDateTime>,
    /// Events set aside (unreadable, or refused too often): `hub outbox
    /// retry` puts the activity log's back.
    pub quarantined: u64,
}

impl Subscriber {
    /// As `hub events subscribers` shows it.
    pub fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "types": self.types,
            "pending": self.pending,
            "oldest_pending": self.oldest_pending.and_then(|at| {
                at.format(&time::format_description::well_known::Rfc3339).ok()
            }),
            "quarantined": self.quarantined,
        })
    }
}

/// The refusal of a read after a position the log does not keep.
pub fn no_such_position(after: i64) -> Error {
    Error::with_message(
        crate::error::ErrorCode::InvalidRequest,
        format!(
            "no event {after} in the log: it was pruned, or never was; read without --after for the latest"
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_user_change_reads_back_as_written() {
        let changes = [
            UserChange::Created {
                username: "ada".into(),
                email: "ada@example.com".into(),
                role: Role::Admin,
                by: None,
            },
            UserChange::Created {
                username: "bo".into(),
                email: "bo@example.com".into(),
                role: Role::User,
                by: Some(UserId::generate()),
            },
            UserChange::EmailChanged {
                email: "a@example.org".into(),
            },
            UserChange::PasswordChanged,
            UserChange::RoleChanged { role: Role::User },
            UserChange::Deleted {
                username: "ada".into(),
            },
            UserChange::Imported { count: 12 },
        ];
        for change in changes {
            let read = UserChange::parse(change.type_name(), &change.data()).unwrap();
            assert_eq!(read, change);
        }
        assert!(UserChange::parse("user.created", &json!({"username": "x"})).is_err());
        assert!(UserChange::parse("user.exploded", &json!({})).is_err());
    }

    #[test]
    fn a_session_event_reads_back_from_its_columns() {
        let session = crate::session::Session {
            id: SessionId::generate(),
            user_id: UserId::generate(),
            created_at: OffsetDateTime::UNIX_EPOCH,
            expires_at: OffsetDateTime::UNIX_EPOCH,
            last_seen_at: OffsetDateTime::UNIX_EPOCH,
            revoked_at: None,
            client: ClientInfo::new(Some("192.0.2.7".parse().unwrap()), Some("curl")),
        };
        let event: DomainEvent = SessionEvent::new(
            SessionEventKind::Revoked,
            &session,
            OffsetDateTime::UNIX_EPOCH,
        )
        .because("logout")
        .into();
        let read = DomainEvent::from_stored(
            event.id(),
            event.type_name(),
            event.user_id().map(|u| u.as_uuid()),
            event.session_id().map(|s| s.as_uuid()),
            event.at(),
            &event.data(),
        )
        .unwrap();
        assert_eq!(read, event);
        let shown = LoggedEvent { position: 7, event }.to_json();
        assert_eq!(shown["id"], 7);
        assert_eq!(shown["type"], "session.revoked");
        assert_eq!(shown["data"]["reason"], "logout");
        assert_eq!(shown["session_id"], session.id.to_string());
        assert_eq!(shown["occurred_at"], "1970-01-01T00:00:00Z");
    }
}
