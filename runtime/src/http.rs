//! The HTTP side every service shares: one request id per request, one JSON
//! error shape `{"error":{"code","message"},"request_id"}`, and rejections,
//! unknown routes, wrong methods and panics all answered in that shape.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use hub_core::{Error, ErrorCode, ErrorKind};
use serde::de::DeserializeOwned;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

use crate::config::HttpConfig;
use crate::health::{self, Readiness};
use crate::metrics::HttpMetrics;

/// The header that carries the request id, both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The HTTP status for each kind of error: the one mapping, used by every
/// HTTP service (docs/ERRORS.md shows the same table).
pub fn status_for(kind: ErrorKind) -> StatusCode {
    crate::errors::mapping(kind).http
}

/// An error on its way to an HTTP client.
#[derive(Debug)]
pub struct HttpError {
    error: Error,
    status: Option<StatusCode>,
    retry_after: Option<Duration>,
}

impl HttpError {
    /// An error whose status is not its kind's (405, 415): the code stays the same.
    pub fn with_status(status: StatusCode, error: Error) -> Self {
        Self {
            error,
            status: Some(status),
            retry_after: None,
        }
    }

    /// Tells the client when to come back (sent as `Retry-After`).
    pub fn retry_after(mut self, after: Duration) -> Self {
        self.retry_after = Some(after);
        self
    }

    pub fn error(&self) -> &Error {
        &self.error
    }

    /// The status it is answered with.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or_else(|| status_for(self.error.kind()))
    }

    /// When the client may come back, if it was told.
    pub fn wait(&self) -> Option<Duration> {
        self.retry_after
    }
}

/// A use case's refusal: its kind's status, and the wait a budget named
/// (if one did) as `Retry-After`.
impl From<Error> for HttpError {
    fn from(error: Error) -> Self {
        Self {
            retry_after: error.retry_after(),
            error,
            status: None,
        }
    }
}

impl From<ErrorCode> for HttpError {
    fn from(code: ErrorCode) -> Self {
        Error::new(code).into()
    }
}

/// What the request-context middleware needs to write the error body with the
/// request id in it.
#[derive(Debug, Clone)]
struct RenderedError {
    code: &'static str,
    message: String,
}

fn error_body(code: &str, message: &str, request_id: Option<&str>) -> String {
    serde_json::json!({
        "error": { "code": code, "message": message },
        "request_id": request_id,
    })
    .to_string()
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let kind = self.error.kind();
        let status = self.status.unwrap_or_else(|| status_for(kind));
        crate::errors::log_failure(&self.error);
        let code = self.error.code().as_str();
        let message = self.error.message().to_owned();
        let mut response = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            error_body(code, &message, None),
        )
            .into_response();
        // A body refused unread (too large, too slow) leaves the connection
        // unusable: say so, so the client does not send another on it.
        if matches!(
            status,
            StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT
        ) {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if kind == ErrorKind::Unauthenticated {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"polyhub\""),
            );
        }
        let retry_after = self
            .retry_after
            .or_else(|| (kind == ErrorKind::TooMany).then_some(Duration::from_secs(1)));
        if let Some(after) = retry_after {
            response.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(after.as_secs().max(1)),
            );
        }
        response
            .extensions_mut()
            .insert(RenderedError { code, message });
        response
    }
}

/// A JSON request body whose every rejection is in the hub's error shape,
/// never the framework's plain-text default: a body over
/// `http.max_body_bytes` is 413 `REQUEST_TOO_LARGE`, one that arrives too
/// slowly 408 `REQUEST_TIMEOUT`, and anything else (wrong content type, bad
/// syntax, missing or mistyped fields) 400 `INVALID_REQUEST`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonBody<T>(pub T);

impl<S, T> FromRequest<S> for JsonBody<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::rejection::JsonRejection;
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(JsonBody(value)),
            Err(JsonRejection::BytesRejection(rejection))
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE =>
            {
                Err(Error::new(ErrorCode::RequestTooLarge).into())
            }
            Err(JsonRejection::BytesRejection(rejection))
                if crate::pacing::is_slow_body(&rejection) =>
            {
                Err(HttpError::with_status(
                    StatusCode::REQUEST_TIMEOUT,
                    Error::with_message(ErrorCode::RequestTimeout, rejection.body_text()),
                ))
            }
            Err(rejection) => {
                let message = match &rejection {
                    JsonRejection::MissingJsonContentType(_) => {
                        "expected a body with Content-Type: application/json".to_owned()
                    }
                    JsonRejection::JsonSyntaxError(_) => "the body is not valid JSON".to_owned(),
                    JsonRejection::JsonDataError(e) => e.body_text(),
                    JsonRejection::BytesRejection(_) => {
                        "the body is too large or could not be read".to_owned()
                    }
                    other => other.body_text(),
                };
                Err(Error::with_message(ErrorCode::InvalidRequest, message).into())
            }
        }
    }
}

/// A query string whose rejections are 400 `INVALID_REQUEST` in the hub's
/// error shape, as for [`JsonBody`].
#[derive(Debug, Clone, Copy, Default)]
pub struct QueryParams<T>(pub T);

impl<S, T> FromRequestParts<S> for QueryParams<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(value)) => Ok(QueryParams(value)),
            Err(rejection) => {
                Err(Error::with_message(ErrorCode::InvalidRequest, rejection.body_text()).into())
            }
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header. A missing or
/// malformed header is 401 `INVALID_TOKEN` in the hub's error shape.
#[derive(Clone)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for BearerToken {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                Error::with_message(
                    ErrorCode::InvalidToken,
                    "an Authorization: Bearer token is required",
                )
            })?;
        let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
        let token = token.trim();
        if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
            return Err(Error::with_message(
                ErrorCode::InvalidToken,
                "the Authorization header must be 'Bearer <token>'",
            )
            .into());
        }
        Ok(BearerToken(token.to_owned()))
    }
}

/// CORS from an allow-list: only listed origins get CORS headers, so a
/// browser on any other origin is refused; an empty list allows none.
/// Origins that are not valid header values are skipped with a warning.
/// Marks an answer `Cache-Control: no-store`: for routes whose answers are
/// personal, and so are their refusals. Applied as a layer
/// (`axum::middleware::map_response(no_store)`), so it also covers the
/// rejections of extractors that run before a handler, and a route added
/// under the layer later.
pub async fn no_store(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

pub fn cors_layer(config: &crate::config::CorsConfig) -> tower_http::cors::CorsLayer {
    use axum::http::Method;
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let origins: Vec<HeaderValue> = config
        .allowed_origins
        .iter()
        .filter_map(|o| match HeaderValue::from_str(o.trim_end_matches('/')) {
            Ok(v) => Some(v),
            Err(_) => {
                tracing::warn!(origin = %o, "ignoring a CORS origin that is not a valid header value");
                None
            }
        })
        .collect();
    CorsLayer::new()
        .allow_origin(AllowOrigin::list(origins))
        .allow_methods([Method::GET, Method::POST, Method::PUT, Method::DELETE])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            REQUEST_ID.clone(),
        ])
        .expose_headers([REQUEST_ID.clone(), header::RETRY_AFTER])
        .allow_credentials(config.allow_credentials)
        .max_age(Duration::from_secs(600))
}

/// Keeps a client's request id when it is a sane token (so a caller can
/// correlate across services), and makes a new one otherwise.
fn request_id_of(req: &Request) -> String {
    req.headers()
        .get(&REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map_or_else(|| uuid::Uuid::now_v7().to_string(), str::to_owned)
}

async fn request_context(mut req: Request, next: Next) -> Response {
    let id = request_id_of(&req);
    if let Ok(value) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    let mut response = next.run(req).await;
    if let Some(rendered) = response.extensions_mut().remove::<RenderedError>() {
        let body = error_body(rendered.code, &rendered.message, Some(&id));
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = Body::from(body);
    }
    if let Ok(value) = HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID.clone(), value);
    }
    response
}

async fn not_found() -> HttpError {
    Error::with_message(ErrorCode::NotFound, "no such route").into()
}

async fn method_not_allowed() -> HttpError {
    HttpError::with_status(
        StatusCode::METHOD_NOT_ALLOWED,
        Error::with_message(
            ErrorCode::InvalidRequest,
            "method not allowed on this route",
        ),
    )
}

fn panicked(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    HttpError::from(Error::internal("a request handler panicked")).into_response()
}

/// Wraps a service's own routes with what every service has: `/health`,
/// `/ready`, request ids, tracing, body limits, and JSON errors for unknown
/// routes, wrong methods and panics.
///
/// `/metrics` has the service's request counts and latencies by route and
/// status, then what the readiness's metrics sources add.
pub fn service_router(routes: Router, readiness: Readiness, config: &HttpConfig) -> Router {
    grpc_service_router(routes, readiness, config, std::collections::BTreeSet::new())
}

/// As [`service_router`], for a port that also serves gRPC: `grpc_methods`
/// (`/package.Service/Method`) are the method labels its metrics may use.
pub fn grpc_service_router(
    routes: Router,
    readiness: Readiness,
    config: &HttpConfig,
    grpc_methods: std::collections::BTreeSet<String>,
) -> Router {
    let service = readiness.service();
    let metrics = Arc::new(HttpMetrics::with_grpc_methods(service, grpc_methods));
    let sources = Arc::new(readiness.metrics_sources());
    let scrape = {
        let metrics = Arc::clone(&metrics);
        axum::routing::get(move || {
            crate::metrics::render(Arc::clone(&metrics), Arc::clone(&sources))
        })
    };
    routes
        .route("/metrics", scrape)
        .merge(health::routes(readiness))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // One `layer` call: every call wraps the routes in a box of its own,
        // and each request clones the boxes of the stack from the outside in.
        // Outermost first.
        .layer(
            tower::ServiceBuilder::new()
                .layer(middleware::from_fn_with_state(metrics, observed))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(move |req: &Request| {
                            let request_id = req
                                .headers()
                                .get(&REQUEST_ID)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("");
                            // The route's pattern, not the client's path: bounded, and
                            // what the metrics are labelled with too.
                            let route = req
                                .extensions()
                                .get::<axum::extract::MatchedPath>()
                                .map_or("unmatched", |m| m.as_str());
                            tracing::info_span!(
                                "request",
                                service,
                                method = %req.method(),
                                route,
                                request_id,
                                // Who called, once a service has authenticated
                                // them (SOAP's WS-Security): on the access line.
                                caller = tracing::field::Empty,
                            )
                        })
                        .on_request(())
                        .on_failure(())
                        .on_response(AccessLog::new(config)),
                )
                .layer(CatchPanicLayer::custom(panicked))
                .layer(middleware::from_fn_with_state(
                    Arc::new(ClientEdge {
                        proxies: crate::forwarded::TrustedProxies::new(&config.trusted_proxies),
                        ipv6_prefix: config.client_ipv6_prefix,
                        limits: crate::pacing::RequestLimits::new(config),
                    }),
                    client_edge,
                ))
                .layer(DefaultBodyLimit::max(config.max_body_bytes)),
        )
}

/// One access line per request, inside its span (so with its method, route
/// and request id): status and latency. `http.access_log` chooses which
/// requests are written (`all`, `errors`: 4xx and 5xx only, or `off`), and
/// `http.access_log_sample` writes one in N of the rest; errors are never
/// sampled away.
#[derive(Debug, Clone)]
struct AccessLog {
    mode: crate::config::AccessLogMode,
    sample: u64,
    seen: Arc<std::sync::atomic::AtomicU64>,
}

impl AccessLog {
    fn new(config: &HttpConfig) -> Self {
        Self {
            mode: config.access_log,
            sample: u64::from(config.access_log_sample.max(1)),
            seen: Arc::default(),
        }
    }
}

impl<B> tower_http::trace::OnResponse<B> for AccessLog {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, _: &tracing::Span) {
        use crate::config::AccessLogMode;
        let status = response.status();
        let error = status.is_client_error() || status.is_server_error();
        let write = match self.mode {
            AccessLogMode::Off => false,
            AccessLogMode::Errors => error,
            AccessLogMode::All => {
                error
                    || self
                        .seen
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                        .is_multiple_of(self.sample)
            }
        };
        if write {
            tracing::info!(
                status = status.as_u16(),
                latency_ms = latency.as_secs_f64() * 1000.0,
                "request"
            );
        }
    }
}

/// Runs the request with any password hashing it asks for counted against
/// its client's share of the pool (an IPv4 address or an IPv6 network), so
/// one client's flood is refused on its own share. Hashing the core does for
/// a signed-in account (`run_for_account`) counts against that account's
/// share as well, and within the accounts' half of this client's share.
async fn hash_as_client<Run: std::future::Future<Output = Response>>(
    ipv6_prefix: u8,
    request: Request,
    next: impl FnOnce(Request) -> Run,
) -> Response {
    let client = request
        .extensions()
        .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
        .map(|info| crate::connections::client_key(info.0.ip(), ipv6_prefix));
    match client {
        Some(client) => hub_core::as_client(client.to_string().into(), next(request)).await,
        None => next(request).await,
    }
}

/// What the client side of a routed request passes through, in order:
/// the forwarded client replaces the peer (trusted gateways only), its
/// share of the hashing pools is set, then its body is paced and the
/// whole request is given a deadline.
#[derive(Debug)]
struct ClientEdge {
    proxies: crate::forwarded::TrustedProxies,
    ipv6_prefix: u8,
    limits: crate::pacing::RequestLimits,
}

/// [`ClientEdge`] as one middleware. Each `from_fn` layer boxes its future
/// and clones the whole stack below it on every request (callgrind: most of
/// a token check's instructions were these clones), so the steps that
/// always run back to back are one layer.
async fn client_edge(
    axum::extract::State(edge): axum::extract::State<Arc<ClientEdge>>,
    request: Request,
    next: Next,
) -> Response {
    crate::forwarded::forwarded_client(&edge.proxies, request, |request| {
        hash_as_client(edge.ipv6_prefix, request, |request| {
            crate::pacing::guard(edge.limits, request, |request| next.run(request))
        })
    })
    .await
}

/// The outermost middleware, for the same reason as [`client_edge`]: the
/// request's metrics, around its request id and error body.
async fn observed(
    axum::extract::State(metrics): axum::extract::State<Arc<HttpMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    crate::metrics::record(metrics, request, |request| request_context(request, next)).await
}
