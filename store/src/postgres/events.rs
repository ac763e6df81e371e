//! The event log in PostgreSQL: every change's events written inside the
//! change's own transaction, and the log read in commit-safe order.
//!
//! Ids come from an identity column, so they are handed out when a row is
//! written, not when its transaction commits: a transaction that took id 7
//! may commit after another that took id 8. A reader that showed 8 and
//! then resumed "after 8" would never show 7. So the log is read in the
//! order (transaction id, event id), and only events of transactions older
//! than every transaction still running (`pg_snapshot_xmin`): any event
//! that becomes visible later sorts after everything shown before it.

use async_trait::async_trait;
use hub_core::events::{DomainEvent, EventLog, LoggedEvent, Subscriber, no_such_position};
use hub_core::{Error, ErrorCode, UserId};
use sqlx::postgres::{PgPool, PgTransaction};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// Writes `events` in `tx`, in their order, in one statement (their
/// subscribers' delivery rows come with them, from the table's trigger).
pub(super) async fn insert(
    tx: &mut PgTransaction<'_>,
    events: &[DomainEvent],
) -> Result<(), Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut ids = Vec::with_capacity(events.len());
    let mut types = Vec::with_capacity(events.len());
    let mut users = Vec::with_capacity(events.len());
    let mut sessions = Vec::with_capacity(events.len());
    let mut times = Vec::with_capacity(events.len());
    let mut data = Vec::with_capacity(events.len());
    for event in events {
        ids.push(event.id());
        types.push(event.type_name());
        users.push(event.user_id().map(|u: UserId| u.as_uuid()));
        sessions.push(event.session_id().map(|s| s.as_uuid()));
        times.push(event.at());
        data.push(Json(event.data()));
    }
    sqlx::query(
        "INSERT INTO events (event_id, type, user_id, session_id, occurred_at, data) \
         SELECT id, type, user_id, session_id, at, data \
         FROM unnest($1::uuid[], $2::text[], $3::uuid[], $4::uuid[], \
                     $5::timestamptz[], $6::jsonb[]) \
              WITH ORDINALITY AS e(id, type, user_id, session_id, at, data, n) \
         ORDER BY n",
    )
    .bind(&ids)
    .bind(&types)
    .bind(&users)
    .bind(&sessions)
    .bind(&times)
    .bind(&data)
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("writing events to the event log", e))?;
    Ok(())
}

/// One row of the log, as read back.
#[derive(sqlx::FromRow)]
pub(super) struct EventRow {
    pub id: i64,
    pub event_id: Uuid,
    #[sqlx(rename = "type")]
    pub type_name: String,
    pub user_id: Option<Uuid>,
    pub session_id: Option<Uuid>,
    pub occurred_at: OffsetDateTime,
    /// Read as any JSON and parsed per row, so one bad row is that row's
    /// problem, not the whole read's.
    pub data: Json<serde_json::Value>,
}

impl EventRow {
    pub(super) fn event(&self) -> Result<DomainEvent, Error> {
        DomainEvent::from_stored(
            self.event_id,
            &self.type_name,
            self.user_id,
            self.session_id,
            self.occurred_at,
            &self.data.0,
        )
    }
}

/// The refusal of a read after an event that later, pruned events followed.
fn pruned_past(after: i64) -> Error {
    Error::with_message(
        ErrorCode::InvalidRequest,
        format!(
            "events after {after} have been pruned from the log; read without --after for the latest"
        ),
    )
}

/// The log, for its readers (`hub events tail`).
#[derive(Debug, Clone)]
pub struct PgEventLog {
    pool: PgPool,
}

impl PgEventLog {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The columns a reader takes, in [`EventRow`]'s names.
macro_rules! columns {
    () => {
        "e.id, e.event_id, e.type, e.user_id, e.session_id, e.occurred_at, e.data"
    };
}

/// The events after `after`, in one snapshot (see [`PgEventLog`]).
async fn read_after(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<EventRow>, Error> {
    // One snapshot for the check and the read, so a prune in
    // between cannot make the read skip what it deleted.
    let mut tx = pool
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .map_err(|e| classify("reading the event log", e))?;
    let behind: Option<bool> = sqlx::query_scalar(
        "SELECT (a.tx, a.id) < (p.tx, p.id) FROM events a, event_log_pruned p \
         WHERE a.id = $1",
    )
    .bind(after)
    .fetch_optional(&mut *tx)
    .await
    .map_err(|e| classify("reading the event log", e))?;
    match behind {
        None => return Err(no_such_position(after)),
        Some(true) => return Err(pruned_past(after)),
        Some(false) => {}
    }
    let rows = sqlx::query_as(concat!(
        "SELECT ",
        columns!(),
        " FROM events e, events a \
         WHERE a.id = $1 AND (e.tx, e.id) > (a.tx, a.id) \
           AND e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
         ORDER BY e.tx, e.id LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *tx)
    .await
    .map_err(|e| classify("reading the event log", e))?;
    tx.commit()
        .await
        .map_err(|e| classify("reading the event log", e))?;
    Ok(rows)
}

#[async_trait]
impl EventLog for PgEventLog {
    async fn read(&self, after: Option<i64>, limit: u32) -> Result<Vec<LoggedEvent>, Error> {
        let limit = i64::from(limit);
        let rows: Vec<EventRow> = match after {
            None => sqlx::query_as(concat!(
                "SELECT * FROM (SELECT ",
                columns!(),
                ", e.tx FROM events e \
                   WHERE e.tx < pg_snapshot_xmin(pg_current_snapshot()) \
                   ORDER BY e.tx DESC, e.id DESC LIMIT $1) e \
                 ORDER BY e.tx, e.id"
            ))
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| classify("reading the event log", e))?,
            // On a task of its own: a reader that goes away mid-read (a
            // feed whose client hung up) must not cut the transaction short
            // between its BEGIN and its end, which could hand the pool a
            // connection still inside a read-only transaction.
            Some(after) => {
                let pool = self.pool.clone();
                tokio::spawn(async move { read_after(&pool, after, limit).await })
                    .await
                    .map_err(|e| Error::internal(format!("reading the event log: {e}")))??
            }
        };
        rows.into_iter()
            .map(|row| {
                Ok(LoggedEvent {
                    position: row.id,
                    event: row.event()?,
                })
            })
            .collect()
    }

    /// Only the rows each subscriber still waits for or set aside are read
    /// (the partial indexes), never the delivered ones.
    async fn subscribers(&self) -> Result<Vec<Subscriber>, Error> {
        let rows: Vec<(String, Vec<String>, i64, Option<OffsetDateTime>, i64)> = sqlx::query_as(
            "SELECT s.name, s.types, \
               count(d.event_id) FILTER (WHERE d.quarantined_at IS NULL), \
               min(e.occurred_at) FILTER (WHERE d.quarantined_at IS NULL), \
               count(d.event_id) FILTER (WHERE d.quarantined_at IS NOT NULL) \
             FROM event_subscribers s \
             LEFT JOIN event_deliveries d \
               ON d.subscriber = s.name AND d.delivered_at IS NULL \
             LEFT JOIN events e ON e.id = d.event_id \
             GROUP BY s.name, s.types ORDER BY s.name",
        )
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("reading the event log's subscribers", e))?;
        Ok(rows
            .into_iter()
            .map(
                |(name, types, pending, oldest_pending, quarantined)| Subscriber {
                    name,
                    types,
                    pending: u64::try_from(pending).unwrap_or(0),
                    oldest_pending,
                    quarantined: u64::try_from(quarantined).unwrap_or(0),
                },
            )
            .collect())
    }
}
