//! OAuth 2.0 without a browser, through the whole wiring: clients registered
//! by the operator's use case, client credentials, introspection and
//! revocation driven by `authlib` (a client no one here wrote), the token
//! then used over grpcio against the image service, and the refusals in
//! OAuth's own shape over plain HTTP.

use std::process::Command;

use hub::Service;
use hub_core::{GrantType, NewClient};
use hub_grpc_images::pb::image_delivery_client::ImageDeliveryClient;
use hub_grpc_images::pb::upload_image_request::Data;
use hub_grpc_images::pb::{UploadImageRequest, UploadMetadata};
use hub_testkit::console::noise_png;
use hub_testkit::{TestHub, sign_up, venv_bin};
use reqwest::StatusCode;
use serde_json::Value;

const PASSWORD: &str = "correct horse battery";

fn client(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// A confidential client-credentials client allowed `scopes`: its id and
/// secret.
async fn machine_client(hub: &TestHub, name: &str, scopes: &[&str]) -> (String, String) {
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: name.into(),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..NewClient::default()
        })
        .await
        .unwrap();
    (client.id.to_string(), secret.unwrap().shown().to_owned())
}

/// One image owned by a new user; the user's id.
async fn owner_with_one_image(hub: &TestHub, rest: &str) -> String {
    let login = sign_up(rest, "imgowner", PASSWORD).await;
    let bearer = format!("Bearer {}", login["token"].as_str().unwrap());
    let messages = [
        UploadImageRequest {
            data: Some(Data::Metadata(UploadMetadata {
                filename: "owned.png".into(),
                content_type: "image/png".into(),
            })),
        },
        UploadImageRequest {
            data: Some(Data::Chunk(noise_png().into())),
        },
    ];
    let mut request = tonic::Request::new(futures_util::stream::iter(messages));
    request
        .metadata_mut()
        .insert("authorization", bearer.parse().unwrap());
    let image = ImageDeliveryClient::connect(hub.url(Service::GrpcImages))
        .await
        .unwrap()
        .upload_image(request)
        .await
        .unwrap()
        .into_inner();
    image.owner_id
}

#[tokio::test(flavor = "multi_thread")]
async fn authlib_gets_client_credentials_that_grpcio_lists_images_with() {
    let hub = TestHub::with(&[Service::RestAuth, Service::GrpcImages]).await;
    let rest = hub.url(Service::RestAuth);
    let target = hub
        .url(Service::GrpcImages)
        .trim_start_matches("http://")
        .to_owned();
    let owner = owner_with_one_image(&hub, &rest).await;
    let (id, secret) = machine_client(&hub, "reports", &["images:read", "events:read"]).await;
    let (narrow_id, narrow_secret) = machine_client(&hub, "feeds", &["events:read"]).await;
    let proto = format!("{}/../proto", env!("CARGO_MANIFEST_DIR"));
    let out = tokio::task::spawn_blocking(move || {
        Command::new(venv_bin("python"))
            .arg(client("oauth_authlib.py"))
            .args([
                &rest,
                &target,
                &proto,
                &id,
                &secret,
                &narrow_id,
                &narrow_secret,
                &owner,
                "--max-seconds",
                "90",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "authlib: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        summary["steps_passed"].as_array().map(Vec::len),
        Some(8),
        "{summary}"
    );
    hub.stop().await;
}

/// POSTs `form` to `path` with `basic` credentials when given.
async fn post_form(
    base: &str,
    path: &str,
    basic: Option<(&str, &str)>,
    form: &[(&str, &str)],
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let mut request = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body);
    if let Some((id, secret)) = basic {
        request = request.basic_auth(id, Some(secret));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"))
    };
    (status, headers, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn refusals_answer_in_oauths_shape() {
    let hub = TestHub::with(&[Service::RestAuth, Service::Sessions]).await;
    let rest = hub.url(Service::RestAuth);
    let (id, secret) = machine_client(&hub, "machine", &["images:read"]).await;
    let (public, _) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "spa".into(),
            public: true,
            redirect_uris: vec!["http://127.0.0.1:9/cb".into()],
            ..NewClient::default()
        })
        .await
        .unwrap();
    let grant = [("grant_type", "client_credentials")];

    // The wrong secret, an unknown client, no client at all: invalid_client,
    // 401, and the scheme to use.
    for basic in [Some((id.as_str(), "wrong")), Some(("nobody", "x")), None] {
        let (status, headers, body) = post_form(&rest, "/oauth2/token", basic, &grant).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{basic:?}: {body}");
        assert_eq!(body["error"], "invalid_client", "{body}");
        assert!(body["error_description"].as_str().unwrap().len() > 10);
        assert!(
            headers["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic"),
        );
        assert_eq!(headers["cache-control"], "no-store");
    }
    // Two methods at once; a parameter twice; not a form; no grant_type.
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/token",
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/token",
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("grant_type", "client_credentials"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    let json = reqwest::Client::new()
        .post(format!("{rest}/oauth2/token"))
        .basic_auth(&id, Some(&secret))
        .json(&serde_json::json!({"grant_type": "client_credentials"}))
        .send()
        .await
        .unwrap();
    assert_eq!(json.status(), StatusCode::BAD_REQUEST);
    let body: Value = json.json().await.unwrap();
    assert_eq!(body["error"], "invalid_request", "{body}");
    let (status, _, body) = post_form(&rest, "/oauth2/token", Some((&id, &secret)), &[]).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_request"))
    );
    // A grant this endpoint does not serve; a scope the client may not have;
    // a public client asking for client credentials.
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/token",
        Some((&id, &secret)),
        &[
            ("grant_type", "password"),
            ("username", "x"),
            ("password", "y"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unsupported_grant_type"))
    );
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/token",
        Some((&id, &secret)),
        &[
            ("grant_type", "client_credentials"),
            ("scope", "images:read openid"),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_scope"))
    );
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/token",
        None,
        &[
            ("grant_type", "client_credentials"),
            ("client_id", public.id.as_str()),
        ],
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (StatusCode::BAD_REQUEST, Some("unauthorized_client"))
    );

    // A good token: /api/sessions/verify takes it as the client's; a user
    // endpoint does not take it at all.
    let (status, headers, body) =
        post_form(&rest, "/oauth2/token", Some((&id, &secret)), &grant).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers["cache-control"], "no-store");
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["scope"], "images:read");
    let token = body["access_token"].as_str().unwrap().to_owned();
    // Its own client sees it active; a public client learns nothing of a
    // token that is not its own.
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/introspect",
        Some((&id, &secret)),
        &[("token", &token)],
    )
    .await;
    assert_eq!(
        (status, &body["active"]),
        (StatusCode::OK, &Value::Bool(true))
    );
    let (status, _, body) = post_form(
        &rest,
        "/oauth2/introspect",
        None,
        &[("token", &token), ("client_id", public.id.as_str())],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, serde_json::json!({"active": false}));
    let sessions = hub.url(Service::Sessions);
    let http = reqwest::Client::new();
    let verified: Value = http
        .get(format!("{sessions}/api/sessions/verify"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["client_id"], id.as_str(), "{verified}");
    assert_eq!(verified["scope"], "images:read");
    assert!(verified.get("user_id").is_none());
    let profile = http
        .get(format!("{rest}/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), StatusCode::UNAUTHORIZED);

    // Rotating the secret: the old one stops at once; deleting the client:
    // its tokens stop too.
    let oauth = hub.hub.client_registry();
    let client_id = hub_core::ClientId::parse(&id).unwrap();
    let rotated = oauth.rotate_secret(&client_id).await.unwrap();
    // A leaked secret's tokens stop with it.
    let old = http
        .get(format!("{sessions}/api/sessions/verify"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(old.status(), StatusCode::UNAUTHORIZED);
    let (status, _, _) = post_form(&rest, "/oauth2/token", Some((&id, &secret)), &grant).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) =
        post_form(&rest, "/oauth2/token", Some((&id, rotated.shown())), &grant).await;
    assert_eq!(status, StatusCode::OK);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let verify = |token: String| {
        let (http, sessions) = (http.clone(), sessions.clone());
        async move {
            http.get(format!("{sessions}/api/sessions/verify"))
                .bearer_auth(token)
                .send()
                .await
                .unwrap()
                .status()
        }
    };
    assert_eq!(verify(token.clone()).await, StatusCode::OK);
    oauth.delete_client(&client_id).await.unwrap();
    assert_eq!(verify(token).await, StatusCode::UNAUTHORIZED);
    hub.stop().await;
}

/// A client-credentials token with `events:read` follows the log over
/// gRPC `Events/Watch`; one without it is refused, and a revoked one too.
#[tokio::test(flavor = "multi_thread")]
async fn a_client_with_events_read_watches_the_log() {
    use hub_grpc_images::pb::events::WatchRequest;
    use hub_grpc_images::pb::events::events_client::EventsClient;

    let hub = TestHub::with(&[Service::RestAuth, Service::GrpcImages]).await;
    let rest = hub.url(Service::RestAuth);
    let (watcher, watcher_secret) = machine_client(&hub, "watcher", &["events:read"]).await;
    let (reader, reader_secret) = machine_client(&hub, "reader", &["images:read"]).await;
    let grant = [("grant_type", "client_credentials")];
    let token_of = |id: String, secret: String| {
        let rest = rest.clone();
        async move {
            let (status, _, body) =
                post_form(&rest, "/oauth2/token", Some((&id, &secret)), &grant).await;
            assert_eq!(status, StatusCode::OK, "{body}");
            body["access_token"].as_str().unwrap().to_owned()
        }
    };
    let watching = token_of(watcher.clone(), watcher_secret.clone()).await;
    let reading = token_of(reader, reader_secret).await;
    let watch = |token: String| {
        let grpc = hub.url(Service::GrpcImages);
        async move {
            let mut request = tonic::Request::new(WatchRequest {
                topics: vec!["user_updates".into()],
                after: None,
            });
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
            EventsClient::connect(grpc)
                .await
                .unwrap()
                .watch(request)
                .await
        }
    };
    let mut stream = watch(watching.clone()).await.unwrap().into_inner();
    sign_up(&rest, "watched", PASSWORD).await;
    let event = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
        .await
        .expect("an event within 10 s")
        .unwrap()
        .unwrap();
    assert_eq!(event.r#type, "user.created", "{event:?}");
    drop(stream);

    let refused = watch(reading).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("events:read"), "{refused:?}");

    let (status, _, _) = post_form(
        &rest,
        "/oauth2/revoke",
        Some((&watcher, &watcher_secret)),
        &[("token", &watching)],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let refused = watch(watching).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");
    hub.stop().await;
}
