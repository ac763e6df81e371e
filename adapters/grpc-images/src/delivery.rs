//! Public delivery: `GET /images/{key}` streams a stored image to anyone,
//! with the stored content type, its ETag, long caching (keys are content
//! hashes, so a key's bytes never change), `nosniff`, and 304 for a
//! matching `If-None-Match`. Only keys of the shape the service writes are
//! served: anything else in the bucket is 404.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures_util::StreamExt;
use hub_core::{Error, ErrorCode, ObjectStore};
use hub_runtime::HttpError;

/// `users/{uuid}/{64 hex}.{png|jpg|gif|webp}`: what the service writes.
fn is_image_key(key: &str) -> bool {
    let mut parts = key.split('/');
    let (Some("users"), Some(owner), Some(file), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some((hash, ext)) = file.split_once('.') else {
        return false;
    };
    uuid::Uuid::try_parse(owner).is_ok()
        && hash.len() == 64
        && hash
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && matches!(ext, "png" | "jpg" | "gif" | "webp")
}

fn not_found() -> HttpError {
    Error::with_message(ErrorCode::NotFound, "no such image").into()
}

async fn deliver(
    State(store): State<Arc<dyn ObjectStore>>,
    Path(key): Path<String>,
    headers: HeaderMap,
) -> Result<Response, HttpError> {
    if !is_image_key(&key) {
        return Err(not_found());
    }
    let object = store.get(&key).await?.ok_or_else(not_found)?;
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

pub fn routes(store: Arc<dyn ObjectStore>) -> Router {
    Router::new()
        .route("/images/{*key}", get(deliver))
        .with_state(store)
}

#[cfg(test)]
mod tests {
    use super::is_image_key;

    #[test]
    fn only_keys_the_service_writes_are_served() {
        let hash = "a".repeat(64);
        let owner = "0190b0c4-52a1-7a3c-9d2e-1f2a3b4c5d6e";
        assert!(is_image_key(&format!("users/{owner}/{hash}.png")));
        for bad in [
            format!("users/{owner}/{hash}.svg"),
            format!("users/{owner}/../{hash}.png"),
            format!("users/not-a-uuid/{hash}.png"),
            format!("users/{owner}/{}.png", "A".repeat(64)),
            format!("other/{owner}/{hash}.png"),
            format!("users/{owner}/x/{hash}.png"),
            "users".to_owned(),
        ] {
            assert!(!is_image_key(&bad), "{bad}");
        }
    }
}
