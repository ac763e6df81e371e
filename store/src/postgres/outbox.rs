//! The outbox, drained by the sessions service's relay.
//!
//! A claim is a transaction holding `FOR UPDATE SKIP LOCKED` row locks on
//! the oldest undelivered events: another relay skips them and takes the
//! next ones, and if this relay dies the locks go with its connection and
//! the events are claimable again. Marking the batch delivered commits.

use std::net::IpAddr;

use async_trait::async_trait;
use hub_core::{
    Backlog, ClaimedEvents, ClientInfo, Error, Outbox, PendingEvent, SessionEvent,
    SessionEventKind, SessionId, UserId, Username,
};
use serde::Deserialize;
use sqlx::postgres::{PgPool, PgTransaction};
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// The outbox in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgOutbox {
    pool: PgPool,
}

impl PgOutbox {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// The parts of an event kept only in its JSON payload.
#[derive(Deserialize)]
struct Payload {
    client_ip: Option<String>,
    user_agent: Option<String>,
    reason: Option<String>,
}

#[derive(sqlx::FromRow)]
struct OutboxRow {
    id: Uuid,
    session_id: Uuid,
    user_id: Uuid,
    kind: String,
    /// Read as any JSON and parsed per row, so one bad payload is that
    /// row's problem, not the whole claim's.
    payload: Json<serde_json::Value>,
    created_at: OffsetDateTime,
    username: Option<String>,
}

impl TryFrom<OutboxRow> for PendingEvent {
    type Error = Error;

    fn try_from(row: OutboxRow) -> Result<Self, Error> {
        let corrupt =
            |field: &str| Error::internal(format!("outbox row {} has a bad {field}", row.id));
        let payload: Payload =
            serde_json::from_value(row.payload.0).map_err(|_| corrupt("payload"))?;
        Ok(PendingEvent {
            event: SessionEvent {
                id: row.id,
                kind: SessionEventKind::parse(&row.kind)?,
                session_id: SessionId::try_from(row.session_id)
                    .map_err(|_| corrupt("session_id"))?,
                user_id: UserId::try_from(row.user_id).map_err(|_| corrupt("user_id"))?,
                at: row.created_at,
                client: ClientInfo {
                    ip: payload
                        .client_ip
                        .as_deref()
                        .map(str::parse::<IpAddr>)
                        .transpose()
                        .map_err(|_| corrupt("client_ip"))?,
                    user_agent: payload.user_agent,
                },
                reason: payload.reason,
            },
            username: row.username.and_then(|u| Username::parse(&u).ok()),
        })
    }
}

/// A claimed batch: the open transaction holds its row locks.
struct PgClaim {
    tx: PgTransaction<'static>,
    events: Vec<PendingEvent>,
}

#[async_trait]
impl ClaimedEvents for PgClaim {
    fn events(&self) -> &[PendingEvent] {
        &self.events
    }

    async fn delivered(mut self: Box<Self>, at: OffsetDateTime) -> Result<(), Error> {
        let ids: Vec<Uuid> = self.events.iter().map(|p| p.event.id).collect();
        sqlx::query("UPDATE outbox SET delivered_at = $1 WHERE id = ANY($2)")
            .bind(at)
            .bind(&ids)
            .execute(&mut *self.tx)
            .await
            .map_err(|e| classify("marking outbox events delivered", e))?;
        self.tx
            .commit()
            .await
            .map_err(|e| classify("committing delivered outbox events", e))
    }

    async fn settle(
        mut self: Box<Self>,
        delivered: &[Uuid],
        refused: &[(Uuid, String)],
        at: OffsetDateTime,
        max_attempts: u32,
    ) -> Result<u64, Error> {
        if !delivered.is_empty() {
            sqlx::query("UPDATE outbox SET delivered_at = $1 WHERE id = ANY($2)")
                .bind(at)
                .bind(delivered)
                .execute(&mut *self.tx)
                .await
                .map_err(|e| classify("marking outbox events delivered", e))?;
        }
        let (ids, reasons): (Vec<Uuid>, Vec<String>) = refused.iter().cloned().unzip();
        let quarantined: i64 = sqlx::query_scalar(
            "WITH counted AS ( \
                 UPDATE outbox o SET attempts = o.attempts + 1, \
                   quarantined_at = CASE WHEN o.attempts + 1 >= $3 THEN now() END, \
                   quarantine_reason = CASE WHEN o.attempts + 1 >= $3 THEN r.reason END \
                 FROM unnest($1::uuid[], $2::text[]) AS r(id, reason) \
                 WHERE o.id = r.id \
                 RETURNING o.quarantined_at) \
             SELECT count(*) FILTER (WHERE quarantined_at IS NOT NULL) FROM counted",
        )
        .bind(&ids)
        .bind(&reasons)
        .bind(i64::from(max_attempts))
        .fetch_one(&mut *self.tx)
        .await
        .map_err(|e| classify("counting refused outbox events", e))?;
        self.tx
            .commit()
            .await
            .map_err(|e| classify("committing settled outbox events", e))?;
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
                .map_err(|e| classify("claiming outbox events", e))?;
            // `outbox_pending` holds exactly the pending rows, in this order.
            let rows: Vec<OutboxRow> = sqlx::query_as(
                "SELECT o.id, o.session_id, o.user_id, o.kind, o.payload, o.created_at, u.username \
                 FROM outbox o LEFT JOIN users u ON u.id = o.user_id \
                 WHERE o.delivered_at IS NULL AND o.quarantined_at IS NULL \
                 ORDER BY o.created_at, o.id LIMIT $1 \
                 FOR UPDATE OF o SKIP LOCKED",
            )
            .bind(i64::from(limit))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| classify("claiming outbox events", e))?;
            let mut events = Vec::with_capacity(rows.len());
            let mut unreadable = Vec::new();
            for row in rows {
                let id = row.id;
                match PendingEvent::try_from(row) {
                    Ok(event) => events.push(event),
                    Err(e) => unreadable.push((id, e)),
                }
            }
            if unreadable.is_empty() {
                return Ok(Box::new(PgClaim { tx, events }));
            }
            for (id, why) in &unreadable {
                sqlx::query(
                    "UPDATE outbox SET quarantined_at = now(), quarantine_reason = $2 WHERE id = $1",
                )
                .bind(id)
                .bind(why.to_string())
                .execute(&mut *tx)
                .await
                .map_err(|e| classify("quarantining an unreadable outbox event", e))?;
                tracing::error!(event = %id, reason = %why, "an unreadable outbox event was quarantined; fix the row, then `hub outbox retry`");
            }
            tx.commit()
                .await
                .map_err(|e| classify("committing quarantined outbox events", e))?;
        }
    }

    async fn retry_quarantined(&self) -> Result<u64, Error> {
        Ok(sqlx::query(
            "UPDATE outbox SET quarantined_at = NULL, quarantine_reason = NULL, attempts = 0 \
             WHERE quarantined_at IS NOT NULL AND delivered_at IS NULL",
        )
        .execute(&self.pool)
        .await
        .map_err(|e| classify("putting quarantined outbox events back", e))?
        .rows_affected())
    }

    async fn backlog(&self) -> Result<Backlog, Error> {
        let (pending, oldest, quarantined): (i64, Option<OffsetDateTime>, i64) = sqlx::query_as(
            "SELECT count(*) FILTER (WHERE quarantined_at IS NULL), \
             min(created_at) FILTER (WHERE quarantined_at IS NULL), \
             count(*) FILTER (WHERE quarantined_at IS NOT NULL) \
             FROM outbox WHERE delivered_at IS NULL",
        )
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("measuring the outbox backlog", e))?;
        Ok(Backlog {
            pending: u64::try_from(pending).unwrap_or(0),
            oldest,
            quarantined: u64::try_from(quarantined).unwrap_or(0),
        })
    }

    async fn prune(&self, before: OffsetDateTime) -> Result<u64, Error> {
        Ok(sqlx::query("DELETE FROM outbox WHERE delivered_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await
            .map_err(|e| classify("pruning delivered outbox events", e))?
            .rows_affected())
    }
}
