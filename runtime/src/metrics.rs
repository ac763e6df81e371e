//! Prometheus text exposition (format 0.0.4) for `/metrics`: request counts
//! and latencies by route and status for every HTTP service (and gRPC, which
//! rides on HTTP/2), and whatever a service adds through [`MetricsSource`].

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// One scrape's worth of metrics, written in order.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

/// Prometheus metric names are `[a-zA-Z_:][a-zA-Z0-9_:]*`; ours are static
/// and checked in tests, so this only guards against a typo at runtime.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn number(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        value.to_string()
    }
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    fn metric(&mut self, kind: &str, name: &str, help: &str, value: f64) -> &mut Self {
        if !valid_name(name) {
            tracing::error!(name, "metric name is invalid; skipped");
            return self;
        }
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        self.text.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
            number(value)
        ));
        self
    }

    /// A value that only goes up (since the process started).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        #[allow(clippy::cast_precision_loss)] // exact below 2^53
        self.metric("counter", name, help, value as f64)
    }

    /// A value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> &mut Self {
        self.metric("gauge", name, help, value)
    }

    /// The `# HELP` and `# TYPE` lines of a labelled family.
    pub fn family(&mut self, kind: &str, name: &str, help: &str) -> &mut Self {
        if valid_name(name) {
            let help = help.replace('\\', "\\\\").replace('\n', "\\n");
            self.text
                .push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        }
        self
    }

    /// One labelled sample of a family started with [`Self::family`].
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        if !valid_name(name) {
            return self;
        }
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| {
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                format!("{k}=\"{v}\"")
            })
            .collect();
        self.text.push_str(&format!(
            "{name}{{{}}} {}\n",
            labels.join(","),
            number(value)
        ));
        self
    }

    pub fn into_text(self) -> String {
        self.text
    }
}

/// Something a service adds to its `/metrics`.
#[async_trait::async_trait]
pub trait MetricsSource: Send + Sync + 'static {
    async fn collect(&self, out: &mut Exposition);
}

/// Latency buckets, in seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Debug, Default, Clone)]
struct Series {
    count: u64,
    sum: f64,
    buckets: [u64; BUCKETS.len()],
}

/// Requests of one service by method, route and status.
#[derive(Debug)]
pub struct HttpMetrics {
    service: &'static str,
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
}

impl HttpMetrics {
    pub fn new(service: &'static str) -> Self {
        Self {
            service,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let Ok(mut series) = self.series.lock() else {
            return;
        };
        let entry = series
            .entry((method.to_owned(), route.to_owned(), status))
            .or_default();
        entry.count += 1;
        entry.sum += seconds;
        for (bucket, bound) in entry.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    pub fn write(&self, out: &mut Exposition) {
        let series = match self.series.lock() {
            Ok(series) => series.clone(),
            Err(_) => return,
        };
        out.family(
            "counter",
            "polyhub_http_requests_total",
            "Requests answered, by service, method, route and status.",
        );
        for ((method, route, status), s) in &series {
            let status = status.to_string();
            let labels = [
                ("service", self.service),
                ("method", method.as_str()),
                ("route", route.as_str()),
                ("status", status.as_str()),
            ];
            #[allow(clippy::cast_precision_loss)] // exact below 2^53
            out.sample("polyhub_http_requests_total", &labels, s.count as f64);
        }
        out.family(
            "histogram",
            "polyhub_http_request_duration_seconds",
            "Time to answer, by service, method and route.",
        );
        let mut by_route: BTreeMap<(&str, &str), Series> = BTreeMap::new();
        for ((method, route, _), s) in &series {
            let merged = by_route.entry((method, route)).or_default();
            merged.count += s.count;
            merged.sum += s.sum;
            for (m, b) in merged.buckets.iter_mut().zip(s.buckets) {
                *m += b;
            }
        }
        for ((method, route), s) in by_route {
            let base = [
                ("service", self.service),
                ("method", method),
                ("route", route),
            ];
            for (bound, count) in BUCKETS.iter().zip(s.buckets) {
                let le = bound.to_string();
                let mut labels = base.to_vec();
                labels.push(("le", le.as_str()));
                #[allow(clippy::cast_precision_loss)]
                out.sample(
                    "polyhub_http_request_duration_seconds_bucket",
                    &labels,
                    count as f64,
                );
            }
            let mut labels = base.to_vec();
            labels.push(("le", "+Inf"));
            #[allow(clippy::cast_precision_loss)]
            out.sample(
                "polyhub_http_request_duration_seconds_bucket",
                &labels,
                s.count as f64,
            );
            out.sample("polyhub_http_request_duration_seconds_sum", &base, s.sum);
            #[allow(clippy::cast_precision_loss)]
            out.sample(
                "polyhub_http_request_duration_seconds_count",
                &base,
                s.count as f64,
            );
        }
    }
}

/// The middleware that feeds [`HttpMetrics`]: routes by their pattern
/// (`/api/sessions/{user_id}`), gRPC calls by their method path, anything
/// unrouted as `unmatched`, so labels stay bounded.
pub async fn record(
    State(metrics): State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path();
    let route = if request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
        && request.extensions().get::<MatchedPath>().is_some()
    {
        path.to_owned()
    } else {
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_owned(), |m| m.as_str().to_owned())
    };
    let response = next.run(request).await;
    metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

/// `GET /metrics`: the service's requests, then what its sources add.
pub async fn render(
    metrics: Arc<HttpMetrics>,
    sources: Arc<Vec<Arc<dyn MetricsSource>>>,
) -> Exposition {
    let mut out = Exposition::new();
    metrics.write(&mut out);
    for source in sources.iter() {
        source.collect(&mut out).await;
    }
    out
}

/// The hashing pool's load, for services that hash passwords.
#[derive(Debug, Clone)]
pub struct HashingMetrics(pub hub_core::HashingPool);

#[async_trait::async_trait]
impl MetricsSource for HashingMetrics {
    async fn collect(&self, out: &mut Exposition) {
        let load = self.0.load();
        #[allow(clippy::cast_precision_loss)]
        out.gauge(
            "polyhub_hashing_running",
            "Password hashes running now.",
            load.running as f64,
        )
        .gauge(
            "polyhub_hashing_waiting",
            "Password hashes waiting for a worker.",
            load.waiting as f64,
        )
        .gauge(
            "polyhub_hashing_capacity",
            "Hashes that may run or wait before OVERLOADED.",
            load.capacity as f64,
        );
    }
}

impl IntoResponse for Exposition {
    fn into_response(self) -> Response {
        (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            self.text,
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_help_type_and_value() {
        let mut metrics = Exposition::new();
        metrics
            .counter("polyhub_things_total", "Things done.", 3)
            .gauge("polyhub_lag_seconds", "How far behind.\nSecond line.", 0.25)
            .gauge("bad name", "skipped", 1.0);
        assert_eq!(
            metrics.into_text(),
            "# HELP polyhub_things_total Things done.\n\
             # TYPE polyhub_things_total counter\n\
             polyhub_things_total 3\n\
             # HELP polyhub_lag_seconds How far behind.\\nSecond line.\n\
             # TYPE polyhub_lag_seconds gauge\n\
             polyhub_lag_seconds 0.25\n"
        );
    }
}
