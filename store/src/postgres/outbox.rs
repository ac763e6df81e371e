//! One subscriber's queue of the event log (the MongoDB activity log's,
//! drained by the sessions service's relay): its rows of
//! `event_deliveries`, one per event it listens to.
//!
//! A claim is a transaction holding `FOR UPDATE SKIP LOCKED` row locks on
//! the subscriber's oldest undelivered events: another relay skips them and
//! takes the next ones, and if this relay dies the locks go with its
//! connection and the events are claimable again. Marking the batch
//! delivered commits. Only this subscriber's rows are locked or changed, so
//! no other subscriber waits on this one.

use async_trait::async_trait;
use hub_core::{Backlog, ClaimedEvents, Error, Outbox, PendingEvent, Username};
use sqlx::postgres::{PgPool, PgTransaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::events::EventRow;

/// The subscriber the activity log reads as (see the event log migration).
pub const ACTIVITY_SUBSCRIBER: &str = "activity";

/// A subscriber's queue of the event log in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
    subscriber: String,
}

impl PgOutbox {
    /// The activity log's queue.
    pub fn new(pool: PgPool) -> Self {
        Self::for_subscriber(pool, ACTIVITY_SUBSCRIBER)
    }

    /// The queue of `subscriber`, a row of `event_subscribers`.
    pub fn for_subscriber(pool: PgPool, subscriber: &str) -> Self {
        Self {
            pool,
            subscriber: subscriber.to_owned(),
        }
    }

    /// Makes this queue's subscriber a row of `event_subscribers` taking
    /// `types`, if it is not one yet; it gets the events written from then
    /// on. For a subscriber that exists only while configured (the mailer).
    pub async fn subscribe(&self, types: &[&str]) -> Result<(), hub_core::Error> {
        sqlx::query(
            "INSERT INTO event_subscribers (name, types) VALUES ($1, $2) \
             ON CONFLICT (name) DO UPDATE SET types = EXCLUDED.types",
        )
        .bind(&self.subscriber)
        .bind(types)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("adding a subscriber of the event log", e))?;
        Ok(())
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct ClaimedRow {
    #[sqlx(flatten)]
    pub(super) event: EventRow,
    pub(super) username: Option<String>,
}

/// A claimed batch: the open transaction holds its row locks. `positions`
/// are the claimed events' ids in the log, beside `events`.
struct PgClaim {
    tx: PgTransaction<'static>,
    subscriber: String,
    events: Vec<PendingEvent>,
    positions: Vec<i64>,
}

impl ClaimedRow {
    /// The row as a pending event, or why it cannot be read.
    pub(super) fn pending(self) -> Result<(i64, PendingEvent), (i64, Uuid, Error)> {
        match self.event.event() {
            Ok(event) => Ok((
                self.event.id,
                PendingEvent {
                    position: self.event.id,
                    event,
                    username: self.username.and_then(|u| Username::parse(&u).ok()),
                },
            )),
            Err(e) => Err((self.event.id, self.event.event_id, e)),
        }
    }
}

/// Sets an unreadable row of `subscriber`'s queue aside, with why.
pub(super) async fn quarantine(
    tx: &mut PgTransaction<'static>,
    subscriber: &str,
    position: i64,
    why: &str,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE event_deliveries SET quarantined_at = now(), quarantine_reason = $3 \
         WHERE subscriber = $1 AND event_id = $2",
    )
    .bind(subscriber)
    .bind(position)
    .bind(why)
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("quarantining an unreadable event", e))?;
    Ok(())
}

impl PgClaim {
    /// The log ids of the claimed events named by `ids`.
    fn positions_of(&self, ids: &[Uuid]) -> Vec<i64> {
        self.events
            .iter()
            .zip(&self.positions)
            .filter(|(pending, _)| ids.contains(&pending.event.id()))
            .map(|(_, position)| *position)
            .collect()
    }
}

async fn mark_delivered(
    tx: &mut PgTransaction<'static>,
    subscriber: &str,
    positions: &[i64],
    at: OffsetDateTime,
) -> Result<(), Error> {
    sqlx::query(
        "UPDATE event_deliveries SET delivered_at = $3 \
         WHERE subscriber = $1 AND event_id = ANY($2)",
    )
    .bind(subscriber)
    .bind(positions)
    .bind(at)
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("marking events delivered", e))?;
    Ok(())
}

#[async_trait]
impl ClaimedEvents for PgClaim {
    fn events(&self) -> &[PendingEvent] {
        &self.events
    }

    async fn delivered(mut self: Box<Self>, at: OffsetDateTime) -> Result<(), Error> {
        let positions = std::mem::take(&mut self.positions);
        mark_delivered(&mut self.tx, &self.subscriber, &positions, at).await?;
        self.tx
            .commit()
            .await
            .map_err(|e| classify("committing delivered events", e))
    }

    async fn settle(
        mut self: Box<Self>,
        delivered: &[Uuid],
        refused: &[(Uuid, String)],
        at: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, Error> {
        if !delivered.is_empty() {
            let positions = self.positions_of(delivered);
            mark_delivered(&mut self.tx, &self.subscriber, &positions, at).await?;
        }
        let mut ids = Vec::with_capacity(refused.len());
        let mut reasons = Vec::with_capacity(refused.len());
        for (id, reason) in refused {
            if let Some(position) = self.positions_of(std::slice::from_ref(id)).first() {
                ids.push(*position);
                reasons.push(reason.clone());
            }
        }
        let quarantined: i64 = sqlx::query_scalar(
            "WITH counted AS ( \
                 UPDATE event_deliveries d SET attempts = d.attempts + 1, \
                   quarantined_at = CASE WHEN d.attempts + 1 >= $4 THEN now() END, \
                   quarantine_reason = CASE WHEN d.attempts + 1 >= $4 THEN r.reason END \
                 FROM unnest($2::bigint[], $3::text[]) AS r(id, reason) \
                 WHERE d.subscriber = $1 AND d.event_id = r.id \
                 RETURNING d.quarantined_at) \
             SELECT count(*) FILTER (WHERE quarantined_at IS NOT NULL) FROM counted",
        )
        .bind(&self.subscriber)
        .bind(&ids)
        .bind(&reasons)
        .bind(i64::from(max_attempts))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| classify("counting refused events", e))?;
        self.tx
            .commit()
            .await
            .map_err(|e| classify("committing settled events", e))?;
        Ok(u64::try_from(quarantined).unwrap_or(0))
    }
}

#[async_trait]
impl Outbox for PgOutbox {
    async fn claim(&self, limit: u32) -> Result<Box<dyn ClaimedEvents>, Error> {
        // Each round that meets unreadable rows quarantines them and commits,
        // so the next round claims without them: one bad row never stalls
        // the events behind it.
        loop {
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| classify("claiming events", e))?;
            // `event_deliveries_pending` holds exactly the pending rows, in
            // this order.
            let rows: Vec<ClaimedRow> = sqlx::query_as(
                "SELECT e.id, e.event_id, e.type, e.user_id, e.session_id, e.occurred_at, \
                        e.data, u.username \
                 FROM event_deliveries d \
                 JOIN events e ON e.id = d.event_id \
                 LEFT JOIN users u ON u.id = e.user_id \
                 WHERE d.subscriber = $1 AND d.delivered_at IS NULL AND d.quarantined_at IS NULL \
                 ORDER BY d.event_id LIMIT $2 \
                 FOR UPDATE OF d SKIP LOCKED",
            )
            .bind(&self.subscriber)
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| classify("claiming events", e))?;
            let mut events = Vec::with_capacity(rows.len());
            let mut positions = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            for row in rows {
                match row.pending() {
                    Ok((position, pending)) => {
                        positions.push(position);
                        events.push(pending);
                    }
                    Err(unread) => unreadable.push(unread),
                }
            }
            if unreadable.is_empty() {
                return Ok(Box::new(PgClaim {
                    tx,
                    subscriber: self.subscriber.clone(),
                    events,
                    positions,
                }));
            }
            for (position, id, why) in &unreadable {
                quarantine(&mut tx, &self.subscriber, *position, &why.to_string()).await?;
                tracing::error!(event = %id, position, subscriber = %self.subscriber, reason = %why, "an unreadable event was quarantined; fix the row, then `hub outbox retry`");
            }
            tx.commit()
                .await
                .map_err(|e| classify("committing quarantined events", e))?;
        }
    }

    async fn retry_quarantined(&self) -> Result<u64, Error> {
        Ok(sqlx::query(
            "UPDATE event_deliveries \
             SET quarantined_at = NULL, quarantine_reason = NULL, attempts = 0 \
             WHERE subscriber = $1 AND quarantined_at IS NOT NULL AND delivered_at IS NULL",
        )
        .bind(&self.subscriber)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("putting quarantined events back", e))?
        .rows_affected())
    }

    async fn backlog(&self) -> Result<Backlog, Error> {
        let (pending, oldest, quarantined): (i64, Option<OffsetDateTime>, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE d.quarantined_at IS NULL), \
             min(e.occurred_at) FILTER (WHERE d.quarantined_at IS NULL), \
             count(*) FILTER (WHERE d.quarantined_at IS NOT NULL) \
             FROM event_deliveries d JOIN events e ON e.id = d.event_id \
             WHERE d.subscriber = $1 AND d.delivered_at IS NULL",
        )
        .bind(&self.subscriber)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("measuring the event backlog", e))?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest,
            quarantined: u64::try_from(quarantined).unwrap_or(0),
        })
    }

    /// Events go once every subscriber has had them before `before` (or
    /// none listens and they happened before it; a delivery row left for a
    /// subscriber removed while the event was being written holds nothing): the log keeps what some
    /// subscriber still waits for, whatever its age. The furthest event
    /// pruned, in reading order, moves `event_log_pruned` forward, so a
    /// reader resuming below it is refused rather than silently skipping.
    async fn prune(&self, before: OffsetDateTime) -> Result<u64, Error> {
        let pruned: i64 = sqlx::query_scalar(
            "WITH gone AS ( \
               DELETE FROM events e WHERE e.occurred_at < $1 AND NOT EXISTS ( \
                 SELECT 1 FROM event_deliveries d WHERE d.event_id = e.id \
                 AND (d.delivered_at IS NULL OR d.delivered_at >= $1) \
                 AND EXISTS (SELECT 1 FROM event_subscribers s WHERE s.name = d.subscriber)) \
               RETURNING e.tx, e.id), \
             top AS (SELECT tx, id FROM gone ORDER BY tx DESC, id DESC LIMIT 1), \
             mark AS ( \
               UPDATE event_log_pruned p SET tx = top.tx, id = top.id FROM top \
               WHERE (top.tx, top.id) > (p.tx, p.id) RETURNING 1) \
             SELECT count(*) FROM gone",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("pruning delivered events", e))?;
        Ok(u64::try_from(pruned).unwrap_or(0))
    }
}
