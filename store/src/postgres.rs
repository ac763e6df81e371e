//! PostgreSQL: connection pool, migrations, error classification and the
//! [`UserRepository`] implementation.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{
    Email, Error, ErrorCode, NewUser, PasswordHash, Role, User, UserId, UserRepository, Username,
};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use time::OffsetDateTime;
use uuid::Uuid;

/// The schema, embedded: `hub migrate` and the services apply the same files.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How to reach PostgreSQL and how big the pool may grow.
#[derive(Clone)]
pub struct PoolSettings {
    pub url: String,
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long a request waits for a connection before it is refused as UNAVAILABLE.
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
}

impl std::fmt::Debug for PoolSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolSettings")
            .field("url", &"<redacted>")
            .field("max_connections", &self.max_connections)
            .field("min_connections", &self.min_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// A pool that connects on first use, so a service starts (and reports
/// not-ready) while the database is still away.
pub fn connect_lazy(settings: &PoolSettings) -> Result<PgPool, Error> {
    let options: PgConnectOptions = settings.url.parse().map_err(|e| {
        Error::internal(StoreError {
            doing: "parsing the database URL",
            source: e,
        })
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .min_connections(settings.min_connections)
        .acquire_timeout(settings.acquire_timeout)
        .idle_timeout(Some(settings.idle_timeout))
        .connect_lazy_with(options.application_name("polyhub")))
}

/// Creates the database the URL names when it does not exist yet; says
/// whether it did. Needs the CREATEDB right only on that first run.
pub async fn ensure_database(url: &str) -> Result<bool, Error> {
    use sqlx::migrate::MigrateDatabase;
    if sqlx::Postgres::database_exists(url)
        .await
        .map_err(|e| classify("checking that the database exists", e))?
    {
        return Ok(false);
    }
    sqlx::Postgres::create_database(url)
        .await
        .map_err(|e| classify("creating the database", e))?;
    Ok(true)
}

/// Applies every pending migration.
pub async fn migrate(pool: &PgPool) -> Result<(), Error> {
    MIGRATOR.run(pool).await.map_err(|e| match e {
        sqlx::migrate::MigrateError::Execute(source) => classify("applying migrations", source),
        other => Error::internal(format!("applying migrations: {other}")),
    })
}

/// One round trip to the database; how long it took.
pub async fn ping(pool: &PgPool) -> Result<Duration, Error> {
    let started = Instant::now();
    sqlx::query("SELECT 1")
        .execute(pool)
        .await
        .map_err(|e| classify("pinging the database", e))?;
    Ok(started.elapsed())
}

/// A storage failure with what was being done when it happened.
#[derive(Debug, thiserror::Error)]
#[error("{doing}: {source}")]
pub struct StoreError {
    doing: &'static str,
    #[source]
    source: sqlx::Error,
}

/// Classifies a sqlx error once: unique violations become conflicts with the
/// right code, lost or refused connections become UNAVAILABLE, the rest INTERNAL.
pub fn classify(doing: &'static str, source: sqlx::Error) -> Error {
    let code = match &source {
        sqlx::Error::Database(db) => match (db.code().as_deref(), db.constraint()) {
            (Some("23505"), Some("users_username_key")) => {
                return Error::new(ErrorCode::UsernameTaken);
            }
            (Some("23505"), Some("users_email_key")) => return Error::new(ErrorCode::EmailTaken),
            // Class 08: connection exceptions; 57P0x: the server is shutting
            // down or starting; 53300: too many connections.
            (Some(code), _)
                if code.starts_with("08") || code.starts_with("57P") || code == "53300" =>
            {
                ErrorCode::Unavailable
            }
            _ => ErrorCode::Internal,
        },
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => ErrorCode::Unavailable,
        _ => ErrorCode::Internal,
    };
    Error::from_source(code, StoreError { doing, source })
}

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
struct UserRow {
    id: Uuid,
    username: String,
    email: String,
    password_hash: String,
    role: String,
    created_at: OffsetDateTime,
    updated_at: OffsetDateTime,
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
            email: Email::parse(&row.email).map_err(|e| corrupt("email", e))?,
            password_hash: PasswordHash::parse(&row.password_hash)
                .map_err(|e| corrupt("password_hash", e))?,
            role: Role::parse(&row.role).map_err(|e| corrupt("role", e))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

#[async_trait]
impl UserRepository for PgUserRepository {
    async fn insert(&self, user: NewUser) -> Result<User, Error> {
        let row: UserRow = sqlx::query_as(
            "INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) \
             RETURNING id, username, email, password_hash, role, created_at, updated_at",
        )
        .bind(user.id.as_uuid())
        .bind(user.username.as_str())
        .bind(user.email.as_str())
        .bind(user.password_hash.as_str())
        .bind(user.role.as_str())
        .bind(user.created_at)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| classify("inserting a user", e))?;
        row.try_into()
    }

    async fn find_by_id(&self, id: UserId) -> Result<Option<User>, Error> {
        sqlx::query_as::<_, UserRow>(
            "SELECT id, username, email, password_hash, role, created_at, updated_at \
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
            "SELECT id, username, email, password_hash, role, created_at, updated_at \
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
            "SELECT id, username, email, password_hash, role, created_at, updated_at \
             FROM users WHERE lower(email) = $1",
        )
        .bind(email.as_str())
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| classify("finding a user by email", e))?
        .map(User::try_from)
        .transpose()
    }

    async fn update_password_hash(&self, id: UserId, hash: &PasswordHash) -> Result<(), Error> {
        let done =
            sqlx::query("UPDATE users SET password_hash = $2, updated_at = now() WHERE id = $1")
                .bind(id.as_uuid())
                .bind(hash.as_str())
                .execute(&self.pool)
                .await
                .map_err(|e| classify("updating a password hash", e))?;
        found(done.rows_affected())
    }

    async fn set_role(&self, id: UserId, role: Role) -> Result<(), Error> {
        let done = sqlx::query("UPDATE users SET role = $2, updated_at = now() WHERE id = $1")
            .bind(id.as_uuid())
            .bind(role.as_str())
            .execute(&self.pool)
            .await
            .map_err(|e| classify("setting a user's role", e))?;
        found(done.rows_affected())
    }
}

fn found(rows: u64) -> Result<(), Error> {
    if rows == 0 {
        Err(Error::new(ErrorCode::UserNotFound))
    } else {
        Ok(())
    }
}

/// PostgreSQL as a readiness dependency.
#[derive(Debug, Clone)]
pub struct PgProbe {
    pool: PgPool,
}

impl PgProbe {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

#[async_trait]
impl hub_core::DependencyProbe for PgProbe {
    fn name(&self) -> &'static str {
        "postgres"
    }

    async fn probe(&self) -> Result<Duration, Error> {
        ping(&self.pool).await
    }
}
