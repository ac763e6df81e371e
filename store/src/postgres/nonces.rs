//! WS-Security nonces seen (`wsse_nonces`): hub-core's [`ReplayGuard`] in
//! PostgreSQL, shared by every instance.
//!
//! A key is recorded with the end of its window. A second record of it is
//! refused while the first has not expired, and takes its place once it
//! has. Expired rows are deleted at most once a minute per process, by
//! whichever call comes first after that minute, in the background of it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{Error, ReplayGuard};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use super::classify;

/// How often expired nonces are deleted.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Nonces in PostgreSQL.
#[derive(Debug)]
pub struct PgReplayGuard {
    pool: PgPool,
    last_prune: Mutex<Option<Instant>>,
}

impl PgReplayGuard {
    pub fn new(pool: PgPool) -> Self {
        Self {
            pool,
            last_prune: Mutex::new(None),
        }
    }

    /// Deletes expired nonces in the background, at most once a minute.
    fn prune_now_and_then(&self) {
        {
            let mut last = match self.last_prune.lock() {
                Ok(last) => last,
                Err(poisoned) => poisoned.into_inner(),
            };
            if last.is_some_and(|at| at.elapsed() < PRUNE_EVERY) {
                return;
            }
            *last = Some(Instant::now());
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            match sqlx::query("DELETE FROM wsse_nonces WHERE expires_at < now()")
                .execute(&pool)
                .await
            {
                Ok(done) if done.rows_affected() > 0 => {
                    tracing::debug!(
                        deleted = done.rows_affected(),
                        "expired WS-Security nonces deleted"
                    );
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "expired WS-Security nonces not deleted"),
            }
        });
    }
}

#[async_trait]
impl ReplayGuard for PgReplayGuard {
    async fn first_use(&self, key: [u8; 32], until: OffsetDateTime) -> Result<bool, Error> {
        self.prune_now_and_then();
        // Inserted, or taking the place of an expired record: first use.
        // A record still in its window stays, and no row comes back.
        let recorded: Option<i32> = sqlx::query_scalar(
            "INSERT INTO wsse_nonces (key, expires_at) VALUES ($1, $2) \
             ON CONFLICT (key) DO UPDATE SET expires_at = EXCLUDED.expires_at \
             WHERE wsse_nonces.expires_at < now() \
             RETURNING 1",
        )
        .bind(key.as_slice())
        .bind(until)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("recording a WS-Security nonce", e))?;
        Ok(recorded.is_some())
    }
}
