//! PostgreSQL: connection pool, migrations, error classification, and the
//! repositories of users and sessions.

mod devices;
mod directory_cache;
mod events;
mod factors;
mod images;
mod leased;
mod listen;
mod nonces;
mod oauth;
mod oidc;
mod outbox;
mod passkeys;
mod recovery;
mod scim;
mod session_cache;
mod sessions;
mod users;
mod webhooks;

pub use devices::PgKnownDevices;
pub use directory_cache::{CachedUsers, DirectoryStats};
pub use events::PgEventLog;
pub use factors::PgFactorStore;
pub use images::PgImageRepository;
pub use nonces::PgReplayGuard;
pub use oauth::PgOAuthClients;
pub use oidc::PgOidcStore;
pub use outbox::PgOutbox;
pub use passkeys::PgPasskeyStore;
pub use recovery::PgRecoveryStore;
pub use scim::PgScimStore;
pub use session_cache::CachedSessions;
pub use sessions::PgSessionRepository;
pub use users::PgUserRepository;
pub use webhooks::PgWebhookEndpoints;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use hub_core::{Error, ErrorCode};
use secrecy::{ExposeSecret, SecretString};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

/// The schema, embedded: `hub migrate` and the services apply the same files.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How to reach PostgreSQL and how big the pool may grow.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Never printed.
    pub url: SecretString,
    pub max_connections: u32,
    pub min_connections: u32,
    /// How long a request waits for a connection before it is refused as UNAVAILABLE.
    pub acquire_timeout: Duration,
    pub idle_timeout: Duration,
}

/// A pool that connects on first use, so a service starts (and reports
/// not-ready) while the database is still away.
pub fn connect_lazy(settings: &PoolSettings) -> Result<PgPool, Error> {
    let options: PgConnectOptions = settings.url.expose_secret().parse().map_err(|e| {
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
        // A ping before every checkout doubles the round trips of every query.
        // A connection that died is found on use instead: sqlx closes it, the
        // request fails as UNAVAILABLE, and the pool opens a fresh one.
        .test_before_acquire(false)
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
            (Some("23505"), Some("scim_groups_display_name")) => {
                return Error::new(ErrorCode::GroupNameTaken);
            }
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
