//! MongoDB: what is append-heavy and document-shaped. `session_events` and
//! `user_events` hold one document per event of the event log (`_id` = the
//! event id, so a repeated delivery is a duplicate key, not a second
//! document), and `last_connection` one document per user (`_id` = the user
//! id), moved only forward in time.

use std::time::Duration;

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserEvent};
use hub_core::{
    ActivityLog, Error, ErrorCode, LastConnection, PendingEvent, SessionEvent, SessionEventKind,
    SessionId, UserId, Username,
};
use mongodb::bson::{DateTime as BsonDateTime, Document, doc};
use mongodb::error::{ErrorKind, InsertManyError, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::{Client, Collection, Database, IndexModel};
use secrecy::{ExposeSecret, SecretString};
use time::OffsetDateTime;

/// How to reach MongoDB.
#[derive(Debug, Clone)]
pub struct MongoSettings {
    /// `mongodb://host:port/?options`; never printed.
    pub url: SecretString,
    pub database: String,
    /// How long an operation waits for a reachable server before UNAVAILABLE.
    pub server_selection_timeout: Duration,
}

/// A storage failure with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct MongoError {
    doing: &'static str,
    #[source]
    source: mongodb::error::Error,
}

fn is_duplicate_key(e: &mongodb::error::Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == 11000,
        ErrorKind::Command(c) => c.code == 11000,
        _ => false,
    }
}

/// Classifies a driver error once: an unreachable server is UNAVAILABLE,
/// anything else INTERNAL, with what was being done kept for the log.
pub fn classify(doing: &'static str, source: mongodb::error::Error) -> Error {
    let unreachable = matches!(
        &*source.kind,
        ErrorKind::ServerSelection { .. }
            | ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
    ) || source.contains_label("NetworkError");
    let code = if unreachable {
        ErrorCode::Unavailable
    } else {
        ErrorCode::Internal
    };
    Error::from_source(code, MongoError { doing, source })
}

/// A database handle; the client connects on first use, so a service starts
/// (and reports not-ready) while MongoDB is away.
pub async fn connect(settings: &MongoSettings) -> Result<Database, Error> {
    let mut options = ClientOptions::parse(settings.url.expose_secret())
        .await
        .map_err(|e| classify("parsing the MongoDB URL", e))?;
    options.server_selection_timeout = Some(settings.server_selection_timeout);
    options.app_name = Some("polyhub".to_owned());
    let client =
        Client::with_options(options).map_err(|e| classify("configuring the MongoDB client", e))?;
    Ok(client.database(&settings.database))
}

fn bson_time(at: OffsetDateTime) -> BsonDateTime {
    let millis = i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX);
    BsonDateTime::from_millis(millis)
}

fn from_bson_time(at: BsonDateTime) -> Result<OffsetDateTime, Error> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(at.timestamp_millis()) * 1_000_000)
        .map_err(|e| Error::internal(format!("a stored time is out of range: {e}")))
}

/// Session events and last connections in MongoDB.
#[derive(Debug, Clone)]
pub struct MongoActivityLog {
    events: Collection<Document>,
    user_events: Collection<Document>,
    last: Collection<Document>,
}

impl MongoActivityLog {
    /// Writes wait for the journal (`j: true`): the relay marks events
    /// delivered once MongoDB acknowledges them, so an acknowledged write
    /// must survive the server being killed. Without it, the fault drill saw
    /// a write acknowledged just before a SIGKILL vanish, and its event was
    /// marked delivered but never recorded.
    pub fn new(database: &Database) -> Self {
        let durable = mongodb::options::CollectionOptions::builder()
            .write_concern(
                mongodb::options::WriteConcern::builder()
                    .journal(true)
                    .build(),
            )
            .build();
        Self {
            events: database.collection_with_options("session_events", durable.clone()),
            user_events: database.collection_with_options("user_events", durable.clone()),
            last: database.collection_with_options("last_connection", durable),
        }
    }

    /// What the service needs of MongoDB before it serves: its indexes.
    pub async fn prepare(&self, retention: Duration) -> Result<(), Error> {
        self.ensure_indexes(retention).await?;
        tracing::info!("MongoDB indexes in place");
        Ok(())
    }

    /// The indexes the queries need, and the retention of events (a TTL
    /// index on their time). Safe to run at every start.
    pub async fn ensure_indexes(&self, retention: Duration) -> Result<(), Error> {
        let index = |keys: Document, name: &str| {
            IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().name(name.to_owned()).build())
                .build()
        };
        let retained = |name: &str| {
            IndexModel::builder()
                .keys(doc! { "at": 1 })
                .options(
                    IndexOptions::builder()
                        .name(name.to_owned())
                        .expire_after(retention)
                        .build(),
                )
                .build()
        };
        self.events
            .create_indexes([
                index(
                    doc! { "session_id": 1, "at": 1 },
                    "session_events_by_session",
                ),
                index(doc! { "user_id": 1, "at": -1 }, "session_events_by_user"),
                retained("session_events_retention"),
            ])
            .await
            .map_err(|e| classify("creating the session_events indexes", e))?;
        self.user_events
            .create_indexes([
                index(doc! { "user_id": 1, "at": -1 }, "user_events_by_user"),
                retained("user_events_retention"),
            ])
            .await
            .map_err(|e| classify("creating the user_events indexes", e))?;
        Ok(())
    }

    /// Inserts `documents` into `collection` unordered; how many were new
    /// (a duplicate key is a document recorded before; any other failure
    /// fails the call).
    async fn insert_new(
        collection: &Collection<Document>,
        documents: Vec<Document>,
        doing: &'static str,
    ) -> Result<u64, Error> {
        if documents.is_empty() {
            return Ok(0);
        }
        let total = documents.len() as u64;
        match collection.insert_many(documents).ordered(false).await {
            Ok(_) => Ok(total),
            Err(e) => match &*e.kind {
                ErrorKind::InsertMany(InsertManyError {
                    write_errors: Some(errors),
                    write_concern_error: None,
                    ..
                }) if errors.iter().all(|w| w.code == 11000) => {
                    Ok(total.saturating_sub(errors.len() as u64))
                }
                _ => Err(classify(doing, e)),
            },
        }
    }

    async fn move_last_connection_forward(
        &self,
        event: &SessionEvent,
        username: Option<&Username>,
    ) -> Result<(), Error> {
        let user = event.user_id.to_string();
        let at = bson_time(event.at);
        let mut set = doc! { "session_id": event.session_id.to_string(), "at": at };
        if let Some(username) = username {
            set.insert("username", username.as_str());
        }
        // Matches only an older document; when a newer one exists the upsert
        // tries to insert a second `_id` and fails with a duplicate key: the
        // newer time stays, which is what is wanted.
        let result = self
            .last
            .update_one(
                doc! { "_id": &user, "at": { "$lt": at } },
                doc! { "$set": set },
            )
            .upsert(true)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) if is_duplicate_key(&e) => Ok(()),
            Err(e) => Err(classify("moving a last connection forward", e)),
        }
    }
}

/// One `session_events` document; `delivered_at` is when the relay wrote it,
/// so lag can be audited afterwards.
fn event_document(event: &SessionEvent, delivered_at: Option<OffsetDateTime>) -> Document {
    let mut document = doc! {
        "_id": event.id.to_string(),
        "kind": event.kind.as_str(),
        "session_id": event.session_id.to_string(),
        "user_id": event.user_id.to_string(),
        "at": bson_time(event.at),
        "client_ip": event.client.ip.map(|ip| ip.to_string()),
        "user_agent": event.client.user_agent.clone(),
        "reason": event.reason.clone(),
    };
    if let Some(delivered_at) = delivered_at {
        document.insert("delivered_at", bson_time(delivered_at));
    }
    document
}

/// One `user_events` document: the event's type-specific fields under
/// `data`, as the event log keeps them.
fn user_event_document(
    event: &UserEvent,
    username: Option<&Username>,
    delivered_at: Option<OffsetDateTime>,
) -> Result<Document, Error> {
    let data = bson_value(&event.change.data())
        .ok_or_else(|| Error::internal(format!("event {} has unstorable data", event.id)))?;
    let mut document = doc! {
        "_id": event.id.to_string(),
        "type": event.change.type_name(),
        "user_id": event.user_id.map(|id| id.to_string()),
        "username": username.map(Username::as_str),
        "at": bson_time(event.at),
        "data": data,
    };
    if let Some(delivered_at) = delivered_at {
        document.insert("delivered_at", bson_time(delivered_at));
    }
    Ok(document)
}

/// A webhook endpoint's event, kept beside the user events (the admin who
/// made the change is its `user_id`).
fn webhook_event_document(
    event: &hub_core::webhooks::WebhookEvent,
    delivered_at: Option<OffsetDateTime>,
) -> Result<Document, Error> {
    let data = bson_value(&event.data())
        .ok_or_else(|| Error::internal(format!("event {} has unstorable data", event.id)))?;
    let mut document = doc! {
        "_id": event.id.to_string(),
        "type": event.change.type_name(),
        "user_id": event.by.map(|id| id.to_string()),
        "at": bson_time(event.at),
        "data": data,
    };
    if let Some(delivered_at) = delivered_at {
        document.insert("delivered_at", bson_time(delivered_at));
    }
    Ok(document)
}

/// An event's JSON data as BSON; `None` for a number BSON cannot hold.
fn bson_value(value: &serde_json::Value) -> Option<mongodb::bson::Bson> {
    use mongodb::bson::Bson;
    use serde_json::Value;
    Some(match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Bson::Int64(i),
            (None, Some(f)) => Bson::Double(f),
            (None, None) => return None,
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(bson_value).collect::<Option<_>>()?),
        Value::Object(fields) => {
            let mut document = Document::new();
            for (key, value) in fields {
                document.insert(key.clone(), bson_value(value)?);
            }
            Bson::Document(document)
        }
    })
}

/// The session event, when `event` is one that moves its user's last
/// connection.
fn moving_last_connection(event: &DomainEvent) -> Option<&SessionEvent> {
    match event {
        DomainEvent::Session(event)
            if matches!(
                event.kind,
                SessionEventKind::Opened | SessionEventKind::Touched
            ) =>
        {
            Some(event)
        }
        _ => None,
    }
}

#[async_trait]
impl ActivityLog for MongoActivityLog {
    async fn record(
        &self,
        event: &DomainEvent,
        username: Option<&Username>,
    ) -> Result<bool, Error> {
        let inserted = match event {
            DomainEvent::Session(session) => {
                self.events.insert_one(event_document(session, None)).await
            }
            DomainEvent::User(user) => {
                self.user_events
                    .insert_one(user_event_document(user, username, None)?)
                    .await
            }
            DomainEvent::Webhook(webhook) => {
                self.user_events
                    .insert_one(webhook_event_document(webhook, None)?)
                    .await
            }
        };
        let recorded = match inserted {
            Ok(_) => true,
            Err(e) if is_duplicate_key(&e) => false,
            Err(e) => return Err(classify("recording an event", e)),
        };
        // Also on a repeat: the earlier delivery may have stopped between the
        // two writes, and moving forward twice changes nothing.
        if let Some(session) = moving_last_connection(event) {
            self.move_last_connection_forward(session, username).await?;
        }
        Ok(recorded)
    }

    /// One unordered `insert_many` for the events (a duplicate key is an
    /// event recorded before; any other failure fails the batch), then one
    /// forward-only upsert per user for the newest opening or touch.
    async fn record_batch(
        &self,
        events: &[PendingEvent],
        delivered_at: OffsetDateTime,
    ) -> Result<u64, Error> {
        let mut sessions = Vec::new();
        let mut users = Vec::new();
        for pending in events {
            match &pending.event {
                DomainEvent::Session(event) => {
                    sessions.push(event_document(event, Some(delivered_at)));
                }
                DomainEvent::User(event) => users.push(user_event_document(
                    event,
                    pending.username.as_ref(),
                    Some(delivered_at),
                )?),
                DomainEvent::Webhook(event) => {
                    users.push(webhook_event_document(event, Some(delivered_at))?);
                }
            }
        }
        let recorded = Self::insert_new(
            &self.events,
            sessions,
            "recording a batch of session events",
        )
        .await?
            + Self::insert_new(&self.user_events, users, "recording a batch of user events")
                .await?;
        let mut newest: std::collections::HashMap<UserId, (&SessionEvent, Option<&Username>)> =
            std::collections::HashMap::new();
        for pending in events {
            let Some(event) = moving_last_connection(&pending.event) else {
                continue;
            };
            let slot = newest
                .entry(event.user_id)
                .or_insert((event, pending.username.as_ref()));
            if event.at > slot.0.at {
                *slot = (event, pending.username.as_ref());
            }
        }
        for (event, username) in newest.values() {
            self.move_last_connection_forward(event, *username).await?;
        }
        Ok(recorded)
    }

    async fn last_connection(&self, user: UserId) -> Result<Option<LastConnection>, Error> {
        let Some(found) = self
            .last
            .find_one(doc! { "_id": user.to_string() })
            .await
            .map_err(|e| classify("reading a last connection", e))?
        else {
            return Ok(None);
        };
        let corrupt =
            |field: &str| Error::internal(format!("last_connection {user} has a bad {field}"));
        let session_id = found
            .get_str("session_id")
            .ok()
            .and_then(|s| SessionId::parse(s).ok())
            .ok_or_else(|| corrupt("session_id"))?;
        let at = found.get_datetime("at").map_err(|_| corrupt("at"))?;
        let username = found
            .get_str("username")
            .ok()
            .and_then(|u| Username::parse(u).ok());
        Ok(Some(LastConnection {
            user_id: user,
            username,
            session_id,
            at: from_bson_time(*at)?,
        }))
    }
}

/// MongoDB as a readiness dependency.
#[derive(Debug, Clone)]
pub struct MongoProbe {
    database: Database,
}

impl MongoProbe {
    pub fn new(database: Database) -> Self {
        Self { database }
    }
}

#[async_trait]
impl hub_core::DependencyProbe for MongoProbe {
    fn name(&self) -> &'static str {
        "mongodb"
    }

    async fn probe(&self) -> Result<Duration, Error> {
        let started = std::time::Instant::now();
        self.database
            .run_command(doc! { "ping": 1 })
            .await
            .map_err(|e| classify("pinging MongoDB", e))?;
        Ok(started.elapsed())
    }
}
