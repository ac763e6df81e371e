//! OAuth clients (`oauth_clients`) and revoked client-credentials tokens
//! (`oauth_revoked_tokens`): hub-core's [`OAuthClients`] in PostgreSQL.

use async_trait::async_trait;
use hub_core::oauth::{
    ClientId, GrantType, IdTokenAlg, OAuthClient, OAuthClients, Scopes, SecretDigest,
};
use hub_core::{Error, ErrorCode, SessionId};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// Clients in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgOAuthClients {
    pool: PgPool,
}

impl PgOAuthClients {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
struct ClientRow {
    id: String,
    name: String,
    secret_sha256: Option<Vec<u8>>,
    redirect_uris: Vec<String>,
    post_logout_redirect_uris: Vec<String>,
    first_party: bool,
    grant_types: Vec<String>,
    scopes: Vec<String>,
    id_token_alg: String,
    created_at: OffsetDateTime,
    secret_rotated_at: Option<OffsetDateTime>,
}

impl ClientRow {
    fn client(self) -> Result<OAuthClient, Error> {
        let corrupt =
            |what: &str| Error::internal(format!("oauth_clients row {}: {what}", self.id));
        let secret = match &self.secret_sha256 {
            Some(bytes) => {
                Some(SecretDigest::from_bytes(bytes).ok_or_else(|| corrupt("bad secret digest"))?)
            }
            None => None,
        };
        let grant_types = self
            .grant_types
            .iter()
            .map(|g| GrantType::parse(g).ok_or_else(|| corrupt("unknown grant type")))
            .collect::<Result<Vec<_>, _>>()?;
        let scopes = Scopes::from_list(&self.scopes).map_err(|_| corrupt("unknown scope"))?;
        Ok(OAuthClient {
            id: ClientId::parse(&self.id).map_err(|_| corrupt("bad id"))?,
            name: self.name,
            secret,
            redirect_uris: self.redirect_uris,
            post_logout_redirect_uris: self.post_logout_redirect_uris,
            first_party: self.first_party,
            grant_types,
            scopes,
            id_token_alg: IdTokenAlg::parse(&self.id_token_alg)
                .ok_or_else(|| corrupt("unknown ID token algorithm"))?,
            created_at: self.created_at,
            secret_rotated_at: self.secret_rotated_at,
        })
    }
}

/// The columns a [`ClientRow`] takes.
macro_rules! columns {
    () => {
        "id, name, secret_sha256, redirect_uris, post_logout_redirect_uris, \
         first_party, grant_types, scopes, id_token_alg, created_at, secret_rotated_at"
    };
}

#[async_trait]
impl OAuthClients for PgOAuthClients {
    async fn create(&self, client: &OAuthClient) -> Result<(), Error> {
        let grants: Vec<&str> = client.grant_types.iter().map(|g| g.as_str()).collect();
        let scopes: Vec<&str> = client.scopes.iter().collect();
        sqlx::query(
            "INSERT INTO oauth_clients (id, name, secret_sha256, redirect_uris, \
             post_logout_redirect_uris, first_party, grant_types, scopes, id_token_alg, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(client.id.as_str())
        .bind(&client.name)
        .bind(client.secret.as_ref().map(|d| d.as_bytes().as_slice()))
        .bind(&client.redirect_uris)
        .bind(&client.post_logout_redirect_uris)
        .bind(client.first_party)
        .bind(&grants)
        .bind(&scopes)
        .bind(client.id_token_alg.as_str())
        .bind(client.created_at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("registering an OAuth client", e))?;
        Ok(())
    }

    async fn get(&self, id: &ClientId) -> Result<Option<OAuthClient>, Error> {
        sqlx::query_as::<_, ClientRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM oauth_clients WHERE id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading an OAuth client", e))?
        .map(ClientRow::client)
        .transpose()
    }

    async fn list(&self) -> Result<Vec<OAuthClient>, Error> {
        sqlx::query_as::<_, ClientRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM oauth_clients ORDER BY created_at, id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing OAuth clients", e))?
        .into_iter()
        .map(ClientRow::client)
        .collect()
    }

    async fn delete(&self, id: &ClientId) -> Result<bool, Error> {
        let gone = sqlx::query("DELETE FROM oauth_clients WHERE id = $1")
            .bind(id.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| classify("deleting an OAuth client", e))?
            .rows_affected();
        Ok(gone > 0)
    }

    async fn set_secret(
        &self,
        id: &ClientId,
        secret: &SecretDigest,
        now: OffsetDateTime,
    ) -> Result<bool, Error> {
        let changed = sqlx::query(
            "UPDATE oauth_clients SET secret_sha256 = $2, secret_rotated_at = $3 \
             WHERE id = $1 AND secret_sha256 IS NOT NULL",
        )
        .bind(id.as_str())
        .bind(secret.as_bytes().as_slice())
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("rotating an OAuth client's secret", e))?
        .rows_affected();
        Ok(changed > 0)
    }

    async fn revoke_token(
        &self,
        client: &ClientId,
        jti: Uuid,
        expires_at: OffsetDateTime,
    ) -> Result<(), Error> {
        // The expired rows go in the same statement, so the table holds
        // only tokens that would still verify.
        sqlx::query(
            "WITH expired AS (DELETE FROM oauth_revoked_tokens WHERE expires_at < now()) \
             INSERT INTO oauth_revoked_tokens (jti, client_id, expires_at) \
             VALUES ($1, $2, $3) ON CONFLICT (jti) DO NOTHING",
        )
        .bind(jti)
        .bind(client.as_str())
        .bind(expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| match e {
            // The client was deleted meanwhile: its tokens are dead anyway.
            sqlx::Error::Database(db) if db.code().as_deref() == Some("23503") => {
                Error::with_message(ErrorCode::InvalidToken, "the token's client is gone")
            }
            e => classify("revoking an access token", e),
        })?;
        Ok(())
    }

    async fn grant_sessions(&self, client: &ClientId) -> Result<Vec<SessionId>, Error> {
        let rows: Vec<(Uuid,)> =
            sqlx::query_as("SELECT session_id FROM oauth_grants WHERE client_id = $1")
                .bind(client.as_str())
                .fetch_all(&self.pool)
                .await
                .map_err(|e| classify("reading a client's grants", e))?;
        rows.into_iter()
            .map(|(id,)| {
                SessionId::try_from(id)
                    .map_err(|_| Error::internal("oauth_grants holds a bad session id"))
            })
            .collect()
    }

    async fn token_active(
        &self,
        client: &ClientId,
        jti: Uuid,
        issued_at: OffsetDateTime,
    ) -> Result<bool, Error> {
        sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM oauth_clients WHERE id = $1 \
               AND (secret_rotated_at IS NULL OR secret_rotated_at <= $3)) \
             AND NOT EXISTS (SELECT 1 FROM oauth_revoked_tokens WHERE jti = $2)",
        )
        .bind(client.as_str())
        .bind(jti)
        .bind(issued_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("checking an access token", e))
    }
}
