//! Prometheus text exposition (format 0.0.4) for `/metrics`: request counts
//! and latencies by route and status for every HTTP service, by method and
//! status code for gRPC calls, and whatever a service adds through
//! [`MetricsSource`].

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderMap, header};
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

impl Series {
    fn observe(&mut self, seconds: f64) {
        self.count += 1;
        self.sum += seconds;
        for (bucket, bound) in self.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    fn merge(&mut self, other: &Series) {
        self.count += other.count;
        self.sum += other.sum;
        for (mine, theirs) in self.buckets.iter_mut().zip(other.buckets) {
            *mine += theirs;
        }
    }

    /// The `_bucket`, `_sum` and `_count` samples of histogram `name`.
    #[allow(clippy::cast_precision_loss)] // counts are exact below 2^53
    fn write(&self, out: &mut Exposition, name: &str, labels: &[(&str, &str)]) {
        let bucket = format!("{name}_bucket");
        for (bound, count) in BUCKETS.iter().zip(self.buckets) {
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", le.as_str()));
            out.sample(&bucket, &with_le, count as f64);
        }
        let mut with_le = labels.to_vec();
        with_le.push(("le", "+Inf"));
        out.sample(&bucket, &with_le, self.count as f64);
        out.sample(&format!("{name}_sum"), labels, self.sum);
        out.sample(&format!("{name}_count"), labels, self.count as f64);
    }
}

/// Requests of one service: HTTP by method, route and status; gRPC calls by
/// method and status code (`OK`, `UNAUTHENTICATED`, ...), which gRPC sends
/// in trailers, after an HTTP 200.
#[derive(Debug)]
pub struct HttpMetrics {
    service: &'static str,
    /// The gRPC methods the service implements (`/package.Service/Method`):
    /// the closed set of gRPC method labels; any other path is `other`.
    grpc_methods: BTreeSet<String>,
    series: Mutex<BTreeMap<(String, String, u16), Series>>,
    grpc: Mutex<BTreeMap<(String, &'static str), Series>>,
}

impl HttpMetrics {
    pub fn new(service: &'static str) -> Self {
        Self::with_grpc_methods(service, BTreeSet::new())
    }

    pub fn with_grpc_methods(service: &'static str, grpc_methods: BTreeSet<String>) -> Self {
        Self {
            service,
            grpc_methods,
            series: Mutex::new(BTreeMap::new()),
            grpc: Mutex::new(BTreeMap::new()),
        }
    }

    /// A gRPC path as a label: a method the service implements, or `other`.
    fn grpc_label(&self, path: &str) -> String {
        if self.grpc_methods.contains(path) {
            path.to_owned()
        } else {
            OTHER.to_owned()
        }
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        if let Ok(mut series) = self.series.lock() {
            series
                .entry((method.to_owned(), route.to_owned(), status))
                .or_default()
                .observe(seconds);
        }
    }

    /// One finished gRPC call of `method` (`/package.Service/Method`).
    pub fn observe_grpc(&self, method: &str, code: &'static str, seconds: f64) {
        if let Ok(mut grpc) = self.grpc.lock() {
            grpc.entry((method.to_owned(), code))
                .or_default()
                .observe(seconds);
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
            by_route.entry((method, route)).or_default().merge(s);
        }
        for ((method, route), s) in by_route {
            let labels = [
                ("service", self.service),
                ("method", method),
                ("route", route),
            ];
            s.write(out, "polyhub_http_request_duration_seconds", &labels);
        }

        let grpc = match self.grpc.lock() {
            Ok(grpc) => grpc.clone(),
            Err(_) => return,
        };
        if grpc.is_empty() {
            return;
        }
        out.family(
            "counter",
            "polyhub_grpc_requests_total",
            "gRPC calls finished, by service, method and status code.",
        );
        for ((method, code), s) in &grpc {
            let labels = [
                ("service", self.service),
                ("method", method.as_str()),
                ("code", code),
            ];
            #[allow(clippy::cast_precision_loss)]
            out.sample("polyhub_grpc_requests_total", &labels, s.count as f64);
        }
        out.family(
            "histogram",
            "polyhub_grpc_request_duration_seconds",
            "Time from a call's start to its status, by service and method.",
        );
        let mut by_method: BTreeMap<&str, Series> = BTreeMap::new();
        for ((method, _), s) in &grpc {
            by_method.entry(method).or_default().merge(s);
        }
        for (method, s) in by_method {
            let labels = [("service", self.service), ("method", method)];
            s.write(out, "polyhub_grpc_request_duration_seconds", &labels);
        }
    }
}

/// The name of a gRPC status code, as the gRPC specification spells it.
fn grpc_code_name(code: i32) -> &'static str {
    match code {
        0 => "OK",
        1 => "CANCELLED",
        3 => "INVALID_ARGUMENT",
        4 => "DEADLINE_EXCEEDED",
        5 => "NOT_FOUND",
        6 => "ALREADY_EXISTS",
        7 => "PERMISSION_DENIED",
        8 => "RESOURCE_EXHAUSTED",
        9 => "FAILED_PRECONDITION",
        10 => "ABORTED",
        11 => "OUT_OF_RANGE",
        12 => "UNIMPLEMENTED",
        13 => "INTERNAL",
        14 => "UNAVAILABLE",
        15 => "DATA_LOSS",
        16 => "UNAUTHENTICATED",
        _ => "UNKNOWN",
    }
}

/// The `grpc-status` in headers or trailers, by name.
fn grpc_status(headers: &HeaderMap) -> Option<&'static str> {
    let code = headers.get("grpc-status")?.to_str().ok()?.parse().ok()?;
    Some(grpc_code_name(code))
}

/// A gRPC call whose status is still to come.
struct PendingCall {
    metrics: Arc<HttpMetrics>,
    method: String,
    started: Instant,
}

impl PendingCall {
    fn finish(self, code: &'static str) {
        self.metrics
            .observe_grpc(&self.method, code, self.started.elapsed().as_secs_f64());
    }
}

/// The label of anything outside a closed set (a made-up method).
const OTHER: &str = "other";

/// The HTTP method as a label: the methods the services answer, and
/// `other` for anything a client makes up.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        _ => OTHER,
    }
}

/// A gRPC response body that records the call when its trailers (and so its
/// status) go out: `UNKNOWN` if it ends without one, `CANCELLED` if the
/// client goes away first.
struct GrpcResponseBody {
    inner: Body,
    pending: Option<PendingCall>,
}

impl http_body::Body for GrpcResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let outcome = match &polled {
            Poll::Ready(Some(Ok(frame))) => frame
                .trailers_ref()
                .map(|trailers| grpc_status(trailers).unwrap_or("UNKNOWN")),
            Poll::Ready(Some(Err(_)) | None) => Some("UNKNOWN"),
            Poll::Pending => None,
        };
        if let Some(code) = outcome
            && let Some(call) = this.pending.take()
        {
            call.finish(code);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for GrpcResponseBody {
    fn drop(&mut self) {
        if let Some(call) = self.pending.take() {
            call.finish("CANCELLED");
        }
    }
}

/// Feeds [`HttpMetrics`] around `next` (a step of the outermost middleware,
/// `http::observed`): routes by their pattern
/// (`/api/sessions/{user_id}`), gRPC calls by their method path and status
/// code, anything unrouted as `unmatched`, so labels stay bounded.
pub(crate) async fn record<Run: std::future::Future<Output = Response>>(
    metrics: Arc<HttpMetrics>,
    request: Request,
    next: impl FnOnce(Request) -> Run,
) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let matched = request
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_owned());
    let grpc = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("application/grpc"))
        && matched.is_some();
    if grpc {
        let call = PendingCall {
            method: metrics.grpc_label(request.uri().path()),
            metrics,
            started,
        };
        let response = next(request).await;
        // Refused before any message: the status is in the headers.
        if let Some(code) = grpc_status(response.headers()) {
            call.finish(code);
            return response;
        }
        let (parts, body) = response.into_parts();
        let body = GrpcResponseBody {
            inner: body,
            pending: Some(call),
        };
        return Response::from_parts(parts, Body::new(body));
    }
    let route = matched.unwrap_or_else(|| "unmatched".to_owned());
    let response = next(request).await;
    metrics.observe(
        method,
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
    out.counter(
        "polyhub_log_lines_dropped_total",
        "Log lines dropped because standard error did not keep up with them (16,384 may wait).",
        crate::telemetry::dropped_lines(),
    );
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

    fn pending(metrics: &Arc<HttpMetrics>, body: Body) -> GrpcResponseBody {
        GrpcResponseBody {
            inner: body,
            pending: Some(PendingCall {
                metrics: Arc::clone(metrics),
                method: "/polyhub.Test/Call".to_owned(),
                started: Instant::now(),
            }),
        }
    }

    fn text(metrics: &HttpMetrics) -> String {
        let mut out = Exposition::new();
        metrics.write(&mut out);
        out.into_text()
    }

    #[tokio::test]
    async fn a_grpc_call_that_ends_without_a_status_is_unknown_and_one_dropped_is_cancelled() {
        let metrics = Arc::new(HttpMetrics::new("test"));
        let ended = pending(&metrics, Body::from("no trailers"));
        axum::body::to_bytes(Body::new(ended), usize::MAX)
            .await
            .unwrap();
        drop(pending(&metrics, Body::from("never sent")));
        let text = text(&metrics);
        assert!(
            text.contains(r#"polyhub_grpc_requests_total{service="test",method="/polyhub.Test/Call",code="UNKNOWN"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"polyhub_grpc_requests_total{service="test",method="/polyhub.Test/Call",code="CANCELLED"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn grpc_codes_are_named_as_the_specification_names_them() {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("UNAUTHENTICATED"));
        headers.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("OK"));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some("UNKNOWN"));
        assert_eq!(grpc_status(&HeaderMap::new()), None);
    }
}
