//! The code flow's state in PostgreSQL: codes, grants, refresh tokens and
//! consents (hub-core's [`OidcStore`]).

use async_trait::async_trait;
use hub_core::oauth::{ClientId, OAuthClient, Scopes};
use hub_core::oidc::{Grant, OidcStore, Rotation, StoredCode, TakenCode};
use hub_core::{Error, SessionId, UserId};
use sqlx::postgres::PgPool;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

// A used code is remembered an hour (to revoke what it issued if it is
// presented again), a used refresh token a day (to recognise its reuse).

#[derive(Debug, Clone)]
pub struct PgOidcStore {
    pool: PgPool,
}

impl PgOidcStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn corrupt(what: &str) -> Error {
    Error::internal(format!("an OpenID Connect row is unreadable: {what}"))
}

fn scopes(list: &[String]) -> Result<Scopes, Error> {
    Scopes::from_list(list).map_err(|_| corrupt("unknown scope"))
}

fn scope_list(scopes: &Scopes) -> Vec<&'static str> {
    scopes.iter().collect()
}

#[derive(sqlx::FromRow)]
struct GrantRow {
    session_id: Uuid,
    client_id: String,
    user_id: Uuid,
    scopes: Vec<String>,
    auth_time: OffsetDateTime,
}

impl GrantRow {
    fn grant(self) -> Result<Grant, Error> {
        Ok(Grant {
            session_id: SessionId::try_from(self.session_id).map_err(|_| corrupt("session id"))?,
            client_id: ClientId::parse(&self.client_id).map_err(|_| corrupt("client id"))?,
            user_id: UserId::try_from(self.user_id).map_err(|_| corrupt("user id"))?,
            scopes: scopes(&self.scopes)?,
            auth_time: self.auth_time,
        })
    }
}

#[derive(sqlx::FromRow)]
struct CodeRow {
    client_id: String,
    user_id: Uuid,
    browser_session: Uuid,
    redirect_uri: String,
    scopes: Vec<String>,
    nonce: Option<String>,
    code_challenge: Option<String>,
    auth_time: OffsetDateTime,
    expires_at: OffsetDateTime,
    used_at: Option<OffsetDateTime>,
    grant_session: Option<Uuid>,
}

#[async_trait]
impl OidcStore for PgOidcStore {
    async fn save_code(&self, code: &StoredCode) -> Result<(), Error> {
        sqlx::query(
            "WITH gone AS (DELETE FROM oauth_codes WHERE expires_at < now() - interval '1 hour') \
             INSERT INTO oauth_codes (code_sha256, client_id, user_id, browser_session, redirect_uri, \
             scopes, nonce, code_challenge, auth_time, expires_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(code.digest.as_slice())
        .bind(code.client_id.as_str())
        .bind(code.user_id.as_uuid())
        .bind(code.browser_session.as_uuid())
        .bind(&code.redirect_uri)
        .bind(scope_list(&code.scopes))
        .bind(&code.nonce)
        .bind(&code.code_challenge)
        .bind(code.auth_time)
        .bind(code.expires_at)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("storing an authorization code", e))?;
        Ok(())
    }

    async fn take_code(
        &self,
        digest: &[u8; 32],
        client: &ClientId,
        now: OffsetDateTime,
    ) -> Result<TakenCode, Error> {
        // Reading what it was and marking it used, in one statement with
        // the row locked: of two exchanges at once, one finds it fresh.
        let row = sqlx::query_as::<_, CodeRow>(
            "WITH old AS (SELECT * FROM oauth_codes WHERE code_sha256 = $1 AND client_id = $3 FOR UPDATE), \
             mark AS (UPDATE oauth_codes c SET used_at = $2 FROM old \
                      WHERE c.code_sha256 = old.code_sha256 AND old.used_at IS NULL) \
             SELECT client_id, user_id, browser_session, redirect_uri, scopes, nonce, \
             code_challenge, auth_time, expires_at, used_at, grant_session FROM old",
        )
        .bind(digest.as_slice())
        .bind(now)
        .bind(client.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("taking an authorization code", e))?;
        let Some(row) = row else {
            return Ok(TakenCode::Missing);
        };
        if row.used_at.is_some() {
            let issued = row
                .grant_session
                .map(SessionId::try_from)
                .transpose()
                .map_err(|_| corrupt("grant session"))?;
            return Ok(TakenCode::Used(issued));
        }
        Ok(TakenCode::Fresh(StoredCode {
            digest: *digest,
            client_id: ClientId::parse(&row.client_id).map_err(|_| corrupt("client id"))?,
            user_id: UserId::try_from(row.user_id).map_err(|_| corrupt("user id"))?,
            browser_session: SessionId::try_from(row.browser_session)
                .map_err(|_| corrupt("browser session"))?,
            redirect_uri: row.redirect_uri,
            scopes: scopes(&row.scopes)?,
            nonce: row.nonce,
            code_challenge: row.code_challenge,
            auth_time: row.auth_time,
            expires_at: row.expires_at,
        }))
    }

    async fn save_grant(
        &self,
        code: &[u8; 32],
        grant: &Grant,
        refresh: Option<&[u8; 32]>,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        // One statement, so all or nothing in one round trip.
        sqlx::query(
            "WITH g AS (INSERT INTO oauth_grants \
                 (session_id, client_id, user_id, scopes, auth_time, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING session_id), \
             c AS (UPDATE oauth_codes SET grant_session = $1 WHERE code_sha256 = $7), \
             r AS (INSERT INTO oauth_refresh_tokens (token_sha256, session_id, created_at) \
                 SELECT $8, session_id, $6 FROM g WHERE $8::bytea IS NOT NULL) \
             SELECT 1",
        )
        .bind(grant.session_id.as_uuid())
        .bind(grant.client_id.as_str())
        .bind(grant.user_id.as_uuid())
        .bind(scope_list(&grant.scopes))
        .bind(grant.auth_time)
        .bind(now)
        .bind(code.as_slice())
        .bind(refresh.map(|r| r.as_slice()))
        .execute(&self.pool)
        .await
        .map_err(|e| classify("recording a grant", e))?;
        Ok(())
    }

    async fn grant(&self, session: SessionId) -> Result<Option<Grant>, Error> {
        sqlx::query_as::<_, GrantRow>(
            "SELECT session_id, client_id, user_id, scopes, auth_time FROM oauth_grants WHERE session_id = $1",
        )
        .bind(session.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a grant", e))?
        .map(GrantRow::grant)
        .transpose()
    }

    async fn rotate_refresh(
        &self,
        client: &ClientId,
        old: &[u8; 32],
        new: &[u8; 32],
        now: OffsetDateTime,
    ) -> Result<Rotation, Error> {
        // One statement, one round trip. `cur` locks the token's row: of
        // two refreshes with one token, the second waits, then sees it used
        // (and rotates nothing). The successor is stored only when the
        // token was current and this client's; a used token of the grant
        // older than a day is forgotten on the way.
        #[derive(sqlx::FromRow)]
        struct Rotated {
            session_id: Uuid,
            client_id: String,
            user_id: Uuid,
            scopes: Vec<String>,
            auth_time: OffsetDateTime,
            used_at: Option<OffsetDateTime>,
        }
        let row = sqlx::query_as::<_, Rotated>(
            "WITH cur AS ( \
                 SELECT r.session_id, r.used_at, g.client_id, g.user_id, g.scopes, g.auth_time \
                 FROM oauth_refresh_tokens r JOIN oauth_grants g USING (session_id) \
                 WHERE r.token_sha256 = $1 FOR UPDATE OF r), \
             go AS (SELECT session_id FROM cur WHERE used_at IS NULL AND client_id = $3), \
             mark AS (UPDATE oauth_refresh_tokens SET used_at = $4 \
                 WHERE token_sha256 = $1 AND EXISTS (SELECT 1 FROM go)), \
             next AS (INSERT INTO oauth_refresh_tokens (token_sha256, session_id, created_at) \
                 SELECT $2, session_id, $4 FROM go), \
             gone AS (DELETE FROM oauth_refresh_tokens WHERE session_id IN (SELECT session_id FROM go) \
                 AND used_at < $4 - interval '1 day') \
             SELECT session_id, client_id, user_id, scopes, auth_time, used_at FROM cur",
        )
        .bind(old.as_slice())
        .bind(new.as_slice())
        .bind(client.as_str())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("rotating a refresh token", e))?;
        let Some(row) = row else {
            return Ok(Rotation::Missing);
        };
        if row.client_id != client.as_str() {
            return Ok(Rotation::OtherClient);
        }
        let session_id = SessionId::try_from(row.session_id).map_err(|_| corrupt("session id"))?;
        if row.used_at.is_some() {
            return Ok(Rotation::Reused(session_id));
        }
        Ok(Rotation::Rotated(
            GrantRow {
                session_id: row.session_id,
                client_id: row.client_id,
                user_id: row.user_id,
                scopes: row.scopes,
                auth_time: row.auth_time,
            }
            .grant()?,
        ))
    }

    async fn refresh_grant(&self, token: &[u8; 32]) -> Result<Option<Grant>, Error> {
        sqlx::query_as::<_, GrantRow>(
            "SELECT g.session_id, g.client_id, g.user_id, g.scopes, g.auth_time \
             FROM oauth_refresh_tokens r JOIN oauth_grants g USING (session_id) \
             WHERE r.token_sha256 = $1",
        )
        .bind(token.as_slice())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a refresh token", e))?
        .map(GrantRow::grant)
        .transpose()
    }

    async fn consent(&self, user: UserId, client: &ClientId) -> Result<Option<Scopes>, Error> {
        let row: Option<(Vec<String>,)> = sqlx::query_as(
            "SELECT scopes FROM oauth_consents WHERE user_id = $1 AND client_id = $2",
        )
        .bind(user.as_uuid())
        .bind(client.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a consent", e))?;
        row.map(|(list,)| scopes(&list)).transpose()
    }

    async fn save_consent(
        &self,
        user: UserId,
        client: &ClientId,
        granted: &Scopes,
        now: OffsetDateTime,
    ) -> Result<(), Error> {
        // What was allowed before stays allowed: the union.
        sqlx::query(
            "INSERT INTO oauth_consents (user_id, client_id, scopes, granted_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (user_id, client_id) DO UPDATE SET \
             scopes = ARRAY(SELECT DISTINCT unnest(oauth_consents.scopes || EXCLUDED.scopes) ORDER BY 1), \
             granted_at = EXCLUDED.granted_at",
        )
        .bind(user.as_uuid())
        .bind(client.as_str())
        .bind(scope_list(granted))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(|e| classify("storing a consent", e))?;
        Ok(())
    }

    async fn consents(
        &self,
        user: UserId,
    ) -> Result<Vec<(OAuthClient, Scopes, OffsetDateTime)>, Error> {
        let rows: Vec<(String, Vec<String>, OffsetDateTime)> = sqlx::query_as(
            "SELECT client_id, scopes, granted_at FROM oauth_consents WHERE user_id = $1 ORDER BY granted_at DESC",
        )
        .bind(user.as_uuid())
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing consents", e))?;
        let clients = super::oauth::PgOAuthClients::new(self.pool.clone());
        let mut out = Vec::with_capacity(rows.len());
        for (client_id, list, at) in rows {
            let id = ClientId::parse(&client_id).map_err(|_| corrupt("client id"))?;
            if let Some(client) = hub_core::OAuthClients::get(&clients, &id).await? {
                out.push((client, scopes(&list)?, at));
            }
        }
        Ok(out)
    }

    async fn withdraw_consent(
        &self,
        user: UserId,
        client: &ClientId,
    ) -> Result<Vec<SessionId>, Error> {
        let doing = "withdrawing a consent";
        let mut tx = self.pool.begin().await.map_err(|e| classify(doing, e))?;
        sqlx::query("DELETE FROM oauth_consents WHERE user_id = $1 AND client_id = $2")
            .bind(user.as_uuid())
            .bind(client.as_str())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify(doing, e))?;
        let sessions: Vec<(Uuid,)> = sqlx::query_as(
            "SELECT session_id FROM oauth_grants WHERE user_id = $1 AND client_id = $2",
        )
        .bind(user.as_uuid())
        .bind(client.as_str())
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify(doing, e))?;
        tx.commit().await.map_err(|e| classify(doing, e))?;
        sessions
            .into_iter()
            .map(|(id,)| SessionId::try_from(id).map_err(|_| corrupt("session id")))
            .collect()
    }
}
