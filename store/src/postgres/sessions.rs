//! Sessions in PostgreSQL, each change written with its events (in the
//! event log) in one transaction.

use std::net::IpAddr;

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserChange, UserEvent};
use hub_core::ports::{LAST_ADMIN, PASSWORD_CHANGED, ROLE_CHANGED};
use hub_core::{
    ClientInfo, CredentialChange, Error, ErrorCode, PasswordHash, Role, Session, SessionEvent,
    SessionEventKind, SessionId, SessionQuery, SessionRepository, User, UserId,
};
use sqlx::postgres::{PgPool, PgTransaction};
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;
use super::users::UserRow;

/// Sessions in PostgreSQL, with their events in the event log.
#[derive(Debug, Clone)]
pub struct PgSessionRepository {
    pool: PgPool,
}

impl PgSessionRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct SessionRow {
    id: Uuid,
    user_id: Uuid,
    created_at: OffsetDateTime,
    expires_at: OffsetDateTime,
    last_seen_at: OffsetDateTime,
    revoked_at: Option<OffsetDateTime>,
    client_ip: Option<String>,
    user_agent: Option<String>,
}

impl TryFrom<SessionRow> for Session {
    type Error = Error;

    fn try_from(row: SessionRow) -> Result<Self, Error> {
        let corrupt =
            |field: &str| Error::internal(format!("sessions row {} has a bad {field}", row.id));
        Ok(Session {
            id: SessionId::try_from(row.id).map_err(|_| corrupt("id"))?,
            user_id: UserId::try_from(row.user_id).map_err(|_| corrupt("user_id"))?,
            created_at: row.created_at,
            expires_at: row.expires_at,
            last_seen_at: row.last_seen_at,
            revoked_at: row.revoked_at,
            client: ClientInfo {
                ip: row
                    .client_ip
                    .as_deref()
                    .map(str::parse::<IpAddr>)
                    .transpose()
                    .map_err(|_| corrupt("client_ip"))?,
                user_agent: row.user_agent,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
struct SessionWithUser {
    #[sqlx(flatten)]
    session: SessionRow,
    username: String,
    email: String,
    password_hash: String,
    role: String,
    active: bool,
    user_created_at: OffsetDateTime,
    user_updated_at: OffsetDateTime,
}

/// The columns every session query returns, `client_ip` as plain text.
macro_rules! session_columns {
    () => {
        "id, user_id, created_at, expires_at, last_seen_at, revoked_at, \
         host(client_ip) AS client_ip, user_agent"
    };
}

/// Writes a session event to the event log, in the change's transaction.
pub(super) async fn insert_event(
    tx: &mut PgTransaction<'_>,
    event: &SessionEvent,
) -> Result<(), Error> {
    super::events::insert(tx, &[event.clone().into()]).await
}

async fn insert_session(
    tx: &mut PgTransaction<'_>,
    session: &Session,
    event: &SessionEvent,
) -> Result<(), Error> {
    sqlx::query(
        "INSERT INTO sessions \
         (id, user_id, created_at, expires_at, last_seen_at, client_ip, user_agent) \
         VALUES ($1, $2, $3, $4, $5, $6::inet, $7)",
    )
    .bind(session.id.as_uuid())
    .bind(session.user_id.as_uuid())
    .bind(session.created_at)
    .bind(session.expires_at)
    .bind(session.last_seen_at)
    .bind(session.client.ip.map(|ip| ip.to_string()))
    .bind(session.client.user_agent.as_deref())
    .execute(&mut **tx)
    .await
    .map_err(|e| classify("opening a session", e))?;
    insert_event(tx, event).await
}

/// Forgets every known device of `user`, inside the transaction that
/// revokes their sessions (see `known_devices` in the migrations).
pub(super) async fn forget_devices(tx: &mut PgTransaction<'_>, user: UserId) -> Result<(), Error> {
    sqlx::query("DELETE FROM known_devices WHERE user_id = $1")
        .bind(user.as_uuid())
        .execute(&mut **tx)
        .await
        .map_err(|e| classify("forgetting a user's devices", e))?;
    Ok(())
}

/// Forgets the reset links and address verifications `user` has waiting,
/// inside the transaction of a change that must end them (a new password,
/// an admin's reset of the factors): a link mailed before it must not undo
/// it.
pub(super) async fn forget_links(tx: &mut PgTransaction<'_>, user: UserId) -> Result<(), Error> {
    for statement in [
        "DELETE FROM password_resets WHERE user_id = $1",
        "DELETE FROM email_verifications WHERE user_id = $1",
    ] {
        sqlx::query(statement)
            .bind(user.as_uuid())
            .execute(&mut **tx)
            .await
            .map_err(|e| classify("forgetting a user's mailed links", e))?;
    }
    Ok(())
}

/// Revokes every open session of `user` but `keep`, inside `tx`, and the
/// rows revoked.
pub(super) async fn revoke_sessions_of(
    tx: &mut PgTransaction<'_>,
    user: UserId,
    keep: Option<SessionId>,
    at: OffsetDateTime,
) -> Result<Vec<SessionRow>, Error> {
    sqlx::query_as(concat!(
        "UPDATE sessions SET revoked_at = $3 \
         WHERE user_id = $1 AND ($2::uuid IS NULL OR id <> $2) \
         AND revoked_at IS NULL AND expires_at > $3 RETURNING ",
        session_columns!()
    ))
    .bind(user.as_uuid())
    .bind(keep.map(|k| k.as_uuid()))
    .bind(at)
    .fetch_all(&mut **tx)
    .await
    .map_err(|e| classify("revoking a user's sessions", e))
}

/// The `session.revoked` event of a row just revoked.
pub(super) fn revocation_event(
    row: SessionRow,
    at: OffsetDateTime,
    reason: &str,
) -> Result<DomainEvent, Error> {
    let session = Session::try_from(row)?;
    Ok(SessionEvent::new(SessionEventKind::Revoked, &session, at)
        .because(reason)
        .into())
}

/// Writes the revocation events of `rows` after `first` (the user events
/// of the change that revoked them), and commits.
pub(super) async fn revoked_with_events(
    mut tx: PgTransaction<'_>,
    first: Vec<DomainEvent>,
    rows: Vec<SessionRow>,
    at: OffsetDateTime,
    reason: &str,
) -> Result<u64, Error> {
    let count = rows.len() as u64;
    let mut events = first;
    for row in rows {
        events.push(revocation_event(row, at, reason)?);
    }
    super::events::insert(&mut tx, &events).await?;
    tx.commit()
        .await
        .map_err(|e| classify("committing a revocation", e))?;
    Ok(count)
}

#[async_trait]
impl SessionRepository for PgSessionRepository {
    async fn open(&self, session: &Session, event: &SessionEvent) -> Result<(), Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("opening a session", e))?;
        insert_session(&mut tx, session, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("committing a new session", e))
    }

    async fn open_verified(
        &self,
        session: &Session,
        event: &SessionEvent,
        credential: &PasswordHash,
        role: Role,
    ) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("opening a session", e))?;
        // FOR SHARE: a password or role change (an UPDATE of this row)
        // either waits for this login to commit, and then revokes its
        // session, or commits first, and this login then finds the hash or
        // the role replaced.
        let current: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM users WHERE id = $1 AND password_hash = $2 AND role = $3 AND active FOR SHARE",
        )
        .bind(session.user_id.as_uuid())
        .bind(credential.as_str())
        .bind(role.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("checking the credential a login verified", e))?;
        if current.is_none() {
            return Ok(false); // rolled back on drop
        }
        insert_session(&mut tx, session, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("committing a new session", e))?;
        Ok(true)
    }

    async fn open_beside(
        &self,
        parent: Option<SessionId>,
        session: &Session,
        event: &SessionEvent,
        role: Role,
    ) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("opening another session", e))?;
        // The user's row first, as every revocation locks it first
        // (change_credentials, change_role, revoke_all): a revocation then
        // either commits before this, and is seen below, or waits for this
        // session to commit and revokes it with the statement that follows.
        let current: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM users WHERE id = $1 AND role = $2 AND active FOR SHARE",
        )
        .bind(session.user_id.as_uuid())
        .bind(role.as_str())
        .fetch_optional(&mut *tx)
        .await
        .map_err(|e| classify("checking the role of another session", e))?;
        if current.is_none() {
            return Ok(false); // rolled back on drop
        }
        if let Some(parent) = parent {
            let open: Option<i32> = sqlx::query_scalar(
                "SELECT 1 FROM sessions WHERE id = $1 AND user_id = $2 \
                 AND revoked_at IS NULL AND expires_at > $3 FOR SHARE",
            )
            .bind(parent.as_uuid())
            .bind(session.user_id.as_uuid())
            .bind(event.at)
            .fetch_optional(&mut *tx)
            .await
            .map_err(|e| classify("checking the session another is opened from", e))?;
            if open.is_none() {
                return Ok(false);
            }
        }
        insert_session(&mut tx, session, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("committing another session", e))?;
        Ok(true)
    }

    async fn change_credentials(&self, change: &CredentialChange) -> Result<u64, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("changing a user's credentials", e))?;
        let updated = sqlx::query(
            "UPDATE users SET email = COALESCE($3, email), \
             password_hash = COALESCE($4, password_hash), updated_at = $5 \
             WHERE id = $1 AND password_hash = $2",
        )
        .bind(change.user.as_uuid())
        .bind(change.expected.as_str())
        .bind(change.email.as_ref().map(|e| e.as_str()))
        .bind(change.password_hash.as_ref().map(|h| h.as_str()))
        .bind(change.at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("changing a user's credentials", e))?;
        if updated.rows_affected() == 0 {
            return Err(Error::with_message(
                ErrorCode::InvalidCredentials,
                "the password changed meanwhile; sign in again",
            ));
        }
        let events: Vec<DomainEvent> = change.events().into_iter().map(Into::into).collect();
        if change.password_hash.is_none() {
            super::events::insert(&mut tx, &events).await?;
            tx.commit()
                .await
                .map_err(|e| classify("committing a credential change", e))?;
            return Ok(0);
        }
        // After the new hash, in the same transaction: a login racing this
        // change has either committed its session (revoked here) or will
        // find the hash replaced.
        let rows = revoke_sessions_of(&mut tx, change.user, change.keep, change.at).await?;
        forget_devices(&mut tx, change.user).await?;
        forget_links(&mut tx, change.user).await?;
        revoked_with_events(tx, events, rows, change.at, PASSWORD_CHANGED).await
    }

    async fn find_open(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<Session>, Error> {
        sqlx::query_as::<_, SessionRow>(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2"
        ))
        .bind(id.as_uuid())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("checking a session", e))?
        .map(Session::try_from)
        .transpose()
    }

    async fn find_open_with_user(
        &self,
        id: SessionId,
        now: OffsetDateTime,
    ) -> Result<Option<(Session, User)>, Error> {
        let row: Option<SessionWithUser> = sqlx::query_as(
            "SELECT s.id, s.user_id, s.created_at, s.expires_at, s.last_seen_at, s.revoked_at, \
                    host(s.client_ip) AS client_ip, s.user_agent, \
                    u.username, u.email, u.password_hash, u.role, u.active, \
                    u.created_at AS user_created_at, u.updated_at AS user_updated_at \
             FROM sessions s JOIN users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.revoked_at IS NULL AND s.expires_at > $2",
        )
        .bind(id.as_uuid())
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("checking a session and reading its user", e))?;
        let Some(row) = row else { return Ok(None) };
        let user = User::try_from(UserRow {
            id: row.session.user_id,
            username: row.username,
            email: row.email,
            password_hash: row.password_hash,
            role: row.role,
            active: row.active,
            created_at: row.user_created_at,
            updated_at: row.user_updated_at,
        })?;
        Ok(Some((Session::try_from(row.session)?, user)))
    }

    async fn revoke(&self, id: SessionId, at: OffsetDateTime, reason: &str) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("revoking a session", e))?;
        let rows: Vec<SessionRow> = sqlx::query_as(concat!(
            "UPDATE sessions SET revoked_at = $2 \
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $2 RETURNING ",
            session_columns!()
        ))
        .bind(id.as_uuid())
        .bind(at)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify("revoking a session", e))?;
        Ok(revoked_with_events(tx, Vec::new(), rows, at, reason).await? > 0)
    }

    async fn revoke_all(
        &self,
        user: UserId,
        keep: Option<SessionId>,
        at: OffsetDateTime,
        reason: &str,
    ) -> Result<u64, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("revoking a user's sessions", e))?;
        // The user's row first, as a session opened beside another locks
        // it first: that session is either committed before the UPDATE
        // below reads, or opened after it and finds its parent revoked.
        sqlx::query("SELECT 1 FROM users WHERE id = $1 FOR NO KEY UPDATE")
            .bind(user.as_uuid())
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("revoking a user's sessions", e))?;
        let rows = revoke_sessions_of(&mut tx, user, keep, at).await?;
        forget_devices(&mut tx, user).await?;
        revoked_with_events(tx, Vec::new(), rows, at, reason).await
    }

    async fn change_role(
        &self,
        user: UserId,
        role: Role,
        at: OffsetDateTime,
    ) -> Result<u64, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("changing a user's role", e))?;
        // Withdrawing admin: every admin's row is locked first, in one
        // order, so two admins withdrawing each other are serialized and
        // the second finds itself the last.
        if role != Role::Admin {
            let admins: Vec<Uuid> = sqlx::query_scalar(
                "SELECT id FROM users WHERE role = 'admin' ORDER BY id FOR NO KEY UPDATE",
            )
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| classify("changing a user's role", e))?;
            if admins == [user.as_uuid()] {
                return Err(Error::with_message(ErrorCode::Forbidden, LAST_ADMIN));
            }
        }
        // The row lock this takes orders it with logins and other sessions
        // (FOR SHARE in open_verified and open_beside): a login either
        // committed its session before, and it is revoked below, or reads
        // the new role after. NO KEY UPDATE, not UPDATE: a device being
        // remembered holds KEY SHARE on this row (its foreign key), and
        // must not wait on this while this waits on its session.
        let previous: Option<String> =
            sqlx::query_scalar("SELECT role FROM users WHERE id = $1 FOR NO KEY UPDATE")
                .bind(user.as_uuid())
                .fetch_optional(&mut *tx)
                .await
                .map_err(|e| classify("changing a user's role", e))?;
        match previous {
            None => return Err(Error::new(ErrorCode::UserNotFound)),
            Some(previous) if previous == role.as_str() => return Ok(0),
            Some(_) => {}
        }
        sqlx::query("UPDATE users SET role = $2, updated_at = $3 WHERE id = $1")
            .bind(user.as_uuid())
            .bind(role.as_str())
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("changing a user's role", e))?;
        let rows = revoke_sessions_of(&mut tx, user, None, at).await?;
        forget_devices(&mut tx, user).await?;
        let changed = UserEvent::new(Some(user), at, UserChange::RoleChanged { role });
        revoked_with_events(tx, vec![changed.into()], rows, at, ROLE_CHANGED).await
    }

    async fn find(&self, id: SessionId) -> Result<Option<Session>, Error> {
        sqlx::query_as::<_, SessionRow>(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE id = $1"
        ))
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("reading a session", e))?
        .map(Session::try_from)
        .transpose()
    }

    async fn list(&self, user: UserId, query: &SessionQuery) -> Result<Vec<Session>, Error> {
        // Session ids are UUID v7, so id order is creation order and the page
        // boundary is one id. A user has few sessions; sorting them is cheap.
        sqlx::query_as::<_, SessionRow>(concat!(
            "SELECT ",
            session_columns!(),
            " FROM sessions WHERE user_id = $1 \
              AND ($2 OR (revoked_at IS NULL AND expires_at > $3)) \
              AND ($4::uuid IS NULL OR id < $4) \
              ORDER BY id DESC LIMIT $5"
        ))
        .bind(user.as_uuid())
        .bind(query.include_closed)
        .bind(query.now)
        .bind(query.before.map(|b| b.as_uuid()))
        .bind(i64::from(query.limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("listing a user's sessions", e))?
        .into_iter()
        .map(Session::try_from)
        .collect()
    }

    async fn count_open(
        &self,
        user: UserId,
        now: OffsetDateTime,
        limit: u32,
    ) -> Result<usize, Error> {
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE user_id = $1 \
             AND revoked_at IS NULL AND expires_at > $2 LIMIT $3) open",
        )
        .bind(user.as_uuid())
        .bind(now)
        .bind(i64::from(limit))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("counting a user's open sessions", e))?;
        Ok(usize::try_from(count).unwrap_or(usize::MAX))
    }

    async fn touch(&self, session: &Session, event: &SessionEvent) -> Result<bool, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("touching a session", e))?;
        let touched = sqlx::query(
            "UPDATE sessions SET last_seen_at = $2, expires_at = $3 \
             WHERE id = $1 AND revoked_at IS NULL AND expires_at > $4",
        )
        .bind(session.id.as_uuid())
        .bind(session.last_seen_at)
        .bind(session.expires_at)
        .bind(event.at)
        .execute(&mut *tx)
        .await
        .map_err(|e| classify("touching a session", e))?
        .rows_affected()
            > 0;
        if !touched {
            return Ok(false);
        }
        insert_event(&mut tx, event).await?;
        tx.commit()
            .await
            .map_err(|e| classify("committing a session touch", e))?;
        Ok(true)
    }
}
