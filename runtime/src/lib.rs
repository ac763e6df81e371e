//! hub-runtime: what every polyhub service shares.
//!
//! Typed configuration, tracing with one request id per request, the JSON
//! error shape, `/health` and `/ready`, and graceful shutdown. Adapters build
//! their routers on top of [`http::service_router`] so every service answers
//! the same way.

pub mod budgets;
pub mod config;
pub mod connections;
pub mod cookies;
#[cfg(test)]
mod doc_table;
pub mod errors;
pub mod forwarded;
pub mod grpc;
pub mod health;
pub mod http;
pub mod login_limits;
pub mod metrics;
pub mod pacing;
pub mod secret;
pub mod service;
pub mod shutdown;
pub mod telemetry;
pub mod upload;

pub use config::Config;
pub use forwarded::IDENTITY_HEADERS;
pub use health::Readiness;
pub use http::{
    BearerToken, HttpError, JsonBody, QueryParams, cors_layer, no_store, service_router,
};
pub use login_limits::LoginLimiter;
pub use secret::Secret;
pub use service::{Service, ServiceContext};
pub use shutdown::Shutdown;
