//! Live event feeds: the event log followed as it grows, by topic, for the
//! WebSocket on rest-auth's port and gRPC's `Events/Watch`.
//!
//! A feed is a cursor on the log: it reads in the log's commit-safe order
//! from just after a given event (a reader that reconnects with the last id
//! it saw misses nothing) or from the newest one. What a feed may cost is
//! bounded by its opener, [`EventFeeds`]: feeds per process, and (in the
//! adapters) the events waiting for one slow reader. The caller must be an
//! admin, checked against the current role when the feed opens and again
//! every `recheck` while it lasts, so a demoted admin or a revoked session
//! stops receiving within that time.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::authentication::Authentication;
use crate::error::{Error, ErrorCode};
use crate::events::{EventLog, LoggedEvent};

/// What a feed may be subscribed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Topic {
    /// `user.*` and `users.*`.
    UserUpdates,
    /// `session.*`.
    SessionUpdates,
    /// `webhook.*`.
    WebhookUpdates,
}

impl Topic {
    pub const ALL: [Topic; 3] = [
        Topic::UserUpdates,
        Topic::SessionUpdates,
        Topic::WebhookUpdates,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Topic::UserUpdates => "user_updates",
            Topic::SessionUpdates => "session_updates",
            Topic::WebhookUpdates => "webhook_updates",
        }
    }

    pub fn parse(name: &str) -> Result<Self, Error> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == name)
            .ok_or_else(|| {
                let known: Vec<&str> = Self::ALL.iter().map(|t| t.as_str()).collect();
                Error::with_message(
                    ErrorCode::InvalidRequest,
                    format!(
                        "unknown topic {:?}; topics: {}",
                        name.chars().take(64).collect::<String>(),
                        known.join(", ")
                    ),
                )
            })
    }

    /// The topic an event type belongs to.
    pub fn of(type_name: &str) -> Option<Self> {
        if type_name.starts_with("user.")
            || type_name.starts_with("users.")
            || type_name.starts_with("group.")
        {
            Some(Topic::UserUpdates)
        } else if type_name.starts_with("session.") {
            Some(Topic::SessionUpdates)
        } else if type_name.starts_with("webhook.") {
            Some(Topic::WebhookUpdates)
        } else {
            None
        }
    }
}

/// A feed's topics, shared between the side that reads the caller's
/// messages and the side that reads the log.
#[derive(Debug, Clone, Default)]
pub struct Topics(Arc<Mutex<BTreeSet<Topic>>>);

impl Topics {
    /// Adds `topic`; false when it was there already.
    pub fn add(&self, topic: Topic) -> bool {
        self.0.lock().map(|mut t| t.insert(topic)).unwrap_or(false)
    }

    /// Removes `topic`; false when it was not there.
    pub fn remove(&self, topic: Topic) -> bool {
        self.0.lock().map(|mut t| t.remove(&topic)).unwrap_or(false)
    }

    pub fn contains(&self, topic: Topic) -> bool {
        self.0.lock().map(|t| t.contains(&topic)).unwrap_or(false)
    }
}

/// How feeds pace themselves.
#[derive(Debug, Clone)]
pub struct FeedSettings {
    /// Events waiting for one reader before its feed is closed.
    pub buffer: usize,
    /// How often the log is looked at when nothing new was found.
    pub poll: Duration,
    /// How often the caller's token and role are checked again.
    pub recheck: Duration,
    /// Events read from the log at a time.
    pub batch: u32,
}

/// Who may follow the log: an admin (checked against the directory now),
/// or a client with a client-credentials token carrying `events:read`
/// (checked against the store now: not revoked, client not deleted).
#[derive(Clone)]
struct Access {
    authentication: Authentication,
    clients: Option<crate::oauth::OAuth>,
}

impl Access {
    /// Who `token` speaks for, when they may follow the log now.
    async fn check(&self, token: &str) -> Result<String, Error> {
        let refused = match self.authentication.authenticate(token).await {
            Ok(principal) => {
                self.authentication
                    .require_admin(&principal, "the event feed is for admins")
                    .await?;
                return Ok(format!("user {}", principal.user_id));
            }
            Err(refused) if refused.code() == ErrorCode::InvalidToken => refused,
            Err(e) => return Err(e),
        };
        let Some(clients) = &self.clients else {
            return Err(refused);
        };
        match clients.machine(token).await {
            Ok(client) => {
                client.require_scope("events:read")?;
                Ok(format!("client {}", client.client_id))
            }
            Err(e) if e.code() == ErrorCode::InvalidToken => Err(refused),
            Err(e) => Err(e),
        }
    }
}

/// Opens feeds, at most `max_feeds` at once in this process.
#[derive(Clone)]
pub struct EventFeeds {
    log: Arc<dyn EventLog>,
    access: Access,
    settings: FeedSettings,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for EventFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventFeeds")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl EventFeeds {
    pub fn new(
        log: Arc<dyn EventLog>,
        authentication: Authentication,
        settings: FeedSettings,
        max_feeds: usize,
    ) -> Self {
        Self {
            log,
            access: Access {
                authentication,
                clients: None,
            },
            settings,
            slots: Arc::new(Semaphore::new(max_feeds)),
        }
    }

    /// Also opens feeds for client-credentials tokens with `events:read`.
    pub fn with_clients(mut self, clients: crate::oauth::OAuth) -> Self {
        self.access.clients = Some(clients);
        self
    }

    pub fn settings(&self) -> &FeedSettings {
        &self.settings
    }

    /// A feed for the holder of `token`: an admin now, or a client whose
    /// token carries `events:read`. It reads nothing until [`Feed::start`].
    pub async fn open(&self, token: &str) -> Result<Feed, Error> {
        let caller = self.access.check(token).await?;
        let slot = Arc::clone(&self.slots).try_acquire_owned().map_err(|_| {
            tracing::warn!("event feed refused: every slot (events.max_subscribers) is taken");
            Error::with_message(
                ErrorCode::Overloaded,
                "as many event feeds are open as this server allows (events.max_subscribers); retry later",
            )
            .with_retry_after(Duration::from_secs(5))
        })?;
        tracing::info!(caller, "event feed opened");
        Ok(Feed {
            log: Arc::clone(&self.log),
            access: self.access.clone(),
            token: token.to_owned(),
            settings: self.settings.clone(),
            topics: Topics::default(),
            cursor: None,
            checked: Instant::now(),
            _slot: slot,
        })
    }
}

/// One caller's cursor on the log.
pub struct Feed {
    log: Arc<dyn EventLog>,
    access: Access,
    token: String,
    settings: FeedSettings,
    topics: Topics,
    cursor: Option<i64>,
    checked: Instant,
    _slot: OwnedSemaphorePermit,
}

impl std::fmt::Debug for Feed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Feed")
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Feed {
    /// Its topics, to change while it runs.
    pub fn topics(&self) -> Topics {
        self.topics.clone()
    }

    /// Places the cursor just after event `after` (refused when the log no
    /// longer keeps it), or at the newest event.
    pub async fn start(&mut self, after: Option<i64>) -> Result<(), Error> {
        match after {
            Some(after) => {
                // Proves the log still holds `after` and nothing after it
                // was pruned.
                self.log.read(Some(after), 1).await?;
                self.cursor = Some(after);
            }
            None => {
                self.cursor = self.log.read(None, 1).await?.last().map(|e| e.position);
            }
        }
        Ok(())
    }

    /// Where the cursor is: the last event read.
    pub fn cursor(&self) -> Option<i64> {
        self.cursor
    }

    /// The next events of its topics, waiting (polling) until there are
    /// some. Fails when the caller is no longer an admin with a valid token
    /// (`INVALID_TOKEN`, `FORBIDDEN`), or the log cannot be read.
    pub async fn next(&mut self) -> Result<Vec<(Topic, LoggedEvent)>, Error> {
        loop {
            if self.checked.elapsed() >= self.settings.recheck {
                self.access.check(&self.token).await?;
                self.checked = Instant::now();
            }
            let events = self.log.read(self.cursor, self.settings.batch).await?;
            if let Some(last) = events.last() {
                self.cursor = Some(last.position);
            }
            let full = events.len() >= usize::try_from(self.settings.batch).unwrap_or(usize::MAX);
            let chosen: Vec<(Topic, LoggedEvent)> = events
                .into_iter()
                .filter_map(|e| {
                    let topic = Topic::of(e.event.type_name())?;
                    self.topics.contains(topic).then_some((topic, e))
                })
                .collect();
            if !chosen.is_empty() {
                return Ok(chosen);
            }
            if !full {
                tokio::time::sleep(self.settings.poll).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_cover_every_event_type() {
        for t in crate::webhooks::EVENT_TYPES {
            assert!(Topic::of(t).is_some(), "{t}");
        }
        assert_eq!(Topic::parse("user_updates").unwrap(), Topic::UserUpdates);
        assert!(Topic::parse("game_updates").is_err());
        let topics = Topics::default();
        assert!(topics.add(Topic::UserUpdates));
        assert!(!topics.add(Topic::UserUpdates));
        assert!(topics.contains(Topic::UserUpdates));
        assert!(topics.remove(Topic::UserUpdates));
        assert!(!topics.contains(Topic::UserUpdates));
    }
}
