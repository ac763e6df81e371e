//! Second factors in PostgreSQL (`user_totp`, `recovery_codes`,
//! `mfa_tickets`, `mfa_failures`): each change with its
//! `user.factors_changed` event, in one transaction.

use std::time::Duration;

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserChange, UserEvent};
use hub_core::factors::{
    FAILURE_BUDGET, FAILURE_WINDOW, FactorChange, FactorStore, FactorSummary, TICKET_ATTEMPTS,
    TicketRecord,
};
use hub_core::{Error, PasswordHash, SessionId, UserId};
use sqlx::postgres::{PgPool, PgTransaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::sessions::{forget_devices, forget_links, revoke_sessions_of, revoked_with_events};

/// Live tickets kept per user: a sign-in past the password makes one, so a
/// client that knows the password cannot pile them up.
const TICKETS_PER_USER: i64 = 10;

/// Second factors in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgFactorStore {
    pool: PgPool,
}

impl PgFactorStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn begin(&self, what: &'static str) -> Result<PgTransaction<'static>, Error> {
        self.pool.begin().await.map_err(|e| classify(what, e))
    }
}

pub(super) fn event(
    user: UserId,
    at: OffsetDateTime,
    change: FactorChange,
    by: Option<UserId>,
) -> DomainEvent {
    UserEvent::new(
        Some(user),
        at,
        UserChange::FactorsChanged {
            change: change.as_str().to_owned(),
            by,
        },
    )
    .into()
}

fn window() -> time::Duration {
    time::Duration::try_from(FAILURE_WINDOW).unwrap_or(time::Duration::MINUTE)
}

#[async_trait]
impl FactorStore for PgFactorStore {
    async fn summary(&self, user: UserId) -> Result<FactorSummary, Error> {
        let (totp, left, passkeys): (bool, i64, i64) = sqlx::query_as(
            "SELECT EXISTS (SELECT 1 FROM user_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL), \
                    (SELECT count(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL), \
                    (SELECT count(*) FROM passkeys WHERE user_id = $1)",
        )
        .bind(user.as_uuid())
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("reading a user's factors", e))?;
        Ok(FactorSummary {
            totp,
            passkeys: u32::try_from(passkeys).unwrap_or(u32::MAX),
            recovery_codes_left: u32::try_from(left).unwrap_or(u32::MAX),
        })
    }

    async fn set_pending_totp(&self, user: UserId, secret: &[u8]) -> Result<(), Error> {
        sqlx::query(
            "INSERT INTO user_totp (user_id, secret, created_at) VALUES ($1, $2, now()) \
             ON CONFLICT (user_id) DO UPDATE SET secret = EXCLUDED.secret, created_at = now() \
             WHERE user_totp.confirmed_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(secret)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("keeping an authenticator's secret", e))?;
        Ok(())
    }

    async fn pending_totp(&self, user: UserId) -> Result<Option<Vec<u8>>, Error> {
        sqlx::query_scalar(
            "SELECT secret FROM user_totp WHERE user_id = $1 AND confirmed_at IS NULL \
             AND created_at > now() - interval '10 minutes'",
        )
        .bind(user.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading an authenticator being set up", e))
    }

    async fn confirm_totp(
        &self,
        user: UserId,
        step: i64,
        at: OffsetDateTime,
        keep_session: Option<SessionId>,
    ) -> Result<bool, Error> {
        let mut tx = self.begin("adding an authenticator").await?;
        // The user's row first, as every revocation locks it first.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("adding an authenticator", e))?;
        let confirmed = sqlx::query(
            "UPDATE user_totp SET confirmed_at = $2, last_step = $3 \
             WHERE user_id = $1 AND confirmed_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(at)
        .bind(step)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("adding an authenticator", e))?
        .rows_affected()
            == 1;
        if !confirmed {
            return Ok(false);
        }
        // Whoever else holds a session signed in without this factor: a
        // signed-in user's other sessions end (a ticket's sign-in has none
        // to keep, and ends every other).
        let rows = revoke_sessions_of(&mut tx, user, keep_session, at).await?;
        revoked_with_events(
            tx,
            vec![event(user, at, FactorChange::TotpAdded, None)],
            rows,
            at,
            "second factor added",
        )
        .await?;
        Ok(true)
    }

    async fn totp_secret(&self, user: UserId) -> Result<Option<Vec<u8>>, Error> {
        sqlx::query_scalar(
            "SELECT secret FROM user_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL",
        )
        .bind(user.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading an authenticator", e))
    }

    async fn use_totp_step(&self, user: UserId, step: i64) -> Result<bool, Error> {
        let taken = sqlx::query(
            "UPDATE user_totp SET last_step = $2 \
             WHERE user_id = $1 AND confirmed_at IS NOT NULL AND last_step < $2",
        )
        .bind(user.as_uuid())
        .bind(step)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("taking a TOTP code", e))?;
        Ok(taken.rows_affected() == 1)
    }

    async fn remove_totp(&self, user: UserId, at: OffsetDateTime) -> Result<bool, Error> {
        let mut tx = self.begin("removing an authenticator").await?;
        let removed = sqlx::query("DELETE FROM user_totp WHERE user_id = $1")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("removing an authenticator", e))?
            .rows_affected()
            == 1;
        // Recovery codes stand in for a factor: they go with the last one.
        sqlx::query(
            "DELETE FROM recovery_codes WHERE user_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1)",
        )
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("removing recovery codes", e))?;
        if removed {
            super::events::insert(&mut tx, &[event(user, at, FactorChange::TotpRemoved, None)])
                .await?;
        }
        tx.commit()
            .await
            .map_err(|e| classify("removing an authenticator", e))?;
        Ok(removed)
    }

    async fn replace_recovery_codes(
        &self,
        user: UserId,
        hashes: &[[u8; 32]],
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        let mut tx = self.begin("replacing recovery codes").await?;
        sqlx::query("DELETE FROM recovery_codes WHERE user_id = $1")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("replacing recovery codes", e))?;
        let hashes: Vec<Vec<u8>> = hashes.iter().map(|h| h.to_vec()).collect();
        sqlx::query(
            "INSERT INTO recovery_codes (user_id, code_hash, created_at) \
             SELECT $1, h, $3 FROM unnest($2::bytea[]) AS h",
        )
        .bind(user.as_uuid())
        .bind(&hashes)
        .bind(at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("replacing recovery codes", e))?;
        super::events::insert(
            &mut tx,
            &[event(user, at, FactorChange::RecoveryCodesReplaced, None)],
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| classify("replacing recovery codes", e))
    }

    async fn use_recovery_code(
        &self,
        user: UserId,
        hash: &[u8; 32],
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let used = sqlx::query(
            "UPDATE recovery_codes SET used_at = $3 \
             WHERE user_id = $1 AND code_hash = $2 AND used_at IS NULL",
        )
        .bind(user.as_uuid())
        .bind(&hash[..])
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("taking a recovery code", e))?;
        Ok(used.rows_affected() == 1)
    }

    async fn reset(&self, user: UserId, by: UserId, at: OffsetDateTime) -> Result<bool, Error> {
        let mut tx = self.begin("resetting a user's factors").await?;
        let exists: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
                .bind(user.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify("resetting a user's factors", e))?;
        if exists.is_none() {
            return Ok(false);
        }
        for table in [
            "DELETE FROM user_totp WHERE user_id = $1",
            "DELETE FROM recovery_codes WHERE user_id = $1",
            "DELETE FROM passkeys WHERE user_id = $1",
            "DELETE FROM webauthn_ceremonies WHERE user_id = $1",
            "DELETE FROM mfa_tickets WHERE user_id = $1",
            "DELETE FROM mfa_failures WHERE user_id = $1",
        ] {
            sqlx::query(table)
                .bind(user.as_uuid())
                .execute(&mut *tx)
                .await
                .map_err(|e| classify("resetting a user's factors", e))?;
        }
        let rows = revoke_sessions_of(&mut tx, user, None, at).await?;
        forget_devices(&mut tx, user).await?;
        forget_links(&mut tx, user).await?;
        revoked_with_events(
            tx,
            vec![event(user, at, FactorChange::Reset, Some(by))],
            rows,
            at,
            "second factors reset by an admin",
        )
        .await?;
        Ok(true)
    }

    async fn reserve_attempt(
        &self,
        user: UserId,
        at: OffsetDateTime,
    ) -> Result<Option<Duration>, Error> {
        // One statement: a new window, or one more attempt in this one
        // while it has room; nothing when it has none.
        let taken: Option<i32> = sqlx::query_scalar(
            "INSERT INTO mfa_failures (user_id, window_start, failures) VALUES ($1, $2, 1) \
             ON CONFLICT (user_id) DO UPDATE SET \
               window_start = CASE WHEN mfa_failures.window_start <= $3 \
                              THEN EXCLUDED.window_start ELSE mfa_failures.window_start END, \
               failures = CASE WHEN mfa_failures.window_start <= $3 \
                          THEN 1 ELSE mfa_failures.failures + 1 END \
             WHERE mfa_failures.window_start <= $3 OR mfa_failures.failures < $4 \
             RETURNING failures",
        )
        .bind(user.as_uuid())
        .bind(at)
        .bind(at - window())
        .bind(FAILURE_BUDGET)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("taking a second-factor attempt", e))?;
        if taken.is_some() {
            return Ok(None);
        }
        let start: Option<OffsetDateTime> =
            sqlx::query_scalar("SELECT window_start FROM mfa_failures WHERE user_id = $1")
                .bind(user.as_uuid())
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| classify("reading a second-factor budget", e))?;
        let left = start.map_or(1, |start| (start + window() - at).whole_seconds().max(1));
        Ok(Some(Duration::from_secs(u64::try_from(left).unwrap_or(1))))
    }

    async fn release_attempt(&self, user: UserId) -> Result<(), Error> {
        sqlx::query(
            "UPDATE mfa_failures SET failures = greatest(failures - 1, 0) WHERE user_id = $1",
        )
        .bind(user.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(|e| classify("giving back a second-factor attempt", e))?;
        Ok(())
    }

    async fn insert_ticket(&self, ticket: &TicketRecord) -> Result<(), Error> {
        let now = OffsetDateTime::now_utc();
        let mut tx = self.begin("keeping a sign-in ticket").await?;
        // The user's spent tickets go, and the oldest past the cap.
        sqlx::query(
            "DELETE FROM mfa_tickets WHERE user_id = $1 AND (expires_at <= $2 OR ticket_hash IN \
               (SELECT ticket_hash FROM mfa_tickets WHERE user_id = $1 \
                ORDER BY created_at DESC OFFSET $3))",
        )
        .bind(ticket.user_id.as_uuid())
        .bind(now)
        .bind(TICKETS_PER_USER - 1)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("keeping a sign-in ticket", e))?;
        sqlx::query(
            "INSERT INTO mfa_tickets \
             (ticket_hash, user_id, credential, enrol, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&ticket.hash[..])
        .bind(ticket.user_id.as_uuid())
        .bind(ticket.credential.as_str())
        .bind(ticket.enrol)
        .bind(now)
        .bind(ticket.expires_at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("keeping a sign-in ticket", e))?;
        tx.commit()
            .await
            .map_err(|e| classify("keeping a sign-in ticket", e))
    }

    async fn ticket(
        &self,
        hash: &[u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<TicketRecord>, Error> {
        let row: Option<(Uuid, String, bool, OffsetDateTime)> = sqlx::query_as(
            "SELECT user_id, credential, enrol, expires_at FROM mfa_tickets \
             WHERE ticket_hash = $1 AND expires_at > $2 AND failures < $3",
        )
        .bind(&hash[..])
        .bind(at)
        .bind(TICKET_ATTEMPTS)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a sign-in ticket", e))?;
        let Some((user_id, credential, enrol, expires_at)) = row else {
            return Ok(None);
        };
        Ok(Some(TicketRecord {
            hash: *hash,
            user_id: UserId::try_from(user_id)?,
            credential: PasswordHash::parse(&credential)?,
            enrol,
            expires_at,
        }))
    }

    async fn try_ticket(&self, hash: &[u8; 32], at: OffsetDateTime) -> Result<bool, Error> {
        let tried = sqlx::query(
            "UPDATE mfa_tickets SET failures = failures + 1 \
             WHERE ticket_hash = $1 AND expires_at > $2 AND failures < $3",
        )
        .bind(&hash[..])
        .bind(at)
        .bind(TICKET_ATTEMPTS)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("trying a sign-in ticket", e))?;
        Ok(tried.rows_affected() == 1)
    }

    async fn take_ticket(&self, hash: &[u8; 32], at: OffsetDateTime) -> Result<bool, Error> {
        let taken = sqlx::query(
            "DELETE FROM mfa_tickets WHERE ticket_hash = $1 AND expires_at > $2 AND failures <= $3",
        )
        .bind(&hash[..])
        .bind(at)
        .bind(TICKET_ATTEMPTS)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("using a sign-in ticket", e))?;
        Ok(taken.rows_affected() == 1)
    }
}
