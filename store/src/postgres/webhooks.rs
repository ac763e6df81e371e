//! Webhook endpoints (`webhook_endpoints`): hub-core's [`WebhookEndpoints`]
//! in PostgreSQL. Each endpoint is also a subscriber of the event log named
//! `webhook:<id>`, whose queue is a [`LeasedQueue`]: one instance delivers
//! it at a time, with no transaction open while it waits on the receiver.

use std::sync::Arc;

use async_trait::async_trait;
use hub_core::events::DomainEvent;
use hub_core::webhooks::{
    EndpointId, EventTypes, SigningKeys, WebhookEndpoint, WebhookEndpoints, WebhookEvent,
    WebhookQueue, WebhookSecret,
};
use hub_core::{Error, UserId};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::leased::LeasedQueue;

/// How long one instance holds an endpoint's queue per round: longer than
/// the dispatcher's round (`hub_core::delivery::ROUND_BUDGET`) plus one
/// delivery's timeout, so a round never outlives its lease.
pub const DELIVERY_LEASE: std::time::Duration = std::time::Duration::from_secs(60);

/// Endpoints in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgWebhookEndpoints {
    pool: PgPool,
}

impl PgWebhookEndpoints {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct EndpointRow {
    id: Uuid,
    url: String,
    types: Vec<String>,
    description: String,
    created_at: OffsetDateTime,
    created_by: Option<Uuid>,
    failing_since: Option<OffsetDateTime>,
    last_error: Option<String>,
    disabled_at: Option<OffsetDateTime>,
    disabled_reason: Option<String>,
    previous_until: Option<OffsetDateTime>,
}

impl EndpointRow {
    fn endpoint(self) -> Result<WebhookEndpoint, Error> {
        Ok(WebhookEndpoint {
            id: EndpointId::from(self.id),
            url: self.url,
            types: EventTypes::parse(&self.types)?,
            description: self.description,
            created_at: self.created_at,
            created_by: self
                .created_by
                .map(UserId::try_from)
                .transpose()
                .ok()
                .flatten(),
            failing_since: self.failing_since,
            last_error: self.last_error,
            disabled_at: self.disabled_at,
            disabled_reason: self.disabled_reason,
            previous_secret_until: self.previous_until,
        })
    }
}

/// The columns an [`EndpointRow`] takes.
macro_rules! columns {
    () => {
        "id, url, types, description, created_at, created_by, failing_since, \
         last_error, disabled_at, disabled_reason, previous_until"
    };
}

/// Writes `event` in `tx`.
async fn log(tx: &mut sqlx::PgTransaction<'_>, event: &WebhookEvent) -> Result<(), Error> {
    super::events::insert(tx, &[DomainEvent::Webhook(event.clone())]).await
}

#[async_trait]
impl WebhookEndpoints for PgWebhookEndpoints {
    async fn create(
        &self,
        endpoint: &WebhookEndpoint,
        secret: &WebhookSecret,
        event: &WebhookEvent,
    ) -> Result<(), Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("adding a webhook endpoint", e))?;
        sqlx::query(
            "INSERT INTO webhook_endpoints \
             (id, url, types, description, secret, created_at, created_by) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(endpoint.id.as_uuid())
        .bind(&endpoint.url)
        .bind(endpoint.types.as_slice())
        .bind(&endpoint.description)
        .bind(secret.bytes())
        .bind(endpoint.created_at)
        .bind(endpoint.created_by.map(|u| u.as_uuid()))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("adding a webhook endpoint", e))?;
        // Its own creation is not among the events it gets: the subscriber
        // row comes after the event is written.
        log(&mut tx, event).await?;
        sqlx::query("INSERT INTO event_subscribers (name, types) VALUES ($1, $2)")
            .bind(endpoint.id.subscriber())
            .bind(endpoint.types.as_slice())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("subscribing a webhook endpoint", e))?;
        tx.commit()
            .await
            .map_err(|e| classify("adding a webhook endpoint", e))
    }

    async fn list(&self) -> Result<Vec<WebhookEndpoint>, Error> {
        let rows: Vec<EndpointRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM webhook_endpoints ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing webhook endpoints", e))?;
        rows.into_iter().map(EndpointRow::endpoint).collect()
    }

    async fn get(&self, id: EndpointId) -> Result<Option<WebhookEndpoint>, Error> {
        let row: Option<EndpointRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM webhook_endpoints WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a webhook endpoint", e))?;
        row.map(EndpointRow::endpoint).transpose()
    }

    async fn delete(&self, id: EndpointId, event: &WebhookEvent) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("deleting a webhook endpoint", e))?;
        // The endpoint's row, then its subscriber's (whose trigger deletes
        // the queue): the order disable and enable take them in. The
        // deletion's own event is written after both, so it is not queued
        // for the endpoint.
        let gone = sqlx::query("DELETE FROM webhook_endpoints WHERE id = $1")
            .bind(id.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("deleting a webhook endpoint", e))?
            .rows_affected();
        if gone == 0 {
            return Ok(false);
        }
        sqlx::query("DELETE FROM event_subscribers WHERE name = $1")
            .bind(id.subscriber())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("deleting a webhook endpoint", e))?;
        log(&mut tx, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("deleting a webhook endpoint", e))?;
        Ok(true)
    }

    async fn rotate_secret(
        &self,
        id: EndpointId,
        secret: &WebhookSecret,
        previous_until: OffsetDateTime,
        event: &WebhookEvent,
    ) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("rotating a webhook secret", e))?;
        let changed = sqlx::query(
            "UPDATE webhook_endpoints \
             SET previous_secret = secret, previous_until = $3, secret = $2 WHERE id = $1",
        )
        .bind(id.as_uuid())
        .bind(secret.bytes())
        .bind(previous_until)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("rotating a webhook secret", e))?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        log(&mut tx, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("rotating a webhook secret", e))?;
        Ok(true)
    }

    async fn replay(&self, id: EndpointId, after: i64) -> Result<u64, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("queueing webhook events again", e))?;
        // The subscriber's row first (as a round's marking takes it), and
        // any round's lease ends: a round in flight cannot then mark as
        // delivered an event this replay has just queued again.
        sqlx::query(
            "UPDATE event_subscribers SET lease_owner = NULL, lease_until = NULL WHERE name = $1",
        )
        .bind(id.subscriber())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("queueing webhook events again", e))?;
        // Events after `after` in the log's commit-safe order, of the
        // endpoint's types: queued again (a delivered one becomes pending).
        let queued = sqlx::query(
            "INSERT INTO event_deliveries (subscriber, event_id) \
             SELECT $1, e.id FROM events e, events a, event_subscribers s \
             WHERE a.id = $2 AND s.name = $1 AND (e.tx, e.id) > (a.tx, a.id) \
               AND EXISTS (SELECT 1 FROM unnest(s.types) p WHERE event_type_matches(p, e.type)) \
             ON CONFLICT (subscriber, event_id) DO UPDATE \
             SET delivered_at = NULL, quarantined_at = NULL, quarantine_reason = NULL, attempts = 0",
        )
        .bind(id.subscriber())
        .bind(after)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("queueing webhook events again", e))?
        .rows_affected();
        tx.commit()
            .await
            .map_err(|e| classify("queueing webhook events again", e))?;
        if queued == 0 {
            let known: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)")
                    .bind(after)
                    .fetch_one(&self.pool)
                    .await
                    .map_err(|e| classify("queueing webhook events again", e))?;
            if !known {
                return Err(hub_core::events::no_such_position(after));
            }
        }
        Ok(queued)
    }

    async fn keys(
        &self,
        id: EndpointId,
        now: OffsetDateTime,
    ) -> Result<Option<SigningKeys>, Error> {
        let row: Option<(Vec<u8>, Option<Vec<u8>>, Option<OffsetDateTime>)> = sqlx::query_as(
            "SELECT secret, previous_secret, previous_until FROM webhook_endpoints WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a webhook secret", e))?;
        Ok(row.map(|(current, previous, until)| SigningKeys {
            current: WebhookSecret::from_bytes(current),
            previous: match (previous, until) {
                (Some(previous), Some(until)) if until > now => {
                    Some(WebhookSecret::from_bytes(previous))
                }
                _ => None,
            },
        }))
    }

    async fn failed(
        &self,
        id: EndpointId,
        at: OffsetDateTime,
        error: &str,
    ) -> Result<OffsetDateTime, Error> {
        let error: String = error.chars().take(500).collect();
        let since: Option<OffsetDateTime> = sqlx::query_scalar(
            "UPDATE webhook_endpoints \
             SET failing_since = coalesce(failing_since, $2), last_error = $3 \
             WHERE id = $1 RETURNING failing_since",
        )
        .bind(id.as_uuid())
        .bind(at)
        .bind(error)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("recording a webhook failure", e))?
        .flatten();
        Ok(since.unwrap_or(at))
    }

    async fn recovered(&self, id: EndpointId) -> Result<(), Error> {
        sqlx::query(
            "UPDATE webhook_endpoints SET failing_since = NULL \
             WHERE id = $1 AND failing_since IS NOT NULL",
        )
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(|e| classify("recording a webhook recovery", e))?;
        Ok(())
    }

    async fn disable(
        &self,
        id: EndpointId,
        reason: &str,
        event: &WebhookEvent,
    ) -> Result<(), Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("disabling a webhook endpoint", e))?;
        let changed = sqlx::query(
            "UPDATE webhook_endpoints SET disabled_at = $2, disabled_reason = $3 \
             WHERE id = $1 AND disabled_at IS NULL",
        )
        .bind(id.as_uuid())
        .bind(event.at)
        .bind(reason)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("disabling a webhook endpoint", e))?
        .rows_affected();
        if changed > 0 {
            // Its queue goes, so a dead receiver does not keep the log from
            // being pruned; `hub webhooks replay --after ID` fills the gap
            // once it is enabled again.
            sqlx::query("DELETE FROM event_subscribers WHERE name = $1")
                .bind(id.subscriber())
                .execute(&mut *tx)
                .await
                .map_err(|e| classify("disabling a webhook endpoint", e))?;
            log(&mut tx, event).await?;
        }
        tx.commit()
            .await
            .map_err(|e| classify("disabling a webhook endpoint", e))
    }

    async fn enable(&self, id: EndpointId, event: &WebhookEvent) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("enabling a webhook endpoint", e))?;
        let changed = sqlx::query(
            "UPDATE webhook_endpoints \
             SET disabled_at = NULL, disabled_reason = NULL, failing_since = NULL \
             WHERE id = $1",
        )
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("enabling a webhook endpoint", e))?
        .rows_affected();
        if changed == 0 {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO event_subscribers (name, types) \
             SELECT $1, types FROM webhook_endpoints WHERE id = $2 \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(id.subscriber())
        .bind(id.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("enabling a webhook endpoint", e))?;
        log(&mut tx, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("enabling a webhook endpoint", e))?;
        Ok(true)
    }

    fn queue(&self, id: EndpointId) -> Arc<dyn WebhookQueue> {
        Arc::new(LeasedQueue::new(
            self.pool.clone(),
            &id.subscriber(),
            DELIVERY_LEASE,
        ))
    }
}
