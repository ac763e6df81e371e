//! `/admin/webhooks`: admins manage the URLs that receive the event log's
//! events (docs/EVENTS.md). Every call checks the caller's current role.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use hub_core::{EndpointId, EventTypes, WebhookEndpoint};
use hub_runtime::{BearerToken, HttpError, JsonBody};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::RestAuthState;
use crate::api::ErrorBody;

/// A new endpoint.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where events are POSTed: an absolute http(s) URL whose host is
    /// public (or in webhooks.allowed_networks).
    #[schema(example = "https://hr.example.com/hooks/polyhub", max_length = 2048)]
    pub url: String,
    /// Event types: exact (`user.created`), a prefix (`user.*`) or `*`.
    #[schema(example = json!(["user.*", "session.revoked"]))]
    pub events: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 200)]
    pub description: String,
}

/// An endpoint, never its secret.
#[derive(Debug, Serialize, ToSchema)]
pub struct Webhook {
    pub id: String,
    pub url: String,
    pub events: Vec<String>,
    pub description: String,
    pub created_at: Option<String>,
    pub created_by: Option<String>,
    /// `active`, `failing` (retrying with backoff) or `disabled`.
    #[schema(example = "active")]
    pub status: String,
    pub failing_since: Option<String>,
    /// The last failed delivery's reason.
    pub last_error: Option<String>,
    pub disabled_at: Option<String>,
    pub disabled_reason: Option<String>,
    /// While a rotated secret still signs beside the new one.
    pub previous_secret_until: Option<String>,
}

impl From<WebhookEndpoint> for Webhook {
    fn from(endpoint: WebhookEndpoint) -> Self {
        let shown = endpoint.to_json();
        let text = |field: &str| shown.get(field).and_then(|v| v.as_str()).map(str::to_owned);
        Self {
            id: endpoint.id.to_string(),
            url: endpoint.url,
            events: endpoint.types.as_slice().to_vec(),
            description: endpoint.description,
            created_at: text("created_at"),
            created_by: text("created_by"),
            status: text("status").unwrap_or_default(),
            failing_since: text("failing_since"),
            last_error: endpoint.last_error,
            disabled_at: text("disabled_at"),
            disabled_reason: endpoint.disabled_reason,
            previous_secret_until: text("previous_secret_until"),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Webhooks {
    pub endpoints: Vec<Webhook>,
}

/// A new endpoint with its signing secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedWebhook {
    #[serde(flatten)]
    pub endpoint: Webhook,
    /// `whsec_...`: give it to the receiver's Standard Webhooks library.
    pub secret: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedSecret {
    /// The new `whsec_...` secret, shown this once.
    pub secret: String,
    /// Until then deliveries carry a signature with the old secret too.
    pub previous_secret_until: Option<String>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Every event after this position (`id` of an event) is delivered
    /// again.
    pub after: i64,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Replayed {
    pub queued: u64,
}

fn endpoint_id(id: &str) -> Result<EndpointId, HttpError> {
    Ok(EndpointId::parse(id)?)
}

/// `GET /admin/webhooks`
#[utoipa::path(
    get, path = "/admin/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Every endpoint, oldest first", body = Webhooks),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: webhooks are for admins", body = ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
) -> Result<Json<Webhooks>, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let endpoints = state.webhooks.list(Some(&principal)).await?;
    Ok(Json(Webhooks {
        endpoints: endpoints.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /admin/webhooks`
#[utoipa::path(
    post, path = "/admin/webhooks", tag = "webhooks",
    security(("bearer" = [])),
    request_body = NewWebhook,
    responses(
        (status = 201, description = "Added; the secret is shown this once", body = CreatedWebhook),
        (status = 400, description = "INVALID_REQUEST (URL, event types) or WEBHOOK_TARGET_REFUSED (a loopback, private or metadata address)", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN: webhooks are for admins", body = ErrorBody),
        (status = 429, description = "QUOTA_EXCEEDED: webhooks.max_endpoints reached", body = ErrorBody),
    )
)]
pub(crate) async fn add(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    JsonBody(request): JsonBody<NewWebhook>,
) -> Result<Response, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    // The role first, so a non-admin learns nothing about URLs or types.
    state
        .authentication
        .require_admin(&principal, "managing webhooks is for admins")
        .await?;
    let types = EventTypes::parse(&request.events)?;
    let created = state
        .webhooks
        .add(Some(&principal), &request.url, types, &request.description)
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedWebhook {
            endpoint: created.endpoint.into(),
            secret: created.secret.shown(),
        }),
    )
        .into_response())
}

/// `GET /admin/webhooks/{id}`
#[utoipa::path(
    get, path = "/admin/webhooks/{id}", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "The endpoint", body = Webhook),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn get(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<Json<Webhook>, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let id = endpoint_id(&id)?;
    Ok(Json(state.webhooks.get(Some(&principal), id).await?.into()))
}

/// `DELETE /admin/webhooks/{id}`
#[utoipa::path(
    delete, path = "/admin/webhooks/{id}", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Deleted, with its queue"),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn delete(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let id = endpoint_id(&id)?;
    state.webhooks.delete(Some(&principal), id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /admin/webhooks/{id}/rotate-secret`
#[utoipa::path(
    post, path = "/admin/webhooks/{id}/rotate-secret", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 200, description = "A new secret; the old one signs beside it for webhooks.rotation_grace_hours", body = RotatedSecret),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn rotate_secret(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<Response, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let id = endpoint_id(&id)?;
    let (secret, until) = state.webhooks.rotate_secret(Some(&principal), id).await?;
    Ok(Json(RotatedSecret {
        secret: secret.shown(),
        previous_secret_until: until
            .format(&time::format_description::well_known::Rfc3339)
            .ok(),
    })
    .into_response())
}

/// `POST /admin/webhooks/{id}/replay`
#[utoipa::path(
    post, path = "/admin/webhooks/{id}/replay", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    request_body = ReplayRequest,
    responses(
        (status = 200, description = "The events after `after` of the endpoint's types, queued again", body = Replayed),
        (status = 400, description = "INVALID_REQUEST: the log no longer keeps that event", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn replay(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
    JsonBody(request): JsonBody<ReplayRequest>,
) -> Result<Json<Replayed>, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let id = endpoint_id(&id)?;
    let queued = state
        .webhooks
        .replay(Some(&principal), id, request.after)
        .await?;
    Ok(Json(Replayed { queued }))
}

/// `POST /admin/webhooks/{id}/enable`
#[utoipa::path(
    post, path = "/admin/webhooks/{id}/enable", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The endpoint's id")),
    responses(
        (status = 204, description = "Delivering again: new events, and with replay the missed ones"),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 403, description = "FORBIDDEN", body = ErrorBody),
        (status = 404, description = "NOT_FOUND", body = ErrorBody),
    )
)]
pub(crate) async fn enable(
    State(state): State<Arc<RestAuthState>>,
    BearerToken(token): BearerToken,
    Path(id): Path<String>,
) -> Result<StatusCode, HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let id = endpoint_id(&id)?;
    state.webhooks.enable(Some(&principal), id).await?;
    Ok(StatusCode::NO_CONTENT)
}
