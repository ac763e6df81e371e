//! `POST /v1/images` on 5015's HTTP side: the upload for clients that
//! cannot speak gRPC (a browser, curl), the REST shape the proto's
//! `google.api.http` annotation names. The raw image is the body; the same
//! use case, limits and codes as `UploadImage`: a bearer token, one of the
//! user's uploads in progress, the size cap the moment it is passed, the
//! stall timeout between chunks, then sanitizing and the quota.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use hub_runtime::upload::receive;
use hub_runtime::{BearerToken, HttpError};
use serde::Serialize;

use crate::ImagesState;

/// An image as the JSON upload answers it: the fields of the gRPC `Image`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ImageJson {
    pub id: String,
    pub url: String,
    pub content_type: String,
    pub size_bytes: u64,
    pub width: u32,
    pub height: u32,
    pub sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: time::OffsetDateTime,
    pub owner_id: String,
}

/// The hub's one error shape.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// `{"code": a stable code from docs/ERRORS.md, "message"}`.
    #[schema(value_type = Object)]
    pub error: serde_json::Value,
    pub request_id: Option<String>,
}

/// `POST /v1/images`
#[utoipa::path(
    post, path = "/v1/images", tag = "images",
    security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "image/png", description = "The image's bytes (PNG, JPEG, GIF or WebP, whatever the content type says)"),
    responses(
        (status = 201, description = "Sanitized and stored (or the same image the user stored before)", body = ImageJson),
        (status = 400, description = "EMPTY_UPLOAD, UNSUPPORTED_IMAGE_TYPE, CORRUPT_IMAGE or IMAGE_TOO_MANY_PIXELS", body = ErrorBody),
        (status = 401, description = "INVALID_TOKEN", body = ErrorBody),
        (status = 408, description = "REQUEST_TIMEOUT: no bytes for images.stall_timeout_ms", body = ErrorBody),
        (status = 413, description = "IMAGE_TOO_LARGE: past images.max_bytes", body = ErrorBody),
        (status = 429, description = "UPLOADS_IN_PROGRESS or QUOTA_EXCEEDED", body = ErrorBody),
        (status = 503, description = "UNAVAILABLE: the store or the database is away", body = ErrorBody),
    )
)]
pub(crate) async fn upload(
    State(state): State<ImagesState>,
    BearerToken(token): BearerToken,
    body: Body,
) -> Result<(StatusCode, Json<ImageJson>), HttpError> {
    let principal = state.authentication.authenticate(&token).await?;
    let _slot = state.library.begin_upload(&principal)?;
    let buffer = receive(
        body.into_data_stream(),
        state.library.new_upload(),
        state.stall_timeout,
    )
    .await?;
    let image = state.library.upload(&principal, buffer).await?;
    Ok((
        StatusCode::CREATED,
        Json(ImageJson {
            id: image.id.to_string(),
            url: state.urls.url(&image.key),
            content_type: image.content_type,
            size_bytes: image.size_bytes,
            width: image.width,
            height: image.height,
            sha256: image.sha256,
            created_at: image.created_at,
            owner_id: image.owner_id.to_string(),
        }),
    ))
}
