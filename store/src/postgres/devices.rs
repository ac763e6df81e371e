//! The devices each user has signed in from (`known_devices`): what makes a
//! device token count at login. Forgetting them is part of the session
//! transactions that revoke (`sessions.rs`), so this side only looks up and
//! remembers.

use async_trait::async_trait;
use hub_core::{Error, KnownDevices, SessionId, UserId};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;

use super::classify;

/// Known devices in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgKnownDevices {
    pool: PgPool,
}

impl PgKnownDevices {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl KnownDevices for PgKnownDevices {
    async fn is_known(&self, user: UserId, device: &str) -> Result<bool, Error> {
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM known_devices WHERE user_id = $1 AND device_id = $2")
                .bind(user.as_uuid())
                .bind(device)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| classify("looking up a known device", e))?;
        Ok(found.is_some())
    }

    async fn remember(
        &self,
        user: UserId,
        shown: Option<&str>,
        fresh: &str,
        session: SessionId,
        at: OffsetDateTime,
        keep: u32,
    ) -> Result<Option<String>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("remembering a device", e))?;
        // FOR SHARE on the session: a revocation (an UPDATE of that row,
        // which forgets the user's devices in its own transaction) either
        // committed first, and the session is found closed here, or waits
        // for this to commit and then deletes what it wrote.
        let open: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 AND revoked_at IS NULL \
             FOR SHARE",
        )
        .bind(session.as_uuid())
        .bind(user.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("remembering a device", e))?;
        if open.is_none() {
            return Ok(None); // rolled back on drop
        }
        // The device shown keeps its id only while it is still remembered:
        // once forgotten, an id is never brought back, so the tokens that
        // carried it stay dead.
        let mut device = None;
        if let Some(shown) = shown {
            let refreshed = sqlx::query(
                "UPDATE known_devices SET last_used_at = $3 \
                 WHERE user_id = $1 AND device_id = $2",
            )
            .bind(user.as_uuid())
            .bind(shown)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("remembering a device", e))?;
            if refreshed.rows_affected() > 0 {
                device = Some(shown);
            }
        }
        let device = match device {
            Some(device) => device,
            None => {
                sqlx::query(
                    "INSERT INTO known_devices (user_id, device_id, created_at, last_used_at) \
                     VALUES ($1, $2, $3, $3)",
                )
                .bind(user.as_uuid())
                .bind(fresh)
                .bind(at)
                .execute(&mut *tx)
                .await
                .map_err(|e| classify("remembering a device", e))?;
                fresh
            }
        };
        // The cap: the least recently used beyond `keep` are forgotten.
        sqlx::query(
            "DELETE FROM known_devices WHERE user_id = $1 AND device_id NOT IN \
             (SELECT device_id FROM known_devices WHERE user_id = $1 \
              ORDER BY last_used_at DESC, device_id LIMIT $2)",
        )
        .bind(user.as_uuid())
        .bind(i64::from(keep.max(1)))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("forgetting a user's oldest devices", e))?;
        tx.commit()
            .await
            .map_err(|e| classify("remembering a device", e))?;
        Ok(Some(device.to_owned()))
    }
}
