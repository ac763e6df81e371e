//! The shared HTTP layer over a real socket, with a real HTTP client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::{get, post};
use hub_core::{DependencyProbe, Error, ErrorCode};
use hub_runtime::config::HttpConfig;
use hub_runtime::{HttpError, JsonBody, Readiness, service_router};
use serde::Deserialize;
use serde_json::Value;

/// A dependency the test can switch off: the runtime's own boundary is the
/// probe trait; real PostgreSQL probes are tested in hub-store and the services.
struct Switch(AtomicBool);

#[async_trait]
impl DependencyProbe for Switch {
    fn name(&self) -> &'static str {
        "switch"
    }
    async fn probe(&self) -> Result<Duration, Error> {
        if self.0.load(Ordering::SeqCst) {
            Ok(Duration::from_millis(1))
        } else {
            Err(Error::unavailable("switch is off at 10.1.2.3"))
        }
    }
}

struct Slow;

#[async_trait]
impl DependencyProbe for Slow {
    fn name(&self) -> &'static str {
        "slow"
    }
    async fn probe(&self) -> Result<Duration, Error> {
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(Duration::ZERO)
    }
}

#[derive(Deserialize)]
#[allow(dead_code)]
struct Signup {
    username: String,
    age: u32,
}

async fn conflict() -> Result<(), HttpError> {
    Err(Error::new(ErrorCode::UsernameTaken).into())
}

async fn overloaded() -> Result<(), HttpError> {
    Err(Error::new(ErrorCode::Overloaded).into())
}

async fn broken() -> Result<(), HttpError> {
    Err(Error::internal("password=hunter2 at db.internal:5432").into())
}

async fn signup(JsonBody(_): JsonBody<Signup>) -> &'static str {
    "ok"
}

async fn panics() -> &'static str {
    panic!("boom with secret detail")
}

async fn spawn(readiness: Readiness) -> String {
    let routes = Router::new()
        .route("/conflict", get(conflict))
        .route("/overloaded", get(overloaded))
        .route("/broken", get(broken))
        .route("/signup", post(signup))
        .route("/panics", get(panics));
    let config = HttpConfig {
        max_body_bytes: 1024,
        ..HttpConfig::default()
    };
    let app = service_router(routes, readiness, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn readiness(probe: Arc<dyn DependencyProbe>) -> Readiness {
    Readiness::new("test-svc", Duration::from_millis(300)).with(probe)
}

async fn json(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let ct = resp.headers()[reqwest::header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(ct.starts_with("application/json"), "content type {ct}");
    (status, resp.json().await.unwrap())
}

fn assert_error(body: &Value, code: &str) {
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["request_id"].is_string(), "{body}");
}

#[tokio::test]
async fn health_is_ok_and_ready_follows_the_dependency() {
    let switch = Arc::new(Switch(AtomicBool::new(true)));
    let base = spawn(readiness(switch.clone())).await;
    let client = reqwest::Client::new();

    let (status, body) = json(client.get(format!("{base}/health")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["service"], "test-svc");
    assert_eq!(body["status"], "OK");
    assert!(body["timestamp"].as_str().unwrap().contains('T'));

    let (status, body) = json(client.get(format!("{base}/ready")).send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "OK");
    assert_eq!(body["checks"]["switch"]["status"], "OK");

    switch.0.store(false, Ordering::SeqCst);
    let resp = client.get(format!("{base}/ready")).send().await.unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 503);
    assert_eq!(body["status"], "ERROR");
    assert_eq!(body["checks"]["switch"]["status"], "ERROR");
    assert!(
        !body.to_string().contains("10.1.2.3"),
        "no internals: {body}"
    );

    // Liveness does not depend on the dependency.
    let resp = client.get(format!("{base}/health")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn a_hung_dependency_makes_ready_fail_within_the_timeout() {
    let base = spawn(readiness(Arc::new(Slow))).await;
    let started = std::time::Instant::now();
    let resp = reqwest::get(format!("{base}/ready")).await.unwrap();
    assert_eq!(resp.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn errors_carry_code_message_and_the_request_id_of_the_response() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    let resp = reqwest::get(format!("{base}/conflict")).await.unwrap();
    let header_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    let (status, body) = json(resp).await;
    assert_eq!(status, 409);
    assert_error(&body, "USERNAME_TAKEN");
    assert_eq!(body["request_id"], header_id);
}

#[tokio::test]
async fn a_sane_client_request_id_is_kept_and_a_hostile_one_replaced() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    let client = reqwest::Client::new();
    let resp = client
        .get(format!("{base}/conflict"))
        .header("x-request-id", "client-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "client-abc.123");
    let (_, body) = json(resp).await;
    assert_eq!(body["request_id"], "client-abc.123");

    let hostile = format!("x\"}}{}", "a".repeat(300));
    let resp = client
        .get(format!("{base}/health"))
        .header("x-request-id", hostile.as_str())
        .send()
        .await
        .unwrap();
    let id = resp.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(id, hostile);
    assert!(id.len() <= 64);
}

#[tokio::test]
async fn internal_errors_and_panics_hide_their_cause() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    for path in ["/broken", "/panics"] {
        let (status, body) = json(reqwest::get(format!("{base}{path}")).await.unwrap()).await;
        assert_eq!(status, 500, "{path}");
        assert_error(&body, "INTERNAL");
        let text = body.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("boom"),
            "{text}"
        );
    }
    // The server is still there after a panic.
    assert_eq!(
        reqwest::get(format!("{base}/health"))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn too_many_says_when_to_retry() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    let resp = reqwest::get(format!("{base}/overloaded")).await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    let (status, body) = json(resp).await;
    assert_eq!(status, 429);
    assert_error(&body, "OVERLOADED");
}

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_in_the_error_shape() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    let (status, body) = json(reqwest::get(format!("{base}/nope")).await.unwrap()).await;
    assert_eq!(status, 404);
    assert_error(&body, "NOT_FOUND");

    let resp = reqwest::Client::new()
        .delete(format!("{base}/conflict"))
        .send()
        .await
        .unwrap();
    let (status, body) = json(resp).await;
    assert_eq!(status, 405);
    assert_error(&body, "INVALID_REQUEST");
}

#[tokio::test]
async fn every_json_rejection_is_in_the_error_shape() {
    let base = spawn(readiness(Arc::new(Switch(AtomicBool::new(true))))).await;
    let client = reqwest::Client::new();
    let url = format!("{base}/signup");
    let big = format!(r#"{{"username":"{}","age":1}}"#, "a".repeat(4096));
    let cases: [(&str, Option<&str>, String); 4] = [
        (
            "wrong content type",
            Some("text/plain"),
            r#"{"username":"a","age":1}"#.into(),
        ),
        (
            "no content type",
            None,
            r#"{"username":"a","age":1}"#.into(),
        ),
        (
            "malformed",
            Some("application/json"),
            r#"{"username":"a","age":"#.into(),
        ),
        (
            "missing field",
            Some("application/json"),
            r#"{"username":"a"}"#.into(),
        ),
    ];
    for (what, content_type, body) in cases {
        let mut req = client.post(&url).body(body);
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let (status, body) = json(req.send().await.unwrap()).await;
        assert_eq!(status, 400, "{what}: {body}");
        assert_error(&body, "INVALID_REQUEST");
    }
    // Over http.max_body_bytes: 413 with its own code, as uploads are.
    let (status, body) = json(
        client
            .post(&url)
            .header("content-type", "application/json")
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 413, "{body}");
    assert_error(&body, "REQUEST_TOO_LARGE");
    let ok = client
        .post(&url)
        .header("content-type", "application/json")
        .body(r#"{"username":"a","age":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
}
