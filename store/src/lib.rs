//! hub-store: the real implementations of hub-core's ports.
//!
//! PostgreSQL through sqlx, with the schema's migrations embedded in the binary.
//! Every storage error is classified here, once, into hub-core's error model.

pub mod background;
pub mod mongo;
pub mod postgres;
pub mod s3;
pub mod smtp;
pub mod webhook_http;

pub use background::prepare_in_background;
pub use mongo::{MongoActivityLog, MongoProbe, MongoSettings, connect as connect_mongo};
/// The MongoDB database handle [`connect_mongo`] gives.
pub use mongodb::Database as MongoDatabase;
pub use postgres::{
    CachedSessions, CachedUsers, DirectoryStats, MIGRATOR, PgEventLog, PgFactorStore,
    PgImageRepository, PgKnownDevices, PgOAuthClients, PgOidcStore, PgOutbox, PgPasskeyStore,
    PgProbe, PgRecoveryStore, PgReplayGuard, PgScimStore, PgSessionRepository, PgUserRepository,
    PgWebhookEndpoints, PoolSettings, connect_lazy, ensure_database, migrate, ping,
};
pub use s3::{S3ObjectStore, S3Probe, S3Settings};
pub use smtp::{SmtpMail, SmtpSecurity, SmtpSettings};
pub use webhook_http::{HttpWebhooks, WebhookHttpSettings};
