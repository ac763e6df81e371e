//! Passkeys and WebAuthn ceremonies in PostgreSQL (`passkeys`,
//! `webauthn_ceremonies`).

use async_trait::async_trait;
use hub_core::factors::FactorChange;
use hub_core::passkeys::{
    CeremonyKind, CeremonyRecord, PASSKEYS_PER_USER, PasskeyStore, PasskeySummary, StoredPasskey,
};
use hub_core::{Error, SessionId, UserId};
use serde_json::Value;
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::factors::event;
use super::sessions::{revoke_sessions_of, revoked_with_events};

/// Passkeys in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgPasskeyStore {
    pool: PgPool,
}

impl PgPasskeyStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct PasskeyRow {
    id: Uuid,
    user_id: Uuid,
    name: String,
    credential: Json<Value>,
    created_at: OffsetDateTime,
    last_used_at: Option<OffsetDateTime>,
}

impl TryFrom<PasskeyRow> for StoredPasskey {
    type Error = Error;

    fn try_from(row: PasskeyRow) -> Result<Self, Error> {
        Ok(StoredPasskey {
            summary: PasskeySummary {
                id: row.id,
                name: row.name,
                created_at: row.created_at,
                last_used_at: row.last_used_at,
            },
            user_id: UserId::try_from(row.user_id)?,
            credential: row.credential.0,
        })
    }
}

/// The columns every passkey query returns.
macro_rules! columns {
    () => {
        "id, user_id, name, credential, created_at, last_used_at"
    };
}

#[async_trait]
impl PasskeyStore for PgPasskeyStore {
    async fn list(&self, user: UserId) -> Result<Vec<StoredPasskey>, Error> {
        let rows: Vec<PasskeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM passkeys WHERE user_id = $1 ORDER BY created_at"
        ))
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing passkeys", e))?;
        rows.into_iter().map(StoredPasskey::try_from).collect()
    }

    async fn add(
        &self,
        user: UserId,
        summary: &PasskeySummary,
        credential_id: &[u8],
        credential: &Value,
        keep: Option<SessionId>,
    ) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("adding a passkey", e))?;
        // The user's row first: two registrations at once count each other.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("adding a passkey", e))?;
        let added = sqlx::query(
            "INSERT INTO passkeys (id, user_id, credential_id, name, credential, created_at) \
             SELECT $1, $2, $3, $4, $5, $6 \
             WHERE (SELECT count(*) FROM passkeys WHERE user_id = $2) < $7 \
             ON CONFLICT (credential_id) DO NOTHING",
        )
        .bind(summary.id)
        .bind(user.as_uuid())
        .bind(credential_id)
        .bind(&summary.name)
        .bind(Json(credential))
        .bind(summary.created_at)
        .bind(i64::try_from(PASSKEYS_PER_USER).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("adding a passkey", e))?
        .rows_affected()
            == 1;
        if !added {
            return Ok(false);
        }
        // Whoever else holds a session signed in without it.
        let rows = revoke_sessions_of(&mut tx, user, keep, summary.created_at).await?;
        revoked_with_events(
            tx,
            vec![event(
                user,
                summary.created_at,
                FactorChange::PasskeyAdded,
                None,
            )],
            rows,
            summary.created_at,
            "second factor added",
        )
        .await?;
        Ok(true)
    }

    async fn by_credential_id(&self, credential_id: &[u8]) -> Result<Option<StoredPasskey>, Error> {
        let row: Option<PasskeyRow> = sqlx::query_as(concat!(
            "SELECT ",
            columns!(),
            " FROM passkeys WHERE credential_id = $1"
        ))
        .bind(credential_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("finding a passkey", e))?;
        row.map(StoredPasskey::try_from).transpose()
    }

    async fn used(&self, id: Uuid, credential: &Value, at: OffsetDateTime) -> Result<(), Error> {
        sqlx::query("UPDATE passkeys SET credential = $2, last_used_at = $3 WHERE id = $1")
            .bind(id)
            .bind(Json(credential))
            .bind(at)
            .execute(&self.pool)
            .await
            .map_err(|e| classify("keeping a passkey's use", e))?;
        Ok(())
    }

    async fn rename(&self, user: UserId, id: Uuid, name: &str) -> Result<bool, Error> {
        let renamed = sqlx::query("UPDATE passkeys SET name = $3 WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user.as_uuid())
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(|e| classify("renaming a passkey", e))?;
        Ok(renamed.rows_affected() == 1)
    }

    async fn remove(&self, user: UserId, id: Uuid, at: OffsetDateTime) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("removing a passkey", e))?;
        let removed = sqlx::query("DELETE FROM passkeys WHERE id = $1 AND user_id = $2")
            .bind(id)
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("removing a passkey", e))?
            .rows_affected()
            == 1;
        if !removed {
            return Ok(false);
        }
        // Recovery codes stand in for a factor: they go with the last one.
        sqlx::query(
            "DELETE FROM recovery_codes WHERE user_id = $1 \
             AND NOT EXISTS (SELECT 1 FROM passkeys WHERE user_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM user_totp WHERE user_id = $1 AND confirmed_at IS NOT NULL)",
        )
        .bind(user.as_uuid())
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("removing a passkey", e))?;
        super::events::insert(
            &mut tx,
            &[event(user, at, FactorChange::PasskeyRemoved, None)],
        )
        .await?;
        tx.commit()
            .await
            .map_err(|e| classify("removing a passkey", e))?;
        Ok(true)
    }

    async fn put_ceremony(&self, ceremony: &CeremonyRecord) -> Result<(), Error> {
        // Expired ceremonies go first (the index on expires_at finds them),
        // and a user's earlier one of the same kind: one at a time each, so
        // asking for options again and again keeps one row.
        sqlx::query(
            "DELETE FROM webauthn_ceremonies WHERE expires_at <= now() \
             OR (user_id = $1 AND kind = $2)",
        )
        .bind(ceremony.user_id.map(|u| u.as_uuid()))
        .bind(ceremony.kind.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| classify("keeping a WebAuthn ceremony", e))?;
        sqlx::query(
            "INSERT INTO webauthn_ceremonies (id, kind, user_id, state, expires_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(ceremony.id)
        .bind(ceremony.kind.as_str())
        .bind(ceremony.user_id.map(|u| u.as_uuid()))
        .bind(Json(&ceremony.state))
        .bind(ceremony.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("keeping a WebAuthn ceremony", e))?;
        Ok(())
    }

    async fn take_ceremony(
        &self,
        id: Uuid,
        kind: CeremonyKind,
        at: OffsetDateTime,
    ) -> Result<Option<CeremonyRecord>, Error> {
        let row: Option<(Option<Uuid>, Json<Value>, OffsetDateTime)> = sqlx::query_as(
            "DELETE FROM webauthn_ceremonies WHERE id = $1 AND kind = $2 AND expires_at > $3 \
             RETURNING user_id, state, expires_at",
        )
        .bind(id)
        .bind(kind.as_str())
        .bind(at)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("taking a WebAuthn ceremony", e))?;
        let Some((user, state, expires_at)) = row else {
            return Ok(None);
        };
        Ok(Some(CeremonyRecord {
            id,
            kind,
            user_id: user.map(UserId::try_from).transpose()?,
            state: state.0,
            expires_at,
        }))
    }
}
