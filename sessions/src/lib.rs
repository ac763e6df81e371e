//! sessions: session lifecycle over REST/JSON (port 5004), when each user was
//! last seen (port 5020), and the relay that carries session events from the
//! PostgreSQL outbox into MongoDB.
//!
//! A library: [`router`] and [`tracker_router`] build the two services apart
//! from running them, so the `hub` binary and the tests mount the same
//! handlers. PostgreSQL decides whether a session is open; MongoDB only holds
//! history, so everything on 5004 keeps working while MongoDB is away and
//! `/last-connection` answers 503 `UNAVAILABLE`.

pub mod api;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use hub_core::{ClientInfo, Error, Outbox, RelayStatus, SessionId, SessionLifecycle, UserId};
use hub_runtime::health::ReadinessDetail;
use hub_runtime::metrics::{Exposition, MetricsSource};
use hub_runtime::{BearerToken, HttpError, IDENTITY_HEADERS, QueryParams, Service, ServiceContext};
use serde_json::{Value, json};

use crate::api::{
    DeleteQuery, LastConnectionView, ListQuery, NewSession, Revoked, SessionList, SessionView,
    Touched, Verified, VerifiedClient,
};

/// What the handlers need.
#[derive(Clone)]
pub struct SessionsState {
    pub lifecycle: SessionLifecycle,
    /// The relay's counters (this process's relay, when it runs one).
    pub relay: Option<Arc<RelayStatus>>,
    pub outbox: Arc<dyn Outbox>,
    /// Client-credentials tokens, which `/api/sessions/verify` takes too.
    pub oauth: hub_core::OAuth,
}

impl std::fmt::Debug for SessionsState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionsState").finish_non_exhaustive()
    }
}

fn user_id(raw: &str) -> Result<UserId, HttpError> {
    Ok(UserId::parse(raw)?)
}

/// `POST /api/sessions`: another session for the caller, with its own token.
async fn open(
    State(state): State<Arc<SessionsState>>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    BearerToken(token): BearerToken,
) -> Result<(StatusCode, Json<NewSession>), HttpError> {
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok());
    let (session, issued) = state
        .lifecycle
        .open_additional(&token, ClientInfo::new(Some(addr.ip()), user_agent))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(NewSession {
            session: SessionView::new(&session, Some(session.id), state.lifecycle.now()),
            token: issued.token,
            token_type: "Bearer".to_owned(),
            expires_in: issued.expires_in,
        }),
    ))
}

/// `GET /api/sessions/verify`: what other services and gateways call. The
/// identity is also in response headers ([`IDENTITY_HEADERS`]), which is
/// all nginx's `auth_request` can read of the answer.
async fn verify(
    State(state): State<Arc<SessionsState>>,
    BearerToken(token): BearerToken,
) -> Result<Response, HttpError> {
    let principal = match state.lifecycle.verify(&token).await {
        Ok(principal) => principal,
        Err(refused) if refused.code() == hub_core::ErrorCode::InvalidToken => {
            // An app's token (an OpenID Connect grant): its user and
            // session, as a user's own token would say, for a gateway
            // passing it to what an app may call; each service checks
            // the app's scope itself.
            if let Ok(app) = state.oauth.app(&token).await {
                let principal = app.principal;
                let [user, session, role] = IDENTITY_HEADERS;
                let identity = [
                    (user, principal.user_id.to_string()),
                    (session, principal.session_id.to_string()),
                    (role, principal.role.as_str().to_owned()),
                ];
                return Ok((
                    identity,
                    Json(Verified {
                        valid: true,
                        user_id: principal.user_id.as_uuid(),
                        session_id: principal.session_id.as_uuid(),
                        role: principal.role.as_str().to_owned(),
                        expires_at: principal.expires_at,
                    }),
                )
                    .into_response());
            }
            // A client's own token (client credentials): no user, no
            // session, so no identity headers; its scopes say what it may do.
            let Ok(client) = state.oauth.machine(&token).await else {
                return Err(refused.into());
            };
            return Ok(Json(VerifiedClient {
                valid: true,
                client_id: client.client_id,
                scope: client.scopes.to_string(),
                expires_at: client.expires_at,
            })
            .into_response());
        }
        Err(refused) => return Err(refused.into()),
    };
    let [user, session, role] = IDENTITY_HEADERS;
    let user_id = principal.user_id.as_uuid();
    let session_id = principal.session_id.as_uuid();
    let identity = [
        (user, user_id.to_string()),
        (session, session_id.to_string()),
        (role, principal.role.as_str().to_owned()),
    ];
    Ok((
        identity,
        Json(Verified {
            valid: true,
            user_id,
            session_id,
            role: principal.role.as_str().to_owned(),
            expires_at: principal.expires_at,
        }),
    )
        .into_response())
}

/// `GET /api/sessions/{user_id}`: open sessions (or all), newest first.
async fn list(
    State(state): State<Arc<SessionsState>>,
    BearerToken(token): BearerToken,
    Path(user): Path<String>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<SessionList>, HttpError> {
    let principal = state.lifecycle.verify(&token).await?;
    let user = user_id(&user)?;
    let include_closed = match query.include.as_deref() {
        None | Some("open") => false,
        Some("all") => true,
        Some(_) => {
            return Err(Error::with_message(
                hub_core::ErrorCode::InvalidRequest,
                "include must be 'open' or 'all'",
            )
            .into());
        }
    };
    let before = query
        .page_token
        .as_deref()
        .map(SessionId::parse)
        .transpose()?;
    let page = state
        .lifecycle
        .list(
            &principal,
            user,
            include_closed,
            query.page_size.unwrap_or(api::DEFAULT_PAGE),
            before,
        )
        .await?;
    let now = state.lifecycle.now();
    Ok(Json(SessionList {
        sessions: page
            .sessions
            .iter()
            .map(|s| SessionView::new(s, Some(principal.session_id), now))
            .collect(),
        next_page_token: page.next.map(|id| id.to_string()),
    }))
}

/// `PUT /api/sessions/{user_id}`: keeps the caller's current session alive.
async fn touch(
    State(state): State<Arc<SessionsState>>,
    BearerToken(token): BearerToken,
    Path(user): Path<String>,
) -> Result<Json<Touched>, HttpError> {
    let principal = state.lifecycle.verify(&token).await?;
    let user = user_id(&user)?;
    let (session, issued) = state.lifecycle.touch(&principal, user).await?;
    Ok(Json(Touched {
        session: SessionView::new(&session, Some(session.id), state.lifecycle.now()),
        token: issued.token,
        token_type: "Bearer".to_owned(),
        expires_in: issued.expires_in,
    }))
}

/// `DELETE /api/sessions/{user_id}[?session=ID]`: revokes all, or one.
async fn revoke(
    State(state): State<Arc<SessionsState>>,
    BearerToken(token): BearerToken,
    Path(user): Path<String>,
    QueryParams(query): QueryParams<DeleteQuery>,
) -> Result<Json<Revoked>, HttpError> {
    let principal = state.lifecycle.verify(&token).await?;
    let user = user_id(&user)?;
    let session = query.session.as_deref().map(SessionId::parse).transpose()?;
    let revoked = state.lifecycle.revoke(&principal, user, session).await?;
    Ok(Json(Revoked { revoked }))
}

/// The relay's counters and the outbox backlog, in `/metrics` on 5004.
struct RelayMetrics {
    relay: Option<Arc<RelayStatus>>,
    outbox: Arc<dyn Outbox>,
    lifecycle: SessionLifecycle,
}

#[async_trait::async_trait]
impl MetricsSource for RelayMetrics {
    async fn collect(&self, metrics: &mut Exposition) {
        let state = self;
        relay_metrics(state, metrics).await;
    }
}

async fn relay_metrics(state: &RelayMetrics, metrics: &mut Exposition) {
    if let Some(relay) = &state.relay {
        let status = relay.snapshot();
        metrics
            .counter(
                "polyhub_relay_delivered_total",
                "Session events the relay recorded in MongoDB.",
                status.delivered,
            )
            .counter(
                "polyhub_relay_repeated_total",
                "Session events delivered again and recognised as already recorded.",
                status.repeated,
            )
            .counter(
                "polyhub_relay_failures_total",
                "Relay delivery attempts that failed (MongoDB or PostgreSQL away).",
                status.failures,
            )
            .counter(
                "polyhub_relay_batches_total",
                "Batches the relay delivered.",
                status.batches,
            )
            .gauge(
                "polyhub_relay_lag_seconds",
                "Event time to delivery of the oldest event in the last delivered batch.",
                status.last_lag.as_secs_f64(),
            )
            .gauge(
                "polyhub_relay_failing",
                "1 while the relay's last attempt failed.",
                if status.failing { 1.0 } else { 0.0 },
            );
    }
    match state.outbox.backlog().await {
        Ok(backlog) => {
            let age = backlog
                .oldest
                .map(|oldest| (state.lifecycle.now() - oldest).as_seconds_f64().max(0.0))
                .unwrap_or(0.0);
            #[allow(clippy::cast_precision_loss)] // a count far below 2^53
            metrics
                .gauge(
                    "polyhub_outbox_backlog",
                    "Session events waiting in the outbox for delivery.",
                    backlog.pending as f64,
                )
                .gauge(
                    "polyhub_outbox_oldest_pending_age_seconds",
                    "Age of the oldest undelivered session event; 0 when none wait.",
                    age,
                )
                .gauge(
                    "polyhub_outbox_quarantined",
                    "Session events set aside as unreadable; `hub outbox retry` puts them back.",
                    backlog.quarantined as f64,
                );
        }
        Err(e) => tracing::warn!(error = %e, "outbox backlog not measured"),
    }
}

/// The relay and the outbox in `/ready` details: never a reason to be
/// unready (sessions work without MongoDB), always visible to operators.
struct RelayDetail {
    relay: Option<Arc<RelayStatus>>,
    outbox: Arc<dyn Outbox>,
}

#[async_trait::async_trait]
impl ReadinessDetail for RelayDetail {
    fn name(&self) -> &'static str {
        "relay"
    }

    async fn detail(&self) -> Value {
        let mut detail = match &self.relay {
            Some(relay) => {
                let status = relay.snapshot();
                json!({
                    "running": true,
                    "status": if status.failing { "RETRYING" } else { "OK" },
                    "delivered": status.delivered,
                    "repeated": status.repeated,
                    "failures": status.failures,
                    "last_lag_ms": status.last_lag.as_secs_f64() * 1000.0,
                    // The code and the time; the cause is in the log.
                    "last_error": status.last_error.map(|e| json!({
                        "code": e.code.as_str(),
                        "at": api::rfc3339(e.at),
                    })),
                })
            }
            None => json!({ "running": false }),
        };
        match self.outbox.backlog().await {
            Ok(backlog) => {
                detail["backlog"] = json!(backlog.pending);
                detail["quarantined"] = json!(backlog.quarantined);
                detail["oldest_pending"] = json!(backlog.oldest.map(api::rfc3339));
            }
            Err(e) => {
                tracing::warn!(error = %e, "outbox backlog not measured for /ready");
                detail["backlog_error"] = json!(e.code().as_str());
            }
        }
        detail
    }
}

/// The session API on 5004: its routes, `/metrics`, `/health` and `/ready`
/// (with the relay's details), behind the configured CORS allow-list.
pub fn router(state: SessionsState, mut context: ServiceContext) -> Result<Router, Error> {
    context.readiness = context
        .readiness
        .with_detail(Arc::new(RelayDetail {
            relay: state.relay.clone(),
            outbox: Arc::clone(&state.outbox),
        }))
        .with_metrics(Arc::new(RelayMetrics {
            relay: state.relay.clone(),
            outbox: Arc::clone(&state.outbox),
            lifecycle: state.lifecycle.clone(),
        }));
    let routes = Router::new()
        .route("/api/sessions", axum::routing::post(open))
        .route("/api/sessions/verify", get(verify))
        .route(
            "/api/sessions/{user_id}",
            get(list).put(touch).delete(revoke),
        )
        // Behind one Arc: every request clones the state, and a clone of
        // the use cases is a dozen reference counts touched across cores
        // (about 3% of a verify, profiled).
        .with_state(Arc::new(state))
        // Every answer is about one user (their sessions, tokens, addresses,
        // last connection), or why they may not have it: no cache keeps any.
        .layer(axum::middleware::map_response(hub_runtime::no_store));
    Ok(context.serve(routes))
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct LastConnectionQuery {
    username: Option<String>,
}

/// `GET /last-connection[?username=]`: read from MongoDB.
async fn last_connection(
    State(state): State<Arc<SessionsState>>,
    BearerToken(token): BearerToken,
    QueryParams(query): QueryParams<LastConnectionQuery>,
) -> Result<Json<LastConnectionView>, HttpError> {
    let principal = state.lifecycle.verify(&token).await?;
    let (user_id, username, last) = state
        .lifecycle
        .last_connection(&principal, query.username.as_deref())
        .await?;
    Ok(Json(LastConnectionView {
        user_id: user_id.as_uuid(),
        username: username.as_str().to_owned(),
        last_connection: last.as_ref().map(|l| l.at),
        session_id: last.map(|l| l.session_id.as_uuid()),
    }))
}

/// `GET /connected/health`: the tracker's liveness, under its own path.
async fn connected_health() -> Json<Value> {
    Json(json!({ "service": Service::SessionTracker.name(), "status": "OK" }))
}

/// The tracker on 5020: `/last-connection`, `/connected/health`, `/health`
/// and `/ready` (MongoDB required).
pub fn tracker_router(state: SessionsState, context: ServiceContext) -> Result<Router, Error> {
    let routes = Router::new()
        .route("/last-connection", get(last_connection))
        .route("/connected/health", get(connected_health))
        .with_state(Arc::new(state))
        // Every answer is about one user (their sessions, tokens, addresses,
        // last connection), or why they may not have it: no cache keeps any.
        .layer(axum::middleware::map_response(hub_runtime::no_store));
    Ok(context.serve(routes))
}
