//! `/health` (liveness: the process answers) and `/ready` (readiness: every
//! dependency answers), for load-balancer and Kubernetes probes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use hub_core::DependencyProbe;
use serde_json::{Map, Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A service's name and the dependencies its readiness depends on.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    probes: Vec<Arc<dyn DependencyProbe>>,
    timeout: Duration,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("service", &self.service)
            .field(
                "probes",
                &self.probes.iter().map(|p| p.name()).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl Readiness {
    pub fn new(service: &'static str, timeout: Duration) -> Self {
        Self {
            service,
            probes: Vec::new(),
            timeout,
        }
    }

    /// Adds a dependency that must answer for the service to be ready.
    pub fn with(mut self, probe: Arc<dyn DependencyProbe>) -> Self {
        self.probes.push(probe);
        self
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Probes every dependency at once, each within the timeout.
    pub async fn check(&self) -> (bool, Map<String, Value>) {
        let mut tasks = tokio::task::JoinSet::new();
        for probe in &self.probes {
            let probe = Arc::clone(probe);
            let timeout = self.timeout;
            tasks.spawn(async move {
                let outcome = tokio::time::timeout(timeout, probe.probe()).await;
                (probe.name(), outcome)
            });
        }
        let mut ready = true;
        let mut checks = Map::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, outcome)) = joined else {
                ready = false;
                continue;
            };
            let detail = match outcome {
                Ok(Ok(latency)) => json!({
                    "status": "OK",
                    "latency_ms": latency.as_secs_f64() * 1000.0,
                }),
                Ok(Err(e)) => {
                    ready = false;
                    tracing::warn!(dependency = name, error = %e, "readiness check failed");
                    json!({ "status": "ERROR" })
                }
                Err(_) => {
                    ready = false;
                    tracing::warn!(dependency = name, timeout = ?self.timeout, "readiness check timed out");
                    json!({ "status": "ERROR" })
                }
            };
            checks.insert(name.to_owned(), detail);
        }
        (ready, checks)
    }
}

fn now() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}

async fn health(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    Json(json!({
        "service": readiness.service,
        "status": "OK",
        "timestamp": now(),
    }))
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> impl IntoResponse {
    let (ok, checks) = readiness.check().await;
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "service": readiness.service,
        "status": if ok { "OK" } else { "ERROR" },
        "timestamp": now(),
        "checks": checks,
    });
    (status, Json(body))
}

/// `/health` and `/ready` for one service.
pub fn routes(readiness: Readiness) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(Arc::new(readiness))
}
