//! A subscriber's queue delivered by one instance at a time, under a lease,
//! with no transaction open while it delivers: a webhook endpoint's.
//!
//! The activity log's relay holds its claim's transaction while it writes
//! to MongoDB (milliseconds). A webhook round waits on someone else's HTTP
//! server for seconds, and an open transaction that long would hold back
//! every reader of the log (they show only what all running transactions
//! are past) and vacuum. So a round here:
//!
//! 1. looks (read only) whether anything is pending, and stops if not;
//! 2. takes the subscriber's lease (`event_subscribers.lease_owner`,
//!    `lease_until`) in a short transaction, unless another instance holds
//!    an unexpired one, and reads the oldest pending events in the log's
//!    commit order (transaction, then id: a user's events as they
//!    committed), only those every running transaction is past;
//! 3. delivers them with nothing open, within the lease;
//! 4. marks the delivered ones and gives the lease back, in one short
//!    transaction.
//!
//! An instance that dies mid-round leaves its lease to expire; the next
//! round re-reads what was not marked. Delivery is at least once.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use hub_core::webhooks::WebhookQueue;
use hub_core::{ClaimedEvents, Error, PendingEvent};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::outbox::{ClaimedRow, quarantine};

/// A queue under a lease.
#[derive(Debug, Clone)]
pub struct LeasedQueue {
    pool: PgPool,
    subscriber: String,
    /// This queue's holder's name in the lease (one per worker).
    owner: Uuid,
    lease: Duration,
    /// The last claim was a full batch: there is more, no need to look.
    more: Arc<AtomicBool>,
}

impl LeasedQueue {
    /// `subscriber`'s queue; a claim holds it for `lease` at most.
    pub fn new(pool: PgPool, subscriber: &str, lease: Duration) -> Self {
        Self {
            pool,
            subscriber: subscriber.to_owned(),
            owner: Uuid::now_v7(),
            lease,
            more: Arc::new(AtomicBool::new(false)),
        }
    }

    fn empty(&self) -> Box<dyn ClaimedEvents> {
        Box::new(LeasedClaim {
            pool: self.pool.clone(),
            subscriber: self.subscriber.clone(),
            owner: self.owner,
            events: Vec::new(),
            positions: Vec::new(),
            leased: false,
        })
    }
}

/// A round's events; settling marks them and gives the lease back.
struct LeasedClaim {
    pool: PgPool,
    subscriber: String,
    owner: Uuid,
    events: Vec<PendingEvent>,
    positions: Vec<i64>,
    leased: bool,
}

impl LeasedClaim {
    async fn finish(&self, delivered: &[i64], at: OffsetDateTime) -> Result<(), Error> {
        if !self.leased {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("marking webhook deliveries", e))?;
        // The subscriber's row first, as deleting or disabling the endpoint
        // and a replay take it first (then its deliveries): the same order,
        // no deadlock. A lease that is no longer ours (a replay ended it,
        // or it expired) marks nothing: what was sent may be sent again,
        // never skipped.
        let held = release(&mut tx, &self.subscriber, self.owner).await?;
        if held && !delivered.is_empty() {
            sqlx::query(
                "UPDATE event_deliveries SET delivered_at = $3 \
                 WHERE subscriber = $1 AND event_id = ANY($2) AND delivered_at IS NULL",
            )
            .bind(&self.subscriber)
            .bind(delivered)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("marking webhook deliveries", e))?;
        }
        tx.commit()
            .await
            .map_err(|e| classify("marking webhook deliveries", e))
    }
}

/// Gives `owner`'s lease on `subscriber`'s queue back.
/// Whether it still held it.
async fn release(
    tx: &mut sqlx::PgTransaction<'static>,
    subscriber: &str,
    owner: Uuid,
) -> Result<bool, Error> {
    let released = sqlx::query(
        "UPDATE event_subscribers SET lease_owner = NULL, lease_until = NULL \
         WHERE name = $1 AND lease_owner = $2",
    )
    .bind(subscriber)
    .bind(owner)
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("giving a delivery lease back", e))?
    .rows_affected();
    Ok(released > 0)
}

#[async_trait]
impl ClaimedEvents for LeasedClaim {
    fn events(&self) -> &[PendingEvent] {
        &self.events
    }

    async fn delivered(self: Box<Self>, at: OffsetDateTime) -> Result<(), Error> {
        self.finish(&self.positions, at).await
    }

    /// Refusals are not counted here: the dispatcher retries each user's
    /// refused event itself, with backoff, until it is accepted or the
    /// endpoint is disabled.
    async fn settle(
        self: Box<Self>,
        delivered: &[Uuid],
        _refused: &[(Uuid, String)],
        at: OffsetDateTime,
        _max_attempts: u32,
    ) -> Result<u64, Error> {
        let positions: Vec<i64> = self
            .events
            .iter()
            .zip(&self.positions)
            .filter(|(pending, _)| delivered.contains(&pending.event.id()))
            .map(|(_, position)| *position)
            .collect();
        self.finish(&positions, at).await?;
        Ok(0)
    }
}

#[async_trait]
impl WebhookQueue for LeasedQueue {
    async fn claim(&self, limit: u32, waiting: &[Uuid]) -> Result<Box<dyn ClaimedEvents>, Error> {
        // A look that writes nothing: an idle endpoint costs one read. After
        // a full batch there is more, and the look is skipped.
        let pending: bool = self.more.load(Ordering::Relaxed)
            || sqlx::query_scalar(
                "SELECT EXISTS (SELECT 1 FROM event_deliveries \
             WHERE subscriber = $1 AND delivered_at IS NULL AND quarantined_at IS NULL)",
            )
            .bind(&self.subscriber)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| classify("looking for webhook events", e))?;
        self.more.store(false, Ordering::Relaxed);
        if !pending {
            return Ok(self.empty());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("claiming webhook events", e))?;
        let lease_ms = i64::try_from(self.lease.as_millis()).unwrap_or(i64::MAX);
        let ours: Option<i32> = sqlx::query_scalar(
            "UPDATE event_subscribers \
             SET lease_owner = $2, lease_until = clock_timestamp() + make_interval(secs => $3::double precision / 1000) \
             WHERE name = $1 AND (lease_until IS NULL OR lease_until < clock_timestamp() OR lease_owner = $2) \
             RETURNING 1",
        )
        .bind(&self.subscriber)
        .bind(self.owner)
        .bind(lease_ms)
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("taking a delivery lease", e))?;
        if ours.is_none() {
            tx.commit()
                .await
                .map_err(|e| classify("claiming webhook events", e))?;
            return Ok(self.empty());
        }
        // The oldest pending rows by id come from the partial index (a
        // backlog of a million costs no sort); among them, commit order.
        let rows: Vec<ClaimedRow> = sqlx::query_as(
            "WITH candidates AS ( \
               SELECT d.event_id FROM event_deliveries d JOIN events w ON w.id = d.event_id \
               WHERE d.subscriber = $1 AND d.delivered_at IS NULL AND d.quarantined_at IS NULL \
                 AND (w.user_id IS NULL OR NOT (w.user_id = ANY($4))) \
               ORDER BY d.event_id LIMIT $3) \
             SELECT e.id, e.event_id, e.type, e.user_id, e.session_id, e.occurred_at, \
                    e.data, u.username \
             FROM candidates c \
             JOIN events e ON e.id = c.event_id \
             LEFT JOIN users u ON u.id = e.user_id \
             WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
             ORDER BY e.tx, e.id LIMIT $2",
        )
        .bind(&self.subscriber)
        .bind(i64::from(limit))
        .bind(i64::from(limit).saturating_mul(4))
        .bind(waiting)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify("claiming webhook events", e))?;
        let mut events = Vec::with_capacity(rows.len());
        let mut positions = Vec::with_capacity(rows.len());
        for row in rows {
            match row.pending() {
                Ok((position, pending)) => {
                    positions.push(position);
                    events.push(pending);
                }
                Err((position, id, why)) => {
                    quarantine(&mut tx, &self.subscriber, position, &why.to_string()).await?;
                    tracing::error!(event = %id, position, subscriber = %self.subscriber, reason = %why, "an unreadable event was set aside");
                }
            }
        }
        if events.is_empty() {
            // Nothing every running transaction is past yet: the lease
            // goes back at once.
            release(&mut tx, &self.subscriber, self.owner).await?;
            tx.commit()
                .await
                .map_err(|e| classify("claiming webhook events", e))?;
            return Ok(self.empty());
        }
        tx.commit()
            .await
            .map_err(|e| classify("claiming webhook events", e))?;
        self.more.store(
            events.len() >= usize::try_from(limit).unwrap_or(usize::MAX),
            Ordering::Relaxed,
        );
        Ok(Box::new(LeasedClaim {
            pool: self.pool.clone(),
            subscriber: self.subscriber.clone(),
            owner: self.owner,
            events,
            positions,
            leased: true,
        }))
    }
}
