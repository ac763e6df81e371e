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

/// Something an operator wants to see in `/ready` beside the dependencies
/// (a relay's backlog, say); it never makes the service unready.
#[async_trait::async_trait]
pub trait ReadinessDetail: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    async fn detail(&self) -> Value;
}

/// What a service reports about itself: its name, the dependencies its
/// readiness depends on, those it only reports (it keeps working without
/// them), details for `/ready`, and sources for `/metrics`.
#[derive(Clone)]
pub struct Readiness {
    service: &'static str,
    probes: Vec<(Arc<dyn DependencyProbe>, bool)>,
    details: Vec<Arc<dyn ReadinessDetail>>,
    metrics: Vec<Arc<dyn crate::metrics::MetricsSource>>,
    timeout: Duration,
}

impl std::fmt::Debug for Readiness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Readiness")
            .field("service", &self.service)
            .field(
                "probes",
                &self
                    .probes
                    .iter()
                    .map(|(p, _)| p.name())
                    .collect::<Vec<_>>(),
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
            details: Vec::new(),
            metrics: Vec::new(),
            timeout,
        }
    }

    /// Adds a dependency that must answer for the service to be ready.
    pub fn with(mut self, probe: Arc<dyn DependencyProbe>) -> Self {
        self.probes.push((probe, true));
        self
    }

    /// Adds a dependency that is reported but not required: the service
    /// degrades without it and stays ready.
    pub fn reporting(mut self, probe: Arc<dyn DependencyProbe>) -> Self {
        self.probes.push((probe, false));
        self
    }

    /// Adds what the service reports in `/metrics` beside its requests.
    pub fn with_metrics(mut self, source: Arc<dyn crate::metrics::MetricsSource>) -> Self {
        self.metrics.push(source);
        self
    }

    pub fn metrics_sources(&self) -> Vec<Arc<dyn crate::metrics::MetricsSource>> {
        self.metrics.clone()
    }

    /// Adds a detail shown in `/ready`.
    pub fn with_detail(mut self, detail: Arc<dyn ReadinessDetail>) -> Self {
        self.details.push(detail);
        self
    }

    pub fn service(&self) -> &'static str {
        self.service
    }

    /// Probes every dependency at once, each within the timeout.
    pub async fn check(&self) -> (bool, Map<String, Value>) {
        let mut tasks = tokio::task::JoinSet::new();
        for (probe, required) in &self.probes {
            let probe = Arc::clone(probe);
            let required = *required;
            let timeout = self.timeout;
            tasks.spawn(async move {
                let outcome = tokio::time::timeout(timeout, probe.probe()).await;
                (probe.name(), required, outcome)
            });
        }
        let mut ready = true;
        let mut checks = Map::new();
        while let Some(joined) = tasks.join_next().await {
            let Ok((name, required, outcome)) = joined else {
                ready = false;
                continue;
            };
            let mut detail = match outcome {
                Ok(Ok(latency)) => json!({
                    "status": "OK",
                    "latency_ms": latency.as_secs_f64() * 1000.0,
                }),
                Ok(Err(e)) => {
                    ready &= !required;
                    tracing::warn!(dependency = name, required, error = %e, "readiness check failed");
                    json!({ "status": "ERROR" })
                }
                Err(_) => {
                    ready &= !required;
                    tracing::warn!(dependency = name, required, timeout = ?self.timeout, "readiness check timed out");
                    json!({ "status": "ERROR" })
                }
            };
            if !required {
                detail["required"] = Value::Bool(false);
            }
            checks.insert(name.to_owned(), detail);
        }
        (ready, checks)
    }

    /// Every detail, each within the timeout.
    pub async fn details(&self) -> Map<String, Value> {
        let mut details = Map::new();
        for detail in &self.details {
            let value = tokio::time::timeout(self.timeout, detail.detail())
                .await
                .unwrap_or_else(|_| json!({ "status": "ERROR", "error": "timed out" }));
            details.insert(detail.name().to_owned(), value);
        }
        details
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
    let ((ok, checks), details) = tokio::join!(readiness.check(), readiness.details());
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
        "details": details,
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
