//! grpc-images over real sockets: a tonic client against the hub, the real
//! PostgreSQL and a real S3 server (s3s-fs, keys checked), images fetched by
//! a plain HTTP client without credentials.

use std::io::Cursor;
use std::time::Duration;

use hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient;
use hub_grpc_images::pb::upload_image_request::Data;
use hub_grpc_images::pb::{Image, ListImagesRequest, UploadImageRequest, UploadMetadata};
use hub_testkit::{OwnServer, Service, TestHub, TestSetup, eventually};
use image::{DynamicImage, Rgb, RgbImage};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// Images need rest-auth to sign users in.
const SERVICES: &[Service] = &[Service::RestAuth, Service::GrpcImages];

struct Hub {
    hub: TestHub,
    http: reqwest::Client,
}

impl Hub {
    async fn start() -> Self {
        Self::from(TestHub::with(SERVICES).await)
    }

    fn from(hub: TestHub) -> Self {
        Self {
            hub,
            http: reqwest::Client::new(),
        }
    }

    async fn token(&self, name: &str) -> String {
        let login =
            hub_testkit::sign_up(&self.hub.url(Service::RestAuth), name, "correct horse").await;
        login["token"].as_str().unwrap().to_owned()
    }

    async fn client(&self) -> ImageDeliveryClient<Channel> {
        ImageDeliveryClient::connect(self.hub.url(Service::GrpcImages))
            .await
            .unwrap()
    }

    /// An S3 client of the hub's own store.
    fn s3(&self) -> hub_store::s3::S3Client {
        let s3 = &self.hub.hub.config().images.s3;
        hub_store::s3::sdk_client(&hub_store::S3Settings {
            endpoint: s3.endpoint.clone(),
            region: s3.region.clone(),
            bucket: s3.bucket.clone(),
            access_key: s3.access_key.clone(),
            secret_key: s3.secret_key.expose().as_str().into(),
            timeout: Duration::from_secs(5),
        })
    }

    /// Every object in the hub's bucket.
    async fn objects(&self) -> Vec<String> {
        let s3 = &self.hub.hub.config().images.s3;
        self.s3()
            .list_objects_v2()
            .bucket(&s3.bucket)
            .send()
            .await
            .unwrap()
            .contents()
            .iter()
            .filter_map(|o| o.key().map(str::to_owned))
            .collect()
    }
}

fn authorized<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

fn messages(metadata: Option<(&str, &str)>, bytes: &[u8], chunk: usize) -> Vec<UploadImageRequest> {
    let mut out = Vec::new();
    if let Some((filename, content_type)) = metadata {
        out.push(UploadImageRequest {
            data: Some(Data::Metadata(UploadMetadata {
                filename: filename.into(),
                content_type: content_type.into(),
            })),
        });
    }
    out.extend(bytes.chunks(chunk).map(|c| UploadImageRequest {
        data: Some(Data::Chunk(bytes::Bytes::copy_from_slice(c))),
    }));
    out
}

async fn upload(
    client: &mut ImageDeliveryClient<Channel>,
    token: &str,
    requests: Vec<UploadImageRequest>,
) -> Result<Image, Status> {
    client
        .upload_image(authorized(futures_util::stream::iter(requests), token))
        .await
        .map(tonic::Response::into_inner)
}

async fn upload_file(
    client: &mut ImageDeliveryClient<Channel>,
    token: &str,
    name: &str,
    bytes: &[u8],
) -> Result<Image, Status> {
    upload(
        client,
        token,
        messages(Some((name, "image/whatever")), bytes, 16 * 1024),
    )
    .await
}

fn picture(seed: u32, format: image::ImageFormat) -> Vec<u8> {
    let image = DynamicImage::ImageRgb8(RgbImage::from_fn(40, 30, |x, y| {
        Rgb([(x * 5 + seed) as u8, (y * 7) as u8, (seed / 256) as u8])
    }));
    let image = match format {
        image::ImageFormat::Gif | image::ImageFormat::WebP => {
            DynamicImage::ImageRgba8(image.to_rgba8())
        }
        _ => image,
    };
    let mut out = Cursor::new(Vec::new());
    image.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn hex_sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn error_code(status: &Status) -> &str {
    status
        .metadata()
        .get("x-error-code")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_format_is_stored_clean_and_readable_by_anyone() {
    let hub = Hub::start().await;
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    for (format, content_type) in [
        (image::ImageFormat::Png, "image/png"),
        (image::ImageFormat::Jpeg, "image/jpeg"),
        (image::ImageFormat::Gif, "image/gif"),
        (image::ImageFormat::WebP, "image/webp"),
    ] {
        let image = upload_file(
            &mut client,
            &token,
            "../../etc/passwd <script>.png",
            &picture(1, format),
        )
        .await
        .unwrap();
        assert_eq!(image.content_type, content_type);
        assert_eq!((image.width, image.height), (40, 30));
        assert!(!image.url.contains("passwd") && !image.url.contains("script"));
        // Anyone can read it, and gets exactly the stored bytes.
        let resp = reqwest::get(&image.url).await.unwrap();
        assert_eq!(resp.status(), 200, "{}", image.url);
        let headers = resp.headers().clone();
        assert_eq!(headers["content-type"], content_type);
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(
            headers["cache-control"]
                .to_str()
                .unwrap()
                .contains("public")
        );
        let etag = headers["etag"].clone();
        let body = resp.bytes().await.unwrap();
        assert_eq!(hex_sha256(&body), image.sha256);
        assert_eq!(body.len() as i64, image.size_bytes);
        let again = hub
            .http
            .get(&image.url)
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), 304);
    }
    // The same image twice is one image.
    let bytes = picture(2, image::ImageFormat::Png);
    let first = upload_file(&mut client, &token, "a.png", &bytes)
        .await
        .unwrap();
    let second = upload_file(&mut client, &token, "b.png", &bytes)
        .await
        .unwrap();
    assert_eq!(first.id, second.id);
    assert_eq!(hub.objects().await.len(), 5);

    // Unknown and foreign keys are 404 in the hub's error shape.
    let base = hub.hub.url(Service::GrpcImages);
    let owner = uuid::Uuid::now_v7();
    for path in [
        format!("/images/users/{owner}/{}.png", "0".repeat(64)),
        "/images/secret.txt".to_owned(),
    ] {
        let resp = reqwest::get(format!("{base}{path}")).await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["code"], "NOT_FOUND");
    }
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn list_pages_through_120_uploads_once_each() {
    let hub = Hub::start().await;
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    let mut uploaded = Vec::new();
    for seed in 0..120 {
        let image = upload_file(
            &mut client,
            &token,
            "p.png",
            &picture(seed * 3, image::ImageFormat::Png),
        )
        .await
        .unwrap();
        uploaded.push(image.id);
    }
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_images(authorized(
                ListImagesRequest {
                    page_size: 50,
                    page_token: page_token.clone(),
                    owner_id: String::new(),
                },
                &token,
            ))
            .await
            .unwrap()
            .into_inner();
        pages.push(page.images.len());
        seen.extend(page.images.into_iter().map(|i| i.id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(pages, [50, 50, 20]);
    uploaded.reverse();
    assert_eq!(seen, uploaded, "newest first, each exactly once");

    // Another user sees none of them, and may not ask for them.
    let bob = hub.token("bob").await;
    let page = client
        .list_images(authorized(ListImagesRequest::default(), &bob))
        .await
        .unwrap()
        .into_inner();
    assert!(page.images.is_empty());
    let owner = hub
        .hub
        .hub
        .users()
        .find_by_username(&hub_core::Username::parse("alice").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    let status = client
        .list_images(authorized(
            ListImagesRequest {
                owner_id: owner.to_string(),
                ..Default::default()
            },
            &bob,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_uploads_are_refused_and_leave_nothing_behind() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.max_bytes = 256 * 1024;
    let hub = Hub::from(setup.start().await);
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    // Makes the bucket exist before counting what is in it.
    upload_file(
        &mut client,
        &token,
        "ok.png",
        &picture(9, image::ImageFormat::Png),
    )
    .await
    .unwrap();

    let png = picture(1, image::ImageFormat::Png);
    let bomb = hub_core::upload::test_support::png_header(60_000, 60_000);
    let cases: Vec<(&str, Vec<UploadImageRequest>, Code, &str)> = vec![
        (
            "text named .png",
            messages(
                Some(("photo.png", "image/png")),
                b"not an image at all",
                1024,
            ),
            Code::InvalidArgument,
            "UNSUPPORTED_IMAGE_TYPE",
        ),
        (
            "SVG",
            messages(
                Some(("x.svg", "image/svg+xml")),
                b"<svg xmlns=\"http://www.w3.org/2000/svg\"><script>alert(1)</script></svg>",
                1024,
            ),
            Code::InvalidArgument,
            "UNSUPPORTED_IMAGE_TYPE",
        ),
        (
            "truncated PNG",
            messages(Some(("t.png", "image/png")), &png[..png.len() / 2], 1024),
            Code::InvalidArgument,
            "CORRUPT_IMAGE",
        ),
        (
            "60,000 x 60,000 PNG header",
            messages(Some(("bomb.png", "image/png")), &bomb, 1024),
            Code::InvalidArgument,
            "IMAGE_TOO_MANY_PIXELS",
        ),
        (
            "a stream over the cap",
            messages(
                Some(("big.png", "image/png")),
                &vec![0u8; 400 * 1024],
                64 * 1024,
            ),
            Code::ResourceExhausted,
            "IMAGE_TOO_LARGE",
        ),
        (
            "an empty stream",
            Vec::new(),
            Code::InvalidArgument,
            "EMPTY_UPLOAD",
        ),
        (
            "metadata only",
            messages(Some(("e.png", "image/png")), b"", 1024),
            Code::InvalidArgument,
            "EMPTY_UPLOAD",
        ),
        (
            "no metadata first",
            messages(None, &png, 1024),
            Code::InvalidArgument,
            "INVALID_REQUEST",
        ),
    ];
    for (what, requests, code, error) in cases {
        let status = upload(&mut client, &token, requests).await.unwrap_err();
        assert_eq!(status.code(), code, "{what}: {status:?}");
        assert_eq!(error_code(&status), error, "{what}: {status:?}");
        assert!(
            status.message().starts_with(error),
            "{what}: {}",
            status.message()
        );
    }
    assert_eq!(hub.objects().await.len(), 1, "nothing but the good image");

    // EXIF with GPS, and a payload after the image's end: neither comes out.
    let jpeg = picture(3, image::ImageFormat::Jpeg);
    let mut dirty = jpeg[..2].to_vec();
    let app1 = b"Exif\0\0II*\0\x08\0\0\0\x01\0\x25\x88\x04\0\x01\0\0\0\x1a\0\0\0\0\0\0\0\x01\0\x01\0\x02\0\x02\0\0\0N\0\0\0\0\0\0\0";
    dirty.extend([0xFF, 0xE1]);
    dirty.extend(u16::try_from(app1.len() + 2).unwrap().to_be_bytes());
    dirty.extend(app1);
    dirty.extend(&jpeg[2..]);
    dirty.extend(b"PK\x03\x04<?php system($_GET['c']); ?>");
    let image = upload_file(&mut client, &token, "gps.jpg", &dirty)
        .await
        .unwrap();
    let body = reqwest::get(&image.url)
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let contains = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
    assert!(!contains(b"Exif") && !contains(b"<?php") && !contains(b"PK\x03\x04"));
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_are_checked_as_rest_auth_checks_them() {
    let hub = Hub::start().await;
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    let png = picture(1, image::ImageFormat::Png);
    let no_token = client
        .upload_image(Request::new(futures_util::stream::iter(messages(
            Some(("a.png", "image/png")),
            &png,
            1024,
        ))))
        .await
        .unwrap_err();
    assert_eq!(no_token.code(), Code::Unauthenticated);
    for bad in ["nope", "Bearer", &format!("Basic {token}")] {
        let mut request = Request::new(ListImagesRequest::default());
        request
            .metadata_mut()
            .insert("authorization", bad.parse().unwrap());
        let status = client.list_images(request).await.unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}");
        assert_eq!(error_code(&status), "INVALID_TOKEN");
    }
    // Logged out over REST: refused here on the next call.
    let logout = hub
        .http
        .post(format!("{}/logout", hub.hub.url(Service::RestAuth)))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    let status = client
        .list_images(authorized(ListImagesRequest::default(), &token))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    hub.hub.stop().await;
}

async fn health(channel: Channel) -> Result<i32, Status> {
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "polyhub.images.v1.ImageDelivery".into(),
        })
        .await
        .map(|r| r.into_inner().status)
}

const SERVING: i32 = 1;
const NOT_SERVING: i32 = 2;

/// Waits up to 20 s for the images service's health to be `status`.
async fn health_becomes(channel: &Channel, status: i32, what: &str) {
    eventually(Duration::from_secs(20), what, || {
        let channel = channel.clone();
        async move { (health(channel).await.ok()? == status).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_store_that_goes_away_is_unavailable_and_health_follows_it() {
    let mut s3 = OwnServer::s3();
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.s3.endpoint = Some(s3.endpoint());
    let hub = Hub::from(setup.start().await);
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    let channel = Channel::from_shared(hub.hub.url(Service::GrpcImages))
        .unwrap()
        .connect()
        .await
        .unwrap();
    health_becomes(&channel, SERVING, "SERVING").await;
    upload_file(
        &mut client,
        &token,
        "a.png",
        &picture(1, image::ImageFormat::Png),
    )
    .await
    .unwrap();

    s3.stop();
    let status = upload_file(
        &mut client,
        &token,
        "b.png",
        &picture(2, image::ImageFormat::Png),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status), "UNAVAILABLE");
    health_becomes(&channel, NOT_SERVING, "NOT_SERVING").await;
    let ready = reqwest::get(format!("{}/ready", hub.hub.url(Service::GrpcImages)))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);

    s3.resume();
    health_becomes(&channel, SERVING, "SERVING again").await;
    upload_file(
        &mut client,
        &token,
        "b.png",
        &picture(2, image::ImageFormat::Png),
    )
    .await
    .unwrap();
    hub.hub.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_store_credentials_are_unavailable() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.s3.secret_key = hub_runtime::Secret::new("not-the-secret".into());
    let hub = Hub::from(setup.start().await);
    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    let status = upload_file(
        &mut client,
        &token,
        "a.png",
        &picture(1, image::ImageFormat::Png),
    )
    .await
    .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(error_code(&status), "UNAVAILABLE");
    hub.hub.stop().await;
}

/// Waits until the health service says SERVING (its first probe of the store).
async fn serving(hub: &Hub) {
    let channel = Channel::from_shared(hub.hub.url(Service::GrpcImages))
        .unwrap()
        .connect()
        .await
        .unwrap();
    health_becomes(&channel, SERVING, "SERVING").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_grpcio_client_uploads_lists_and_sees_serving() {
    let hub = Hub::start().await;
    let token = hub.token("alice").await;
    serving(&hub).await;
    let dir = hub_testkit::scratch_dir();
    let png = dir.join("first.png");
    let jpg = dir.join("second.jpg");
    std::fs::write(&png, picture(1, image::ImageFormat::Png)).unwrap();
    std::fs::write(&jpg, picture(2, image::ImageFormat::Jpeg)).unwrap();
    let target = hub
        .hub
        .url(Service::GrpcImages)
        .trim_start_matches("http://")
        .to_owned();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/grpcio_images.py"
    );
    let out = tokio::process::Command::new(hub_testkit::venv_bin("python"))
        .arg(script)
        .args([target.as_str(), token.as_str(), proto])
        .arg(&png)
        .arg(&jpg)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "grpcio client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen["health"], "SERVING");
    assert_eq!(seen["without_token"], "UNAUTHENTICATED");
    let uploaded = seen["uploaded"].as_array().unwrap();
    assert_eq!(uploaded.len(), 2);
    assert_eq!(uploaded[0]["content_type"], "image/png", "the bytes decide");
    assert_eq!(
        uploaded[1]["content_type"], "image/jpeg",
        "whatever was claimed"
    );
    assert_eq!(
        seen["listed"],
        json!([uploaded[1]["id"], uploaded[0]["id"]]),
        "newest first"
    );
    let body = reqwest::get(uploaded[1]["url"].as_str().unwrap())
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(hex_sha256(&body), uploaded[1]["sha256"].as_str().unwrap());
    hub.hub.stop().await;
}

/// moto's S3 server, which implements bucket policies (s3s-fs does not).
struct Moto {
    port: u16,
    child: std::process::Child,
}

impl Moto {
    fn start() -> Self {
        let port = hub_testkit::free_port();
        let child = std::process::Command::new(hub_testkit::venv_bin("moto_server"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "moto did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { port, child }
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_public_base_url_the_bucket_is_made_public_and_urls_point_there() {
    let moto = Moto::start();
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.s3.endpoint = Some(endpoint.clone());
    let bucket = setup.config.images.s3.bucket.clone();
    setup.config.images.public_base_url = Some(format!("{endpoint}/{bucket}/"));
    let hub = Hub::from(setup.start().await);
    let client = hub.s3();
    let policy = eventually(Duration::from_secs(20), "the bucket policy", || {
        let client = client.clone();
        let bucket = bucket.clone();
        async move {
            client
                .get_bucket_policy()
                .bucket(bucket)
                .send()
                .await
                .ok()?
                .policy()
                .map(str::to_owned)
        }
    })
    .await;
    let policy: Value = serde_json::from_str(&policy).unwrap();
    assert_eq!(policy["Statement"][0]["Principal"], "*");
    assert_eq!(policy["Statement"][0]["Action"][0], "s3:GetObject");

    let token = hub.token("alice").await;
    let mut client = hub.client().await;
    let image = upload_file(
        &mut client,
        &token,
        "a.png",
        &picture(1, image::ImageFormat::Png),
    )
    .await
    .unwrap();
    assert!(
        image
            .url
            .starts_with(&format!("{endpoint}/{bucket}/users/")),
        "{}",
        image.url
    );
    let resp = reqwest::get(&image.url).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(hex_sha256(&resp.bytes().await.unwrap()), image.sha256);
    hub.hub.stop().await;
}

/// A message over `images.max_message_bytes` is refused in the hub's own
/// terms (RESOURCE_EXHAUSTED with `x-error-code: REQUEST_TOO_LARGE`), not
/// with tonic's bare OUT_OF_RANGE: in an upload's stream and in a unary call
/// refused before its handler runs.
#[tokio::test(flavor = "multi_thread")]
async fn an_oversized_message_is_refused_with_the_hubs_code() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.max_message_bytes = 64 * 1024;
    let hub = Hub::from(setup.start().await);
    let token = hub.token("mira").await;
    let mut client = hub.client().await;
    let refused = upload(
        &mut client,
        &token,
        messages(
            Some(("big.png", "image/png")),
            &picture(1, image::ImageFormat::Png),
            16,
        )
        .into_iter()
        .take(1)
        .chain([UploadImageRequest {
            data: Some(Data::Chunk(vec![0; 100 * 1024].into())),
        }])
        .collect(),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_code(&refused), "REQUEST_TOO_LARGE");
    let refused = client
        .list_images(authorized(
            ListImagesRequest {
                page_token: "x".repeat(100 * 1024),
                ..ListImagesRequest::default()
            },
            &token,
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert_eq!(error_code(&refused), "REQUEST_TOO_LARGE");
    assert!(hub.objects().await.is_empty(), "nothing was stored");
    hub.hub.stop().await;
}

/// An image's public address has 128 random bits in it: holding a copy of a
/// picture and knowing a user's id (public through SOAP lookup) does not
/// give its address. The same image twice by one owner is still one image
/// and one object; objects stored under the older, content-named keys are
/// still delivered.
#[tokio::test(flavor = "multi_thread")]
async fn public_addresses_cannot_be_computed_from_the_bytes_and_the_owner() {
    let hub = Hub::start().await;
    let (alice, bob) = (hub.token("alice").await, hub.token("bob").await);
    let mut client = hub.client().await;
    let bytes = picture(7, image::ImageFormat::Png);
    let first = upload_file(&mut client, &alice, "a.png", &bytes)
        .await
        .unwrap();
    let again = upload_file(&mut client, &alice, "b.png", &bytes)
        .await
        .unwrap();
    let bobs = upload_file(&mut client, &bob, "c.png", &bytes)
        .await
        .unwrap();
    assert_eq!((first.id.clone(), first.url.clone()), (again.id, again.url));
    assert_ne!(first.url, bobs.url);
    for image in [&first, &bobs] {
        let name = image.url.rsplit('/').next().unwrap();
        let (random, extension) = name.split_once('.').unwrap();
        assert_eq!(extension, "png");
        assert_eq!(random.len(), 32, "{name}");
        assert!(!image.url.contains(&image.sha256), "{}", image.url);
        assert!(!image.url.contains(&hex_sha256(&bytes)), "{}", image.url);
    }
    assert_eq!(hub.objects().await.len(), 2, "one object per owner");

    // An object written under the older key shape is still delivered.
    let owner = uuid::Uuid::now_v7();
    let legacy = format!("users/{owner}/{}.png", hex_sha256(&bytes));
    hub.s3()
        .put_object()
        .bucket(&hub.hub.hub.config().images.s3.bucket)
        .key(&legacy)
        .content_type("image/png")
        .body(bytes.clone().into())
        .send()
        .await
        .unwrap();
    let resp = reqwest::get(format!(
        "{}/images/{legacy}",
        hub.hub.url(Service::GrpcImages)
    ))
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await.unwrap().as_ref(), bytes.as_slice());
    hub.hub.stop().await;
}

/// Messages, then nothing more and no end: a client that stalls.
fn stalled(
    token: &str,
    bytes: &[u8],
) -> Request<impl futures_util::Stream<Item = UploadImageRequest> + Send + 'static> {
    use futures_util::StreamExt;
    let sent = messages(
        Some(("s.png", "image/png")),
        &bytes[..bytes.len() / 2],
        1024,
    );
    authorized(
        futures_util::stream::iter(sent).chain(futures_util::stream::pending()),
        token,
    )
}

/// A stream that stops sending is ended with DEADLINE_EXCEEDED, and while
/// it is held it counts against its user's uploads in progress: past the
/// cap a user's next upload is refused at once, another user's is not, and
/// the place comes back when the stalled stream is ended.
#[tokio::test(flavor = "multi_thread")]
async fn stalled_streams_are_ended_and_uploads_in_progress_are_capped_per_user() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.stall_timeout_ms = 2_000;
    setup.config.images.max_uploads_per_user = 2;
    setup.config.images.buffer_pool_bytes = 1 << 20;
    let hub = Hub::from(setup.start().await);
    let (alice, bob) = (hub.token("alice").await, hub.token("bob").await);
    let bytes = picture(3, image::ImageFormat::Png);
    let mut held = Vec::new();
    for _ in 0..2 {
        let (mut client, request) = (hub.client().await, stalled(&alice, &bytes));
        held.push(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let result = client.upload_image(request).await;
            (result.map(|_| ()), started.elapsed())
        }));
    }
    // Both stalled streams are in progress before the third comes.
    let metrics = format!("{}/metrics", hub.hub.url(Service::GrpcImages));
    eventually(Duration::from_secs(5), "two uploads in progress", || {
        let metrics = metrics.clone();
        async move {
            let text = reqwest::get(metrics).await.ok()?.text().await.ok()?;
            text.contains("polyhub_image_uploads_in_progress{} 2")
                .then_some(())
        }
    })
    .await;
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    for gauge in [
        "polyhub_sanitizing_running{} 0",
        "polyhub_sanitizing_waiting{} 0",
    ] {
        assert!(
            text.contains(gauge),
            "streaming uploads hold no sanitizing place: {text}"
        );
    }
    let mut client = hub.client().await;
    let third = upload_file(&mut client, &alice, "t.png", &bytes)
        .await
        .unwrap_err();
    assert_eq!(error_code(&third), "UPLOADS_IN_PROGRESS", "{third:?}");
    assert_eq!(third.code(), Code::ResourceExhausted);
    upload_file(&mut client, &bob, "b.png", &bytes)
        .await
        .expect("another user is not affected");
    for stalled in held {
        let (result, took) = stalled.await.unwrap();
        let status = result.unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
        assert_eq!(error_code(&status), "REQUEST_TIMEOUT");
        assert!(took < Duration::from_secs(10), "{took:?}");
    }
    upload_file(&mut client, &alice, "after.png", &bytes)
        .await
        .expect("the places came back");
    // The buffers of the stored and the ended uploads were kept for the
    // next ones, within the pool's bound.
    let text = reqwest::get(&metrics).await.unwrap().text().await.unwrap();
    let pooled: f64 = text
        .lines()
        .find_map(|l| l.strip_prefix("polyhub_image_buffer_pool_bytes{} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no buffer pool gauge: {text}"));
    assert!(pooled >= bytes.len() as f64, "{pooled}");
    assert!(pooled <= f64::from(1u32 << 20), "{pooled}");
    hub.hub.stop().await;
}

/// A user's quota of images holds in the transaction that records an
/// image: past it the upload is QUOTA_EXCEEDED and leaves no object; the
/// same image again is not a new one; another user has a quota of their own.
#[tokio::test(flavor = "multi_thread")]
async fn the_image_quota_holds_and_a_refused_upload_leaves_nothing() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.max_images_per_user = 2;
    let hub = Hub::from(setup.start().await);
    let (alice, bob) = (hub.token("alice").await, hub.token("bob").await);
    let mut client = hub.client().await;
    for seed in [10, 11] {
        upload_file(
            &mut client,
            &alice,
            "q.png",
            &picture(seed, image::ImageFormat::Png),
        )
        .await
        .unwrap();
    }
    let refused = upload_file(
        &mut client,
        &alice,
        "q.png",
        &picture(12, image::ImageFormat::Png),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert_eq!(error_code(&refused), "QUOTA_EXCEEDED", "{refused:?}");
    assert_eq!(
        hub.objects().await.len(),
        2,
        "the refused upload left no object"
    );
    upload_file(
        &mut client,
        &alice,
        "again.png",
        &picture(10, image::ImageFormat::Png),
    )
    .await
    .expect("the same image again is not a new one");
    upload_file(
        &mut client,
        &bob,
        "b.png",
        &picture(12, image::ImageFormat::Png),
    )
    .await
    .expect("bob's quota is his own");
    hub.hub.stop().await;
}

/// curl, through `POST /v1/images`.
async fn curl_upload(base: &str, token: Option<&str>, bytes: &[u8]) -> (u16, Value) {
    let file = hub_testkit::scratch_dir().join("upload.bin");
    std::fs::write(&file, bytes).unwrap();
    let mut args = vec![
        "-sS".to_owned(),
        "-o".to_owned(),
        "-".to_owned(),
        "-w".to_owned(),
        "\n%{http_code}".to_owned(),
        "-X".to_owned(),
        "POST".to_owned(),
        "--data-binary".to_owned(),
        format!("@{}", file.display()),
        "-H".to_owned(),
        "content-type: image/png".to_owned(),
    ];
    if let Some(token) = token {
        args.extend(["-H".to_owned(), format!("authorization: Bearer {token}")]);
    }
    args.push(format!("{base}/v1/images"));
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (
        status.parse().unwrap(),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
}

/// The HTTP upload, driven by curl: the same use case, limits and codes as
/// the gRPC one, in the hub's JSON error shape.
#[tokio::test(flavor = "multi_thread")]
async fn curl_uploads_over_http_with_the_same_limits_and_codes() {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.images.max_bytes = 64 * 1024;
    setup.config.images.max_images_per_user = 1;
    setup.config.images.stall_timeout_ms = 1_000;
    let hub = Hub::from(setup.start().await);
    let token = hub.token("alice").await;
    let base = hub.hub.url(Service::GrpcImages);
    let bytes = picture(21, image::ImageFormat::Png);

    let (status, image) = curl_upload(&base, Some(&token), &bytes).await;
    assert_eq!(status, 201, "{image}");
    assert_eq!(
        (image["width"].as_u64(), image["height"].as_u64()),
        (Some(40), Some(30))
    );
    let stored = reqwest::get(image["url"].as_str().unwrap()).await.unwrap();
    assert_eq!(
        hex_sha256(&stored.bytes().await.unwrap()),
        image["sha256"].as_str().unwrap()
    );
    // The gRPC listing has it: one use case behind both.
    let mut client = hub.client().await;
    let listed = client
        .list_images(authorized(ListImagesRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.images.len(), 1);
    assert_eq!(listed.images[0].id, image["id"].as_str().unwrap());

    for (token, body, want_status, want_code) in [
        (None, bytes.clone(), 401, "INVALID_TOKEN"),
        (
            Some(token.as_str()),
            b"<svg onload=alert(1)>".to_vec(),
            400,
            "UNSUPPORTED_IMAGE_TYPE",
        ),
        (
            Some(token.as_str()),
            vec![0u8; 100 * 1024],
            413,
            "IMAGE_TOO_LARGE",
        ),
        (
            Some(token.as_str()),
            picture(22, image::ImageFormat::Png),
            429,
            "QUOTA_EXCEEDED",
        ),
    ] {
        let (status, body) = curl_upload(&base, token, &body).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (want_status, Some(want_code)),
            "{body}"
        );
    }

    // The HTTP side describes itself.
    let document: Value = reqwest::get(format!("{base}/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        document["paths"]["/v1/images"]["post"].is_object(),
        "{document}"
    );
    assert!(
        document["paths"]["/images/{key}"]["get"].is_object(),
        "{document}"
    );

    // A body that stops arriving is answered 408 and the place freed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://").to_owned();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream
        .write_all(
            format!(
                "POST /v1/images HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
                 Content-Type: image/png\r\nContent-Length: 50000\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    stream.write_all(&bytes[..100]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut answer))
        .await
        .expect("answered within the stall timeout")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..read]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
    hub.hub.stop().await;
}

/// Finding: a withdrawn admin's token kept listing other users' images.
/// The role change revokes the session the token names, so the gRPC call
/// is refused at once.
#[tokio::test(flavor = "multi_thread")]
async fn a_withdrawn_admin_lists_no_other_users_images() {
    let hub = Hub::start().await;
    let _alice = hub.token("alice").await;
    let owner = hub
        .hub
        .hub
        .users()
        .find_by_username(&hub_core::Username::parse("alice").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id;
    hub_testkit::sign_up(&hub.hub.url(Service::RestAuth), "bruno", "correct horse").await;
    let admin = hub.hub.hub.administration();
    // root stays an admin: the last one's role cannot be withdrawn.
    let _root = hub.token("root").await;
    admin.set_role("root", hub_core::Role::Admin).await.unwrap();
    admin
        .set_role("bruno", hub_core::Role::Admin)
        .await
        .unwrap();
    let login: serde_json::Value = hub
        .http
        .post(format!("{}/login", hub.hub.url(Service::RestAuth)))
        .json(&serde_json::json!({"username": "bruno", "password": "correct horse"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let bruno = login["token"].as_str().unwrap().to_owned();
    let mut client = hub.client().await;
    let of_alice = || ListImagesRequest {
        owner_id: owner.to_string(),
        ..Default::default()
    };
    client
        .list_images(authorized(of_alice(), &bruno))
        .await
        .expect("an admin lists anyone's images");

    admin.set_role("bruno", hub_core::Role::User).await.unwrap();
    let status = client
        .list_images(authorized(of_alice(), &bruno))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    hub.hub.stop().await;
}
