//! Public delivery: `GET /images/{key}` streams a stored image to anyone,
//! with the stored content type, its ETag, long caching (a key is written
//! once and its bytes never change), `nosniff`, and 304 for a
//! matching `If-None-Match`. Which keys exist is the image library's to say
//! (`ImageLibrary::open_public`): only keys of the shape it writes are
//! served, anything else in the bucket is 404.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use hub_core::ImageLibrary;
use hub_runtime::HttpError;

/// `GET /images/{key}`
#[utoipa::path(
    get, path = "/images/{key}", tag = "images",
    params(("key" = String, Path, description = "The image's key, as in its `url`")),
    responses(
        (status = 200, description = "The stored bytes, with their content type and ETag", content_type = "image/*"),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "NOT_FOUND", body = crate::upload::ErrorBody),
    )
)]
pub(crate) async fn deliver(
    State(library): State<ImageLibrary>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    let object = library.open_public(&key).await?;
    let etag = object
        .etag
        .as_deref()
        .and_then(|e| HeaderValue::from_str(e).ok());
    let mut response = if let (Some(etag), Some(wanted)) =
        (&etag, headers.get(header::IF_NONE_MATCH))
        && wanted
            .to_str()
            .is_ok_and(|w| w == "*" || w.split(',').any(|t| t.trim().as_bytes() == etag.as_bytes()))
    {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let body = Body::from_stream(
            object
                .body
                .map(|chunk| chunk.map_err(std::io::Error::other)),
        );
        let mut response = (StatusCode::OK, body).into_response();
        let headers = response.headers_mut();
        if let Ok(content_type) = HeaderValue::from_str(&object.content_type) {
            headers.insert(header::CONTENT_TYPE, content_type);
        }
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(object.length));
        response
    };
    let headers = response.headers_mut();
    if let Some(etag) = etag {
        headers.insert(header::ETAG, etag);
    }
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=31536000, immutable"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    Ok(response)
}

pub fn routes(library: ImageLibrary) -> Router {
    Router::new()
        .route("/images/{*key}", get(deliver))
        .with_state(library)
}
