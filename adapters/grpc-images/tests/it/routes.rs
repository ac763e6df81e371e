//! The HTTP side of grpc-images in memory: the service's own router over
//! an `ImageLibrary` on hub-core's in-memory image repository and object
//! store, signed in through the in-memory users and sessions, driven with
//! `oneshot`. No socket, no PostgreSQL, no S3: what an upload stores and
//! refuses is the core's; these check what the adapter makes of it.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use hub_core::ports::memory::{InMemoryAuth, InMemoryImages, InMemoryObjectStore};
use hub_core::{
    ClientInfo, ImageLibrary, ImageLimits, ImageQuota, LoginName, RegisterUser, SystemClock,
};
use hub_grpc_images::{ImagesState, PublicUrls, router};
use hub_runtime::config::HttpConfig;
use hub_runtime::grpc::BearerAuth;
use hub_runtime::{Readiness, Service, ServiceContext};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tower::ServiceExt;

struct World {
    router: axum::Router,
    objects: Arc<InMemoryObjectStore>,
    images: Arc<InMemoryImages>,
    token: String,
}

/// grpc-images' router whose users may each hold one image.
async fn world() -> World {
    let auth = InMemoryAuth::new(Duration::from_secs(3600)).unwrap();
    let (authentication, tokens) = (auth.authentication.clone(), auth.tokens.clone());
    auth.registration()
        .register(RegisterUser {
            username: "alice".into(),
            email: "alice@example.com".into(),
            password: "correct horse".into(),
        })
        .await
        .unwrap();
    let token = authentication
        .login(
            LoginName::Username("alice".into()),
            "correct horse".into(),
            ClientInfo::default(),
        )
        .await
        .unwrap()
        .token
        .token;
    let images = Arc::new(InMemoryImages::default());
    let objects = Arc::new(InMemoryObjectStore::default());
    let library = ImageLibrary::new(
        images.clone(),
        objects.clone(),
        Arc::new(SystemClock),
        ImageLimits::default(),
        1,
    )
    .with_quota(ImageQuota {
        max_images: 1,
        ..ImageQuota::default()
    });
    let state = ImagesState {
        library,
        authentication,
        urls: PublicUrls::Delivered {
            base: "http://images.test".into(),
        },
        store_probe: objects.clone(),
        max_message_bytes: 4 * 1024 * 1024,
        stall_timeout: Duration::from_secs(5),
        auth: BearerAuth::new(tokens, Arc::new(SystemClock)),
        oauth: hub_core::OAuth::new(
            Arc::new(hub_core::ports::memory::InMemoryOAuthClients::default()),
            auth.authentication.clone(),
            Arc::new(SystemClock),
            hub_runtime::config::OidcConfig::default().settings(),
        ),
        feeds: hub_core::feed::EventFeeds::new(
            Arc::new(auth.sessions.event_log()),
            auth.authentication.clone(),
            hub_runtime::config::EventsConfig::default().feed(),
            4,
        ),
    };
    let context = ServiceContext {
        service: Service::GrpcImages,
        readiness: Readiness::new(Service::GrpcImages.name(), Duration::from_secs(1)),
        http: HttpConfig::default(),
        cors: None,
    };
    World {
        router: router(state, context).unwrap(),
        objects,
        images,
        token,
    }
}

fn picture(seed: u32) -> Vec<u8> {
    let image = image::RgbImage::from_fn(40, 30, |x, y| {
        image::Rgb([(x * 5 + seed) as u8, (y * 7) as u8, 0])
    });
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

fn upload(token: Option<&str>, bytes: Vec<u8>) -> Request<Body> {
    let mut request = Request::post("/v1/images").header(header::CONTENT_TYPE, "image/png");
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    request.body(Body::from(bytes)).unwrap()
}

async fn send(
    router: &axum::Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let response = router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
    (parts.status, parts.headers, body.to_vec())
}

fn json(body: &[u8]) -> Value {
    serde_json::from_slice(body).unwrap()
}

/// Uploaded over HTTP, stored once (the same image again is the same
/// image), and read back by anyone at its URL with its ETag; a second image
/// past the quota is 429 QUOTA_EXCEEDED and leaves nothing in the store.
#[tokio::test]
async fn an_upload_is_stored_once_delivered_and_held_to_the_quota() {
    let world = world().await;
    let (status, _, body) = send(&world.router, upload(Some(&world.token), picture(1))).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let image = json(&body);
    let url = image["url"].as_str().unwrap();
    let path = url.strip_prefix("http://images.test").unwrap();
    let key = path.strip_prefix("/images/").unwrap();
    assert_eq!(world.objects.keys(), [key]);

    let (status, _, body) = send(&world.router, upload(Some(&world.token), picture(1))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        json(&body)["id"],
        image["id"],
        "the same image is one image"
    );
    assert_eq!(world.objects.keys(), [key]);

    let (status, headers, bytes) = send(
        &world.router,
        Request::get(path).body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "image/png");
    assert_eq!(headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    let digest: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(image["sha256"], digest.as_str());
    let etag = headers[header::ETAG].clone();
    let (status, _, _) = send(
        &world.router,
        Request::get(path)
            .header(header::IF_NONE_MATCH, etag)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);

    let (status, headers, body) = send(&world.router, upload(Some(&world.token), picture(2))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        json(&body)["error"]["code"],
        "QUOTA_EXCEEDED",
        "{headers:?}"
    );
    assert_eq!(
        world.objects.keys(),
        [key],
        "the refused image's object went"
    );
    assert_eq!(world.images.len(), 1);
}

/// No token is 401 before any byte is stored; a store that is away is 503
/// UNAVAILABLE, and the upload works once it is back.
#[tokio::test]
async fn no_token_is_401_and_a_store_away_is_503() {
    let world = world().await;
    let (status, _, body) = send(&world.router, upload(None, picture(1))).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    world.objects.set_away(true);
    let (status, _, body) = send(&world.router, upload(Some(&world.token), picture(1))).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(json(&body)["error"]["code"], "UNAVAILABLE");
    assert!(world.images.is_empty());
    world.objects.set_away(false);
    let (status, _, _) = send(&world.router, upload(Some(&world.token), picture(1))).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(world.objects.keys().len(), 1);
}
