//! Webhooks and the live feeds, through the whole wiring: endpoints managed
//! over REST, deliveries verified by the `standardwebhooks` library in a
//! receiver that is away at first, the address guard, 410 Gone, and the
//! WebSocket and gRPC feeds driven by `websockets` and grpcio.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use hub::Service;
use hub_core::Role;
use hub_testkit::{TestHub, TestSetup, eventually, free_port, scratch_dir, sign_up, venv_bin};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "correct horse battery";

fn client(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// An admin's and a user's tokens.
async fn admin_and_user(hub: &TestHub, rest: &str, suffix: &str) -> (String, String) {
    let admin = format!("hookadmin{suffix}");
    sign_up(rest, &admin, PASSWORD).await;
    // A role change ends the user's sessions: the admin signs in again.
    hub.hub
        .administration()
        .set_role(&admin, Role::Admin)
        .await
        .unwrap();
    let login: Value = reqwest::Client::new()
        .post(format!("{rest}/login"))
        .json(&json!({"username": admin, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let admin_token = login["token"].as_str().unwrap().to_owned();
    let user_token = sign_up(rest, &format!("hookuser{suffix}"), PASSWORD).await["token"]
        .as_str()
        .unwrap()
        .to_owned();
    (admin_token, user_token)
}

/// The Standard Webhooks receiver, on `port`, trusting `secrets`.
struct Receiver {
    child: Child,
    out: PathBuf,
}

impl Receiver {
    fn start(port: u16, secrets: &[&str], fail_first: u32) -> Self {
        let out = scratch_dir().join(format!("hooks-{}.jsonl", uuid::Uuid::now_v7().simple()));
        let mut child = Command::new(venv_bin("python"))
            .arg(client("webhook_receiver.py"))
            .arg(port.to_string())
            .arg(&out)
            .args(secrets)
            .args([
                "--fail-first",
                &fail_first.to_string(),
                "--max-seconds",
                "120",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut first = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut first)
            .unwrap();
        assert!(first.starts_with("listening on"), "{first}");
        Self { child, out }
    }

    fn lines(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn verified(&self) -> Vec<Value> {
        self.lines()
            .into_iter()
            .filter(|l| l["outcome"] == "verified")
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The endpoint at `url` as admins see it, once its status is `status`
/// (within `secs` seconds).
async fn status_becomes(
    http: &reqwest::Client,
    url: String,
    admin: &str,
    status: &str,
    secs: u64,
) -> Value {
    let what = format!("{url} {status}");
    eventually(Duration::from_secs(secs), &what, || {
        let (http, url, admin) = (http.clone(), url.clone(), admin.to_owned());
        async move {
            let (_, shown) = call(&http, reqwest::Method::GET, url, &admin, None).await;
            (shown["status"] == status).then_some(shown)
        }
    })
    .await
}

async fn call(
    http: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    token: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = http.request(method, url).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn deliveries_are_signed_in_order_per_user_and_retried_with_the_same_id() {
    let mut setup = TestSetup::new(&[Service::RestAuth, Service::Sessions]);
    setup.config.webhooks.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    setup.config.webhooks.min_backoff_ms = 100;
    setup.config.webhooks.max_backoff_ms = 400;
    setup.config.webhooks.idle_poll_ms = 20;
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let http = reqwest::Client::new();
    let (admin, user) = admin_and_user(&hub, &rest, "a").await;
    let port = free_port();
    let hooks = format!("{rest}/admin/webhooks");

    // Only an admin manages endpoints.
    let body = json!({"url": format!("http://127.0.0.1:{port}/in"), "events": ["user.*"]});
    let (status, refused) = call(
        &http,
        reqwest::Method::POST,
        hooks.clone(),
        &user,
        Some(body),
    )
    .await;
    assert_eq!(
        (status, refused["error"]["code"].as_str()),
        (403, Some("FORBIDDEN"))
    );
    // Addresses outside the allow-list are refused before any connection:
    // another loopback address, a private one, the cloud metadata address.
    for url in [
        format!("http://127.0.0.2:{port}/in"),
        "http://10.1.2.3/in".to_owned(),
        "http://169.254.169.254/latest/meta-data".to_owned(),
        "http://[::1]:9/in".to_owned(),
    ] {
        let body = json!({"url": url, "events": ["*"]});
        let (status, refused) = call(
            &http,
            reqwest::Method::POST,
            hooks.clone(),
            &admin,
            Some(body),
        )
        .await;
        assert_eq!(status, 400, "{url}: {refused}");
        assert_eq!(refused["error"]["code"], "WEBHOOK_TARGET_REFUSED", "{url}");
    }
    for (url, events) in [
        ("ftp://127.0.0.1/in", json!(["*"])),
        ("http://user:pw@127.0.0.1/in", json!(["*"])),
        ("http://127.0.0.1/in", json!(["user.exploded"])),
    ] {
        let body = json!({"url": url, "events": events});
        let (status, refused) = call(
            &http,
            reqwest::Method::POST,
            hooks.clone(),
            &admin,
            Some(body),
        )
        .await;
        assert_eq!(
            (status, refused["error"]["code"].as_str()),
            (400, Some("INVALID_REQUEST")),
            "{url}"
        );
    }

    // The endpoint, while its receiver is not there yet.
    let body = json!({"url": format!("http://127.0.0.1:{port}/in"), "events": ["user.*", "session.*"], "description": "HR"});
    let (status, created) = call(
        &http,
        reqwest::Method::POST,
        hooks.clone(),
        &admin,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let id = created["id"].as_str().unwrap().to_owned();

    // Three users: each registers, signs in and out.
    let mut users = Vec::new();
    for n in 0..3 {
        let name = format!("hooked{n}");
        let login = sign_up(&rest, &name, PASSWORD).await;
        let token = login["token"].as_str().unwrap();
        let out = http
            .post(format!("{rest}/logout"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(out.status(), 204);
        users.push(name);
    }
    // Away: deliveries fail and back off; the endpoint says it is failing.
    let failing = status_becomes(&http, format!("{hooks}/{id}"), &admin, "failing", 10).await;
    assert!(
        failing["last_error"].as_str().unwrap().contains("connect"),
        "{failing}"
    );

    // Back, refusing its first two deliveries: every event arrives, verified.
    let receiver = Receiver::start(port, &[&secret], 2);
    let verified = eventually(Duration::from_secs(30), "nine deliveries", || {
        let got = receiver.verified();
        async move { (got.len() >= 9).then_some(got) }
    })
    .await;
    let lines = receiver.lines();
    assert!(
        lines.iter().all(|l| l["outcome"] != "rejected"),
        "{lines:?}"
    );
    // A refused delivery came again with the same webhook-id.
    let failed: Vec<&Value> = lines.iter().filter(|l| l["outcome"] == "failed").collect();
    assert_eq!(failed.len(), 2);
    for f in failed {
        assert!(
            verified.iter().any(|v| v["webhook_id"] == f["webhook_id"]),
            "{f}"
        );
    }
    // webhook-id is the event's id; each user's events in the log's order.
    for v in &verified {
        assert_eq!(v["webhook_id"], v["body"]["event_id"]);
        assert!(v["body"]["timestamp"].is_string());
    }
    for name in &users {
        let created = verified
            .iter()
            .find(|v| {
                v["body"]["type"] == "user.created"
                    && v["body"]["data"]["username"] == name.as_str()
            })
            .unwrap();
        let mut seen = std::collections::HashSet::new();
        let types: Vec<&str> = verified
            .iter()
            .filter(|v| v["body"]["user_id"] == created["body"]["user_id"])
            .filter(|v| seen.insert(v["webhook_id"].as_str().unwrap().to_owned()))
            .map(|v| v["body"]["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            ["user.created", "session.opened", "session.revoked"],
            "{name}"
        );
    }
    let shown = status_becomes(&http, format!("{hooks}/{id}"), &admin, "active", 5).await;
    assert_eq!(shown["events"], json!(["user.*", "session.*"]));

    // A rotated secret: the receiver that knows only the old one still
    // verifies during the grace period (both signatures are sent).
    let (status, rotated) = call(
        &http,
        reqwest::Method::POST,
        format!("{hooks}/{id}/rotate-secret"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 200, "{rotated}");
    assert_ne!(rotated["secret"], secret);
    sign_up(&rest, "hookedlate", PASSWORD).await;
    // Its user.created and session.opened, both verified with the old secret.
    eventually(
        Duration::from_secs(10),
        "deliveries after the rotation",
        || {
            let got = receiver.verified();
            async move { (got.len() >= 11).then_some(()) }
        },
    )
    .await;
    assert!(
        receiver
            .verified()
            .iter()
            .any(|v| v["body"]["data"]["username"] == "hookedlate")
    );

    // Replay: everything after the first delivery again, same ids.
    let first = verified
        .iter()
        .filter_map(|v| v["body"]["id"].as_i64())
        .min()
        .unwrap();
    let before = receiver.verified().len();
    let (status, replayed) = call(
        &http,
        reqwest::Method::POST,
        format!("{hooks}/{id}/replay"),
        &admin,
        Some(json!({"after": first})),
    )
    .await;
    assert_eq!(status, 200, "{replayed}");
    let queued = replayed["queued"].as_u64().unwrap();
    assert!(queued >= 8, "{replayed}");
    let again = eventually(Duration::from_secs(20), "the replayed deliveries", || {
        let got = receiver.verified();
        async move { (got.len() >= before + usize::try_from(queued).unwrap()).then_some(got) }
    })
    .await;
    let replayed_ids: Vec<&Value> = again[before..].iter().map(|v| &v["webhook_id"]).collect();
    assert!(
        replayed_ids
            .iter()
            .all(|id| again[..before].iter().any(|v| &&v["webhook_id"] == id))
    );

    // The endpoint's own changes are events of the log.
    let log = hub.hub.event_log().read(None, 1000).await.unwrap();
    let types: Vec<&str> = log.iter().map(|e| e.event.type_name()).collect();
    assert!(types.contains(&"webhook.created") && types.contains(&"webhook.secret_rotated"));

    // Deleted: gone, and so is its queue.
    let response = http
        .delete(format!("{hooks}/{id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let (status, _) = call(
        &http,
        reqwest::Method::GET,
        format!("{hooks}/{id}"),
        &admin,
        None,
    )
    .await;
    assert_eq!(status, 404);
    let subscribers = hub.hub.event_log().subscribers().await.unwrap();
    assert!(
        subscribers.iter().all(|s| !s.name.starts_with("webhook:")),
        "{subscribers:?}"
    );
    let metrics = hub.metrics(Service::Sessions).await;
    assert!(
        metrics.contains("polyhub_webhook_delivered_total"),
        "{metrics}"
    );
}

/// A receiver that answers every request with `status` (and a redirect's
/// Location): how many requests it saw.
async fn answering(
    status: &'static str,
) -> (
    u16,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    receiving(status, None).await
}

/// As [`answering`], except that a body containing `refuse` is answered
/// 503.
async fn receiving(
    status: &'static str,
    refuse: Option<String>,
) -> (
    u16,
    tokio::task::JoinHandle<()>,
    std::sync::Arc<std::sync::atomic::AtomicUsize>,
) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let (counter, refuse) = (std::sync::Arc::clone(&counter), refuse.clone());
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 65536];
                let mut read = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    read.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&read);
                    let Some(end) = text.find("\r\n\r\n") else {
                        continue;
                    };
                    let length: usize = text[..end]
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase()
                                .strip_prefix("content-length:")
                                .map(|v| v.trim().parse().unwrap_or(0))
                        })
                        .unwrap_or(0);
                    if read.len() < end + 4 + length {
                        continue;
                    }
                    let body =
                        String::from_utf8_lossy(&read[end + 4..end + 4 + length]).into_owned();
                    read.drain(..end + 4 + length);
                    counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let status = match &refuse {
                        Some(refused) if body.contains(refused.as_str()) => {
                            "503 Service Unavailable"
                        }
                        Some(_) => "204 No Content",
                        None => status,
                    };
                    let answer = format!(
                        "HTTP/1.1 {status}\r\nlocation: http://127.0.0.1:9/elsewhere\r\ncontent-length: 0\r\n\r\n"
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, task, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn redirects_are_not_followed_and_410_gone_disables_the_endpoint() {
    let mut setup = TestSetup::new(&[Service::RestAuth, Service::Sessions]);
    setup.config.webhooks.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    setup.config.webhooks.min_backoff_ms = 100;
    setup.config.webhooks.max_backoff_ms = 200;
    setup.config.webhooks.idle_poll_ms = 20;
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let http = reqwest::Client::new();
    let (admin, _) = admin_and_user(&hub, &rest, "b").await;
    let hooks = format!("{rest}/admin/webhooks");
    let (moved, _redirecting, _) = answering("302 Found").await;
    let (gone, _gone_task, gone_seen) = answering("410 Gone").await;
    let mut ids = Vec::new();
    for port in [moved, gone] {
        let body =
            json!({"url": format!("http://127.0.0.1:{port}/in"), "events": ["user.created"]});
        let (status, created) = call(
            &http,
            reqwest::Method::POST,
            hooks.clone(),
            &admin,
            Some(body),
        )
        .await;
        assert_eq!(status, 201, "{created}");
        ids.push(created["id"].as_str().unwrap().to_owned());
    }
    sign_up(&rest, "hookgone", PASSWORD).await;
    let redirected =
        status_becomes(&http, format!("{hooks}/{}", ids[0]), &admin, "failing", 10).await;
    assert!(
        redirected["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{redirected}"
    );
    let disabled =
        status_becomes(&http, format!("{hooks}/{}", ids[1]), &admin, "disabled", 10).await;
    assert!(
        disabled["disabled_reason"]
            .as_str()
            .unwrap()
            .contains("410"),
        "{disabled}"
    );
    // Disabled: nothing more is sent, and the log says why.
    let seen = gone_seen.load(std::sync::atomic::Ordering::SeqCst);
    sign_up(&rest, "hookgone2", PASSWORD).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(gone_seen.load(std::sync::atomic::Ordering::SeqCst), seen);
    let log = hub.hub.event_log().read(None, 1000).await.unwrap();
    let disabled_event = log
        .iter()
        .find(|e| e.event.type_name() == "webhook.disabled")
        .expect("a webhook.disabled event");
    assert_eq!(
        disabled_event.to_json()["data"]["endpoint_id"],
        ids[1].as_str()
    );
    // Enabled again, it is subscribed again.
    let response = http
        .post(format!("{hooks}/{}/enable", ids[1]))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    let subscribers = hub.hub.event_log().subscribers().await.unwrap();
    assert!(
        subscribers
            .iter()
            .any(|s| s.name == format!("webhook:{}", ids[1]))
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn websockets_and_grpcio_follow_the_log_as_admins_only() {
    let hub = TestHub::with(&[Service::RestAuth, Service::GrpcImages]).await;
    let rest = hub.url(Service::RestAuth);
    let grpc = hub.url(Service::GrpcImages);
    let (admin, user) = admin_and_user(&hub, &rest, "c").await;
    let target = grpc.trim_start_matches("http://").to_owned();
    let proto = format!("{}/../proto", env!("CARGO_MANIFEST_DIR"));
    let python = venv_bin("python");
    let (ws, grpcio) = tokio::task::spawn_blocking(move || {
        let ws = Command::new(&python)
            .arg(client("events_ws.py"))
            .args([&rest, &admin, &user, "c1"])
            .output()
            .unwrap();
        let grpcio = Command::new(&python)
            .arg(client("grpcio_events.py"))
            .args([&target, &admin, &user, &proto, &rest, "c2"])
            .output()
            .unwrap();
        (ws, grpcio)
    })
    .await
    .unwrap();
    for (who, out) in [("websockets", &ws), ("grpcio", &grpcio)] {
        assert!(
            out.status.success(),
            "{who}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_websocket_reader_too_slow_is_closed_with_4429() {
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.events.buffer = 8;
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let (admin, _) = admin_and_user(&hub, &rest, "d").await;
    let address = rest.trim_start_matches("http://").to_owned();
    let mut socket = tokio::net::TcpStream::connect(&address).await.unwrap();
    let upgrade = format!(
        "GET /events/ws HTTP/1.1\r\nHost: {address}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {admin}\r\n\r\n"
    );
    socket.write_all(upgrade.as_bytes()).await.unwrap();
    let mut head = vec![0u8; 1024];
    let n = socket.read(&mut head).await.unwrap();
    assert!(
        String::from_utf8_lossy(&head[..n]).starts_with("HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head[..n])
    );
    // A masked text frame: subscribe to user_updates.
    let payload = br#"{"action":"subscribe","topic":"user_updates"}"#;
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | u8::try_from(payload.len()).unwrap()];
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    socket.write_all(&frame).await.unwrap();
    // Many events while the reader reads nothing: more than the socket's
    // buffers and the feed's buffer hold.
    let pool = sqlx::PgPool::connect(hub.config().database.url.expose())
        .await
        .unwrap();
    // In short statements: the log's readers (every test's, on this
    // server) wait for the oldest running transaction.
    for _ in 0..20 {
        sqlx::query(
            "INSERT INTO events (event_id, type, user_id, occurred_at, data) \
         SELECT gen_random_uuid(), 'user.password_changed', (SELECT id FROM users LIMIT 1), now(), \
                '{}'::jsonb \
         FROM generate_series(1, 2000)",
        )
        .execute(&pool)
        .await
        .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Reading again, the reader finds the close, code 4429, after what fit.
    let mut read = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), socket.read_to_end(&mut read)).await;
    let close = read
        .windows(4)
        .any(|w| w[0] == 0x88 && w[2..4] == 4429u16.to_be_bytes());
    assert!(
        close,
        "no 4429 close in {} bytes: {:?}",
        read.len(),
        String::from_utf8_lossy(&read[..read.len().min(300)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn one_user_refused_holds_back_only_that_user() {
    let mut setup = TestSetup::new(&[Service::RestAuth, Service::Sessions]);
    setup.config.webhooks.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    setup.config.webhooks.idle_poll_ms = 20;
    // Smaller than the refused user's backlog: their events alone would fill
    // every batch if the claim did not leave them out.
    setup.config.webhooks.batch_size = 3;
    let hub = setup.start().await;
    let rest = hub.url(Service::RestAuth);
    let http = reqwest::Client::new();
    let (admin, _) = admin_and_user(&hub, &rest, "e").await;
    let stuck = sign_up(&rest, "hookstuck", PASSWORD).await;
    let stuck_id = hub
        .hub
        .users()
        .find_by_username(&hub_core::Username::parse("hookstuck").unwrap())
        .await
        .unwrap()
        .unwrap()
        .id
        .to_string();
    drop(stuck);
    let (port, _task, seen) = receiving("204 No Content", Some(stuck_id.clone())).await;
    let body = json!({"url": format!("http://127.0.0.1:{port}/in"), "events": ["session.*"]});
    let (status, created) = call(
        &http,
        reqwest::Method::POST,
        format!("{rest}/admin/webhooks"),
        &admin,
        Some(body),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    // Eight sessions of the refused user first, then one of another.
    for _ in 0..8 {
        let login = http
            .post(format!("{rest}/login"))
            .json(&json!({"username": "hookstuck", "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(login.status(), 200);
    }
    sign_up(&rest, "hookfree", PASSWORD).await;
    let subscriber = format!("webhook:{}", created["id"].as_str().unwrap());
    eventually(
        Duration::from_secs(20),
        "the other user's event delivered",
        || {
            let log = hub.hub.event_log();
            let subscriber = subscriber.clone();
            async move {
                let waiting = log.subscribers().await.unwrap();
                let pending = waiting.iter().find(|s| s.name == subscriber)?.pending;
                // Only the refused user's eight remain.
                (pending == 8).then_some(())
            }
        },
    )
    .await;
    assert!(seen.load(std::sync::atomic::Ordering::SeqCst) >= 2);
}
