//! rest-auth: the REST/JSON face of polyhub (port 5001).
//!
//! A library: [`router`] builds the service apart from running it, so the
//! `hub` binary and the tests mount the same handlers.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::response::Json;
use axum::routing::get;
use hub_core::DependencyProbe;
use hub_runtime::config::HttpConfig;
use hub_runtime::{HttpError, Readiness};
use serde_json::{Value, json};

/// The service's name in logs, health answers and metrics.
pub const SERVICE: &str = "rest-auth";

/// What the handlers need.
#[derive(Clone)]
pub struct RestAuthState {
    /// The user database, for `/test-db`.
    pub database: Arc<dyn DependencyProbe>,
}

impl std::fmt::Debug for RestAuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestAuthState").finish_non_exhaustive()
    }
}

/// `GET /test-db`: one round trip to the database, for operators.
async fn test_db(State(state): State<RestAuthState>) -> Result<Json<Value>, HttpError> {
    let latency = state.database.probe().await?;
    Ok(Json(json!({
        "database": "ok",
        "latency_ms": latency.as_secs_f64() * 1000.0,
    })))
}

/// The whole service: its routes plus `/health` and `/ready`.
pub fn router(state: RestAuthState, readiness: Readiness, http: &HttpConfig) -> Router {
    let routes = Router::new()
        .route("/test-db", get(test_db))
        .with_state(state);
    hub_runtime::service_router(routes, readiness, http)
}
