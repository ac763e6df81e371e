//! What one process holds once, whichever of its services use it: the
//! console (on rest-auth's port) and grpc-images upload through one image
//! library, so a user's uploads in progress are counted once, and both
//! ports' `/metrics` report the same uploads and the same buffer pool; the
//! console and the JSON API sign in through one `SignIn`, so a device known
//! to one is known to the other.

use std::time::Duration;

use hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient;
use hub_grpc_images::pb::upload_image_request::Data;
use hub_grpc_images::pb::{UploadImageRequest, UploadMetadata};
use hub_testkit::console::{form_csrf, noise_png, session_cookies, set_cookie, sign_in};
use hub_testkit::{Service, TestHub, TestSetup, eventually};
use reqwest::{StatusCode, header};

const PASSWORD: &str = "correct horse battery";
const BOUNDARY: &str = "polyhub-test-boundary";

/// A browser signed in to the console at `base` as `name`: its `Cookie`
/// header and the images page's upload token.
async fn console_session(http: &reqwest::Client, base: &str, name: &str) -> (String, String) {
    let signed_in = sign_in(http, base, name, PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let cookies = session_cookies(&signed_in);
    let page = http
        .get(format!("{base}/account/images"))
        .header(header::COOKIE, &cookies)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let token = form_csrf(&page, "/account/images");
    (cookies, token)
}

/// Uploads `png` through the console's form: its status and page.
async fn console_upload(
    http: &reqwest::Client,
    base: &str,
    (cookies, token): &(String, String),
    png: &[u8],
) -> (StatusCode, String) {
    let body = [
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{token}\r\n")
            .into_bytes(),
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n\
             Content-Type: image/png\r\n\r\n"
        )
        .into_bytes(),
        png.to_vec(),
        format!("\r\n--{BOUNDARY}--\r\n").into_bytes(),
    ]
    .concat();
    let answer = http
        .post(format!("{base}/account/images"))
        .header(header::ORIGIN, base)
        .header(header::COOKIE, cookies)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    (answer.status(), answer.text().await.unwrap())
}

/// A gauge's value in a `/metrics` text.
fn gauge(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}{{}} ")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name}: {metrics}"))
}

/// The image gauges on both ports, once they agree and `ready` holds.
async fn image_gauges(hub: &TestHub, what: &str, ready: impl Fn(f64, f64) -> bool) -> (f64, f64) {
    eventually(Duration::from_secs(10), what, || async {
        let (rest, grpc) = (
            hub.metrics(Service::RestAuth).await,
            hub.metrics(Service::GrpcImages).await,
        );
        let read = |metrics: &str| {
            (
                gauge(metrics, "polyhub_image_uploads_in_progress"),
                gauge(metrics, "polyhub_image_buffer_pool_bytes"),
            )
        };
        let (seen, other) = (read(&rest), read(&grpc));
        (seen == other && ready(seen.0, seen.1)).then_some(seen)
    })
    .await
}

/// One image library per process: a user holding their one upload in
/// progress over gRPC cannot start another through the console, both ports
/// count that upload and the buffer it gave back to the one pool, and the
/// place it held is the console's again once it ends.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_and_grpc_images_share_one_image_library() {
    let mut setup = TestSetup::new(&[Service::RestAuth, Service::GrpcImages]);
    setup.config.images.max_uploads_per_user = 1;
    setup.config.images.stall_timeout_ms = 2_000;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let login = hub_testkit::sign_up(&base, "ada", PASSWORD).await;
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let console = console_session(&http, &base, "ada").await;
    let png = noise_png();

    // Half an image over gRPC, then nothing: the upload stays in progress
    // until the stall timeout ends it.
    let first = png[..png.len() / 2].to_vec();
    let messages = [
        UploadImageRequest {
            data: Some(Data::Metadata(UploadMetadata {
                filename: "s.png".into(),
                content_type: "image/png".into(),
            })),
        },
        UploadImageRequest {
            data: Some(Data::Chunk(first.into())),
        },
    ];
    let mut request = tonic::Request::new(futures_util::StreamExt::chain(
        futures_util::stream::iter(messages),
        futures_util::stream::pending(),
    ));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let mut grpc = ImageDeliveryClient::connect(hub.url(Service::GrpcImages))
        .await
        .unwrap();
    let stalled = tokio::spawn(async move { grpc.upload_image(request).await });
    image_gauges(
        &hub,
        "the stalled upload in progress on both ports",
        |n, _| n == 1.0,
    )
    .await;

    let (status, page) = console_upload(&http, &base, &console, &png).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{page}");
    assert!(page.contains("UPLOADS_IN_PROGRESS"), "{page}");

    let ended = stalled.await.unwrap().unwrap_err();
    assert_eq!(ended.code(), tonic::Code::DeadlineExceeded, "{ended:?}");
    let (_, pooled) = image_gauges(
        &hub,
        "the stalled upload's buffer back in the one pool",
        |n, pooled| n == 0.0 && pooled > 0.0,
    )
    .await;

    let (status, page) = console_upload(&http, &base, &console, &png).await;
    assert_eq!(status, StatusCode::SEE_OTHER, "the place came back: {page}");
    // The console's upload took the pooled buffer and gave it back.
    let (_, after) = image_gauges(&hub, "the console's buffer back in the pool", |n, p| {
        n == 0.0 && p > 0.0
    })
    .await;
    assert!(after >= pooled, "{after} < {pooled}");
    hub.stop().await;
}

/// The `polyhub_device` cookie `response` sets, whole: its value and its
/// attributes apart.
fn device_cookie(response: &reqwest::Response) -> (String, String) {
    let whole = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with("polyhub_device="))
        .unwrap_or_else(|| panic!("no device cookie: {:?}", response.headers()))
        .to_owned();
    let (value, attributes) = whole.split_once(';').unwrap();
    (value.to_owned(), attributes.to_owned())
}

/// One sign-in per process: a device that signed in through the console
/// shows the JSON login the same cookie, and that login knows it (one use
/// case, one limiter, one device list), so an attacker's lockout of the
/// account over the API does not keep the owner's browser out.
#[tokio::test(flavor = "multi_thread")]
async fn the_console_and_the_api_sign_in_through_one_use_case() {
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_user_burst = 3;
    limits.per_user_replenish_ms = 60_000;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    hub_testkit::sign_up(&base, "bea", PASSWORD).await;
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let signed_in = sign_in(&browser, &base, "bea", PASSWORD).await;
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let (device, console_attributes) = device_cookie(&signed_in);
    assert!(set_cookie(&signed_in, "polyhub_session").is_some());

    let api = reqwest::Client::new();
    let login = |cookie: Option<String>, password: &'static str| {
        let mut request = api
            .post(format!("{base}/login"))
            .json(&serde_json::json!({"username": "bea", "password": password}));
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        request.send()
    };
    // Someone else spends the account's budget: unknown devices are out.
    let mut locked = None;
    for _ in 0..5 {
        let answer = login(None, "wrong wrong wrong").await.unwrap();
        if answer.status() == StatusCode::TOO_MANY_REQUESTS {
            assert!(answer.headers().contains_key(header::RETRY_AFTER));
            locked = Some(answer.text().await.unwrap());
            break;
        }
        assert_eq!(answer.status(), StatusCode::UNAUTHORIZED);
    }
    let locked = locked.expect("the account was never locked");
    assert!(locked.contains("TOO_MANY_ATTEMPTS"), "{locked}");

    // The console's device cookie gets the browser through the API's login,
    // and the API hands the same device the same cookie, attributes and all.
    let answer = login(Some(device.clone()), PASSWORD).await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);
    let (_, api_attributes) = device_cookie(&answer);
    assert_eq!(api_attributes, console_attributes);
    hub.stop().await;
}
