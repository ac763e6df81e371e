//! Reset links and address verifications in PostgreSQL
//! (`password_resets`, `email_verifications`), each written with the event
//! the mailer sends from.

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserChange, UserEvent};
use hub_core::recovery::{LINK_LIFETIME, RESET_WINDOW, RESETS_PER_WINDOW, RecoveryStore};
use hub_core::{ClientInfo, Email, Error, UserId};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// Reset links and verifications in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgRecoveryStore {
    pool: PgPool,
}

impl PgRecoveryStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Writes `change` of `user` to the log, in a transaction of its own
    /// after `first` ran in it.
    async fn with_event(
        &self,
        what: &'static str,
        user: UserId,
        at: OffsetDateTime,
        change: UserChange,
        first: impl for<'t> FnOnce(
            &'t mut sqlx::PgConnection,
        )
            -> futures_util::future::BoxFuture<'t, Result<bool, sqlx::Error>>,
    ) -> Result<bool, Error> {
        let mut tx = self.pool.begin().await.map_err(|e| classify(what, e))?;
        if !first(&mut tx).await.map_err(|e| classify(what, e))? {
            return Ok(false);
        }
        let event: DomainEvent = UserEvent::new(Some(user), at, change).into();
        super::events::insert(&mut tx, &[event]).await?;
        tx.commit().await.map_err(|e| classify(what, e))?;
        Ok(true)
    }
}

fn duration(d: std::time::Duration) -> time::Duration {
    time::Duration::try_from(d).unwrap_or(time::Duration::MINUTE)
}

#[async_trait]
impl RecoveryStore for PgRecoveryStore {
    async fn create_reset(
        &self,
        user: UserId,
        id: Uuid,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<bool, Error> {
        let expires = at + duration(LINK_LIFETIME);
        let since = at - duration(RESET_WINDOW);
        self.with_event(
            "making a reset link",
            user,
            at,
            UserChange::PasswordResetRequested { reset_id: id },
            move |tx| {
                Box::pin(async move {
                    // The user's row locked first: two requests at once count
                    // each other.
                    sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
                        .bind(user.as_uuid())
                        .execute(&mut *tx)
                        .await?;
                    let recent: i64 = sqlx::query_scalar(
                        "SELECT count(*) FROM password_resets WHERE user_id = $1 AND created_at > $2",
                    )
                    .bind(user.as_uuid())
                    .bind(since)
                    .fetch_one(&mut *tx)
                    .await?;
                    if recent >= RESETS_PER_WINDOW {
                        return Ok(false);
                    }
                    // Spent and expired links of the user go.
                    sqlx::query(
                        "DELETE FROM password_resets WHERE user_id = $1 AND expires_at <= $2",
                    )
                    .bind(user.as_uuid())
                    .bind(since)
                    .execute(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO password_resets (id, user_id, secret_hash, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5)",
                    )
                    .bind(id)
                    .bind(user.as_uuid())
                    .bind(&secret_hash[..])
                    .bind(at)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await?;
                    Ok(true)
                })
            },
        )
        .await
    }

    async fn reset_user(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<UserId>, Error> {
        let user: Option<Uuid> = sqlx::query_scalar(
            "SELECT user_id FROM password_resets \
             WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > $2",
        )
        .bind(&secret_hash[..])
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a reset link", e))?;
        user.map(UserId::try_from).transpose()
    }

    async fn take_reset(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<UserId>, Error> {
        let user: Option<Uuid> = sqlx::query_scalar(
            "UPDATE password_resets SET used_at = $2 \
             WHERE secret_hash = $1 AND used_at IS NULL AND expires_at > $2 RETURNING user_id",
        )
        .bind(&secret_hash[..])
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("using a reset link", e))?;
        user.map(UserId::try_from).transpose()
    }

    async fn create_verification(
        &self,
        user: UserId,
        id: Uuid,
        email: &Email,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        let expires = at + duration(LINK_LIFETIME);
        let address = email.as_str().to_owned();
        self.with_event(
            "making a verification link",
            user,
            at,
            UserChange::EmailVerificationRequested {
                verification_id: id,
                email: address.clone(),
            },
            move |tx| {
                Box::pin(async move {
                    sqlx::query(
                        "INSERT INTO email_verifications \
                         (id, user_id, email, secret_hash, created_at, expires_at) \
                         VALUES ($1, $2, $3, $4, $5, $6) \
                         ON CONFLICT (user_id) DO UPDATE SET id = EXCLUDED.id, email = EXCLUDED.email, \
                           secret_hash = EXCLUDED.secret_hash, created_at = EXCLUDED.created_at, \
                           expires_at = EXCLUDED.expires_at",
                    )
                    .bind(id)
                    .bind(user.as_uuid())
                    .bind(&address)
                    .bind(&secret_hash[..])
                    .bind(at)
                    .bind(expires)
                    .execute(&mut *tx)
                    .await?;
                    Ok(true)
                })
            },
        )
        .await?;
        Ok(())
    }

    async fn take_verification(
        &self,
        secret_hash: [u8; 32],
        at: OffsetDateTime,
    ) -> Result<Option<(UserId, String)>, Error> {
        let row: Option<(Uuid, String)> = sqlx::query_as(
            "DELETE FROM email_verifications WHERE secret_hash = $1 AND expires_at > $2 \
             RETURNING user_id, email",
        )
        .bind(&secret_hash[..])
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("using a verification link", e))?;
        row.map(|(user, email)| Ok((UserId::try_from(user)?, email)))
            .transpose()
    }

    async fn new_device(
        &self,
        user: UserId,
        client: &ClientInfo,
        at: OffsetDateTime,
    ) -> Result<(), Error> {
        let change = UserChange::NewDevice {
            client_ip: client.ip.map(|ip| ip.to_string()),
            user_agent: client.user_agent.clone(),
        };
        let since = at - time::Duration::HOUR;
        self.with_event("noting a new device", user, at, change, move |tx| {
            Box::pin(async move {
                // One notice an hour per user at most.
                let noted = sqlx::query(
                    "INSERT INTO device_notices (user_id, last_at) VALUES ($1, $2) \
                     ON CONFLICT (user_id) DO UPDATE SET last_at = EXCLUDED.last_at \
                     WHERE device_notices.last_at <= $3",
                )
                .bind(user.as_uuid())
                .bind(at)
                .bind(since)
                .execute(&mut *tx)
                .await?;
                Ok(noted.rows_affected() == 1)
            })
        })
        .await?;
        Ok(())
    }
}
