//! Users in PostgreSQL.

use async_trait::async_trait;
use hub_core::events::{DomainEvent, UserChange, UserEvent};
use hub_core::{Clock, SystemClock};
use hub_core::{
    Email, Error, ErrorCode, ImportOutcome, NewUser, PasswordHash, Role, User, UserId,
    UserRepository, Username,
};
use sqlx::postgres::PgPool;
use sqlx::types::Json;
use time::OffsetDateTime;
use uuid::Uuid;

use super::classify;

/// Users in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgUserRepository {
    pool: PgPool,
}

impl PgUserRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[derive(sqlx::FromRow)]
pub(super) struct UserRow {
    pub(super) id: Uuid,
    pub(super) username: String,
    pub(super) email: String,
    pub(super) password_hash: String,
    pub(super) role: String,
    pub(super) active: bool,
    pub(super) created_at: OffsetDateTime,
    pub(super) updated_at: OffsetDateTime,
}

impl TryFrom<UserRow> for User {
    type Error = Error;

    // A row that fails these checks was damaged outside polyhub: INTERNAL, logged.
    fn try_from(row: UserRow) -> Result<Self, Error> {
        let corrupt = |field: &str, e: Error| {
            Error::internal(format!("users row {} has a bad {field}: {e}", row.id))
        };
        Ok(User {
            id: UserId::try_from(row.id).map_err(|e| corrupt("id", e))?,
            username: Username::parse(&row.username).map_err(|e| corrupt("username", e))?,
            // As stored: an address kept before a stricter rule still reads.
            email: Email::stored(&row.email).map_err(|e| corrupt("email", e))?,
            password_hash: PasswordHash::parse(&row.password_hash)
                .map_err(|e| corrupt("password_hash", e))?,
            role: Role::parse(&row.role).map_err(|e| corrupt("role", e))?,
            active: row.active,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[async_trait]
impl UserRepository for PgUserRepository {
    /// The user and its `user.created` event in one statement: a taken
    /// name fails both.
    async fn insert(&self, user: NewUser) -> Result<User, Error> {
        let event = DomainEvent::from(user.created_event());
        let row: UserRow = sqlx::query_as(
            "WITH u AS ( \
               INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) \
               VALUES ($1, $2, $3, $4, $5, $6, $6) \
               RETURNING id, username, email, password_hash, role, active, created_at, updated_at), \
             e AS ( \
               INSERT INTO events (event_id, type, user_id, occurred_at, data) \
               SELECT $7, $8, u.id, u.created_at, $9 FROM u) \
             SELECT * FROM u",
        )
        .bind(user.id.as_uuid())
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(user.password_hash.as_str())
        .bind(user.role.as_str())
        .bind(user.created_at)
        .bind(event.id())
        .bind(event.type_name())
        .bind(Json(event.data()))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("inserting a user", e))?;
        row.try_into()
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, password_hash, role, active, created_at, updated_at \
             FROM users WHERE id = $1",
        )
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("finding a user by id", e))?
        .map(User::try_from)
        .transpose()
    }

    async fn find_by_username(&self, username: &Username) -> Result<Option<User>, Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, password_hash, role, active, created_at, updated_at \
             FROM users WHERE lower(username) = $1",
        )
        .bind(username.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("finding a user by username", e))?
        .map(User::try_from)
        .transpose()
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<User>, Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, password_hash, role, active, created_at, updated_at \
             FROM users WHERE lower(email) = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("finding a user by email", e))?
        .map(User::try_from)
        .transpose()
    }

    async fn replace_password_hash(
        &self,
        id: UserId,
        expected: &PasswordHash,
        hash: &PasswordHash,
    ) -> Result<bool, Error> {
        let done = sqlx::query(
            "UPDATE users SET password_hash = $3, updated_at = now() \
             WHERE id = $1 AND password_hash = $2",
        )
        .bind(id.as_uuid())
        .bind(expected.as_str())
        .bind(hash.as_str())
        .execute(&self.pool)
        .await
        .map_err(|e| classify("replacing a password hash", e))?;
        Ok(done.rows_affected() == 1)
    }

    /// One statement per batch: the rows go in through `unnest`, conflicts
    /// on either unique index are skipped, and the rows that did not go in
    /// are told apart by whether their username is taken.
    async fn import(&self, users: &[User], dry_run: bool) -> Result<Vec<ImportOutcome>, Error> {
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| classify("importing users", e))?;
        // An import is idempotent: a batch lost to a crash right after its
        // commit is imported by the rerun, so its commit need not wait for
        // the WAL flush (the one setting a million-user import spends most
        // on; the transaction is still atomic).
        sqlx::query("SET LOCAL synchronous_commit TO OFF")
            .execute(&mut *tx)
            .await
            .map_err(|e| classify("importing users", e))?;
        let ids: Vec<uuid::Uuid> = users.iter().map(|u| u.id.as_uuid()).collect();
        let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
        let emails: Vec<&str> = users.iter().map(|u| u.email.as_str()).collect();
        let hashes: Vec<&str> = users.iter().map(|u| u.password_hash.as_str()).collect();
        let roles: Vec<&str> = users.iter().map(|u| u.role.as_str()).collect();
        let created: Vec<time::OffsetDateTime> = users.iter().map(|u| u.created_at).collect();
        let inserted: Vec<uuid::Uuid> = sqlx::query_scalar(
            "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) \
             SELECT id, username, email, hash, role, created, now() \
             FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[], $6::timestamptz[]) \
               AS r(id, username, email, hash, role, created) \
             ON CONFLICT DO NOTHING RETURNING id",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&emails)
        .bind(&hashes)
        .bind(&roles)
        .bind(&created)
        .fetch_all(&mut *tx)
        .await
        .map_err(|e| classify("importing users", e))?;
        let inserted: std::collections::HashSet<uuid::Uuid> = inserted.into_iter().collect();
        let missed: Vec<&str> = users
            .iter()
            .filter(|u| !inserted.contains(&u.id.as_uuid()))
            .map(|u| u.username.as_str())
            .collect();
        let present: std::collections::HashSet<String> = if missed.is_empty() {
            std::collections::HashSet::new()
        } else {
            sqlx::query_scalar::<_, String>(
                "SELECT lower(username) FROM users WHERE lower(username) = ANY($1) AND id <> ALL($2)",
            )
            .bind(&missed)
            .bind(&ids)
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| classify("importing users", e))?
            .into_iter()
            .collect()
        };
        if !dry_run && !inserted.is_empty() {
            // When the import ran: the users' own `created_at` is the old
            // system's, years back or anything a file says.
            let at = SystemClock.now();
            let count = inserted.len() as u64;
            let event = UserEvent::new(None, at, UserChange::Imported { count });
            super::events::insert(&mut tx, &[event.into()]).await?;
        }
        if dry_run {
            tx.rollback()
                .await
                .map_err(|e| classify("importing users", e))?;
        } else {
            tx.commit()
                .await
                .map_err(|e| classify("importing users", e))?;
        }
        Ok(users
            .iter()
            .map(|u| {
                if inserted.contains(&u.id.as_uuid()) {
                    ImportOutcome::Imported
                } else if present.contains(u.username.as_str()) {
                    ImportOutcome::UsernamePresent
                } else {
                    ImportOutcome::EmailTaken
                }
            })
            .collect())
    }

    async fn count_insecure_hashes(&self) -> Result<u64, Error> {
        // Answered from the partial index `users_insecure_hash`.
        let count: i64 =
            sqlx::query_scalar("SELECT count(*) FROM users WHERE password_hash LIKE '$insecure-%'")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| classify("counting insecure hashes", e))?;
        Ok(u64::try_from(count).unwrap_or(0))
    }

    async fn search(
        &self,
        prefix: &str,
        after: Option<&Username>,
        limit: u32,
    ) -> Result<Vec<User>, Error> {
        // A prefix, not a substring: both indexes below answer it, so a
        // search costs a page whatever the number of users.
        let escaped: String = prefix
            .to_lowercase()
            .chars()
            .flat_map(|c| match c {
                '%' | '_' | '\\' => vec!['\\', c],
                c => vec![c],
            })
            .collect();
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, password_hash, role, active, created_at, updated_at \
             FROM users \
             WHERE (lower(username) LIKE $1 || '%' OR lower(email) LIKE $1 || '%') \
               AND ($2::text IS NULL OR lower(username) > $2) \
             ORDER BY lower(username) LIMIT $3",
        )
        .bind(escaped)
        .bind(after.map(Username::as_str))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(|e| classify("searching users", e))?
        .into_iter()
        .map(User::try_from)
        .collect()
    }

    async fn update_email(&self, id: UserId, email: &Email) -> Result<(), Error> {
        let change = UserChange::EmailChanged {
            email: email.as_str().to_owned(),
        };
        let event = UserEvent::new(Some(id), SystemClock.now(), change);
        let done = bind_event(
            sqlx::query(with_event!(
                "UPDATE users SET email = $2, updated_at = now() WHERE id = $1 RETURNING id"
            )),
            id,
            email.as_str(),
            &event.into(),
        )
        .execute(&self.pool)
        .await
        .map_err(|e| classify("changing a user's email", e))?;
        found(done.rows_affected())
    }
}

/// An UPDATE of the user `$1` with `$2` (returning its id) and the
/// change's event (`$3`..`$6`) in one statement: no user, no event; one row
/// affected per user changed.
macro_rules! with_event {
    ($update:literal) => {
        concat!(
            "WITH u AS (",
            $update,
            ") INSERT INTO events (event_id, type, user_id, occurred_at, data) \
             SELECT $3, $4, u.id, $5, $6 FROM u"
        )
    };
}
use with_event;

fn bind_event<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    id: UserId,
    value: &'q str,
    event: &DomainEvent,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(id.as_uuid())
        .bind(value)
        .bind(event.id())
        .bind(event.type_name())
        .bind(event.at())
        .bind(Json(event.data()))
}

fn found(rows: u64) -> Result<(), Error> {
    if rows == 0 {
        Err(Error::new(ErrorCode::UserNotFound))
    } else {
        Ok(())
    }
}
