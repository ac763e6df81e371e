//! Three `hub serve` processes sharing PostgreSQL, MongoDB and S3 behind
//! nginx running the project's own config (deploy/nginx/polyhub.conf): the
//! one origin works for every protocol's client, the edge authenticates and
//! rate-limits, and what one instance does the others see at once.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use hub_e2e::{
    Environment, Gateway, ROOT, Served, eventually, free_port, last_connection, log_in, png_file,
    python_json,
};
use mongodb::bson::{Document, doc};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use sqlx::Connection;

const PASSWORD: &str = "correct horse battery";

struct Deployment {
    environments: Vec<Environment>,
    instances: Vec<Option<Served>>,
    gateway: Gateway,
}

impl Deployment {
    /// Three instances that name the gateway as their public address and
    /// trust it as their proxy, and the gateway in front of them.
    fn start() -> Self {
        let (http_port, grpc_port) = (free_port(), free_port());
        let origin = format!("http://127.0.0.1:{http_port}");
        let mut first = Environment::new();
        first.behind_gateway(&origin);
        // The honest clients under load are one address behind the gateway:
        // the anonymous lookups' budget against enumeration is not what is
        // tested here.
        first
            .set(
                "POLYHUB_LIMITS__ANONYMOUS_LOOKUP_PER_CLIENT__BURST",
                "1000000",
            )
            .set(
                "POLYHUB_LIMITS__ANONYMOUS_LOOKUP_PER_CLIENT__REPLENISH_MS",
                "1",
            );
        let environments = vec![first.instance(), first.instance(), first];
        let instances = environments
            .iter()
            .map(|e| Some(e.start("hub", &["serve"], 6)))
            .collect();
        let gateway = Gateway::start_on(
            http_port,
            grpc_port,
            &environments.iter().collect::<Vec<_>>(),
        );
        Self {
            environments,
            instances,
            gateway,
        }
    }

    /// Instance `i`'s own URL for `service`, bypassing the gateway.
    fn direct(&self, i: usize, service: &str) -> String {
        format!("http://127.0.0.1:{}", self.environments[i].port(service))
    }

    fn origin(&self) -> String {
        self.gateway.url()
    }
}

async fn grpcio(target: &str, token: &str, images: &[&Path]) -> Value {
    let script = Path::new(ROOT).join("adapters/grpc-images/tests/clients/grpcio_images.py");
    let proto = Path::new(ROOT).join("proto").display().to_string();
    let images: Vec<String> = images.iter().map(|p| p.display().to_string()).collect();
    let mut args = vec![target, token, proto.as_str()];
    args.extend(images.iter().map(String::as_str));
    python_json(&script, &args).await
}

fn error_code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_behind_the_gateway() {
    let mut hub = Deployment::start();
    let http = Client::new();
    let origin = hub.origin();
    let name = format!("gw.{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);

    // The WSDL names the gateway; zeep registers and looks up through it.
    let wsdl = http
        .get(format!("{origin}/register?wsdl"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        wsdl.contains(&format!("location=\"{origin}/register\"")),
        "{wsdl}"
    );
    let soap = python_json(
        &Path::new(ROOT).join("e2e/clients/soap_user.py"),
        &[
            "register",
            &format!("{origin}/register?wsdl"),
            &format!("{origin}/user/soap?wsdl"),
            &name,
            &format!("{name}@example.com"),
            PASSWORD,
        ],
    )
    .await;
    let user_id = soap["registered"].as_str().unwrap().to_owned();
    assert_eq!(soap["found"], user_id.as_str(), "{soap}");

    // REST login and profile through the one origin, on polyhub's path and
    // on the seed contract's.
    let token = log_in(&http, &origin, &name, PASSWORD).await;
    let seed_login: Value = http
        .post(format!("{origin}/api/auth/login"))
        .json(&json!({"username": name, "password": PASSWORD}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(seed_login["token"].is_string(), "{seed_login}");
    let profile = http
        .get(format!("{origin}/profile"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(profile.status(), 200);
    // The instance kept the gateway's request id (nginx's: 32 hex digits),
    // so the edge's log line and the instance's carry the same id.
    let request_id = profile.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        request_id.len() == 32 && request_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{request_id}"
    );
    // nginx writes its line once the response is sent: poll for it.
    let access_log = hub.gateway.dir.join("logs/polyhub-access.log");
    let needle = format!("rid={request_id}");
    eventually(
        Duration::from_secs(5),
        "the edge's line for the request",
        || {
            let log = std::fs::read_to_string(&access_log).unwrap_or_default();
            std::future::ready(log.contains(&needle).then_some(()))
        },
    )
    .await;
    let verified: Value = http
        .get(format!("{origin}/api/sessions/verify"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["user_id"], user_id.as_str(), "{verified}");
    let session_id = verified["session_id"].as_str().unwrap().to_owned();

    // The login reached MongoDB; the tracker answers through the gateway.
    let last = last_connection(&http, &origin, &token).await;
    assert_eq!(last["username"], name.as_str());

    // grpcio uploads through the gateway's gRPC origin; the image lists on
    // every instance and is delivered through the gateway.
    let image = png_file(&name);
    let target = hub.gateway.grpc_target();
    let uploaded = eventually(Duration::from_secs(30), "an upload via the gateway", || {
        let (target, token, image) = (target.clone(), token.clone(), image.clone());
        async move {
            let seen = grpcio(&target, &token, &[&image]).await;
            (seen["health"] == "SERVING").then_some(seen)
        }
    })
    .await;
    assert_eq!(
        uploaded["without_token"], "UNAUTHENTICATED",
        "the edge refuses a call without a token in gRPC's shape: {uploaded}"
    );
    let image_id = uploaded["uploaded"][0]["id"].as_str().unwrap().to_owned();
    let url = uploaded["uploaded"][0]["url"].as_str().unwrap().to_owned();
    assert!(url.starts_with(&format!("{origin}/images/")), "{url}");
    let fetched = http.get(&url).send().await.unwrap();
    assert_eq!(fetched.status(), 200, "{url}");
    grpc_listener_serves_only_grpc(&hub, &token).await;
    // An HTTP upload past the gateway's default 1m reaches an instance:
    // the edge's authentication subrequest does not judge the body's size.
    let large = http
        .post(format!("{origin}/v1/images"))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body(vec![0u8; 2 << 20])
        .send()
        .await
        .unwrap();
    let status = large.status();
    let body: Value = large.json().await.unwrap();
    assert!(
        status.is_client_error() && !["UNAVAILABLE", "INVALID_TOKEN"].contains(&error_code(&body)),
        "a 2 MiB upload through the gateway: {status} {body}\n{}",
        hub.gateway.error_log()
    );
    for i in 0..3 {
        let direct = format!("127.0.0.1:{}", hub.environments[i].port("grpc-images"));
        let seen = grpcio(&direct, &token, &[]).await;
        assert!(
            seen["listed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|id| id == image_id.as_str()),
            "instance {i} lists the upload: {seen}"
        );
    }

    // Identity headers from a client never reach an instance: through the
    // gateway they are replaced (profile) or removed (login); sent straight
    // to an instance, which trusts loopback as its proxy, they are refused.
    let forged = [
        ("x-polyhub-user-id", "0190a0a0-0000-7000-8000-000000000000"),
        (
            "x-polyhub-session-id",
            "0190a0a0-0000-7000-8000-000000000001",
        ),
        ("x-polyhub-role", "admin"),
    ];
    let with_forged = |request: reqwest::RequestBuilder| {
        forged
            .iter()
            .fold(request, |r, (name, value)| r.header(*name, *value))
    };
    let through = with_forged(http.get(format!("{origin}/profile")).bearer_auth(&token))
        .send()
        .await
        .unwrap();
    assert_eq!(
        through.status(),
        200,
        "the gateway replaced the forged identity"
    );
    let body: Value = through.json().await.unwrap();
    assert_eq!(body["id"], user_id.as_str(), "{body}");
    let login = json!({"username": name, "password": PASSWORD});
    let through = with_forged(http.post(format!("{origin}/login")).json(&login))
        .send()
        .await
        .unwrap();
    assert_eq!(
        through.status(),
        200,
        "the gateway removed the forged identity"
    );
    for (url, request) in [
        (
            "profile",
            http.get(format!("{}/profile", hub.direct(1, "rest-auth")))
                .bearer_auth(&token),
        ),
        (
            "login",
            http.post(format!("{}/login", hub.direct(1, "rest-auth")))
                .json(&login),
        ),
    ] {
        let direct = with_forged(request).send().await.unwrap();
        assert_eq!(direct.status(), 401, "{url} with a forged identity, direct");
        let body: Value = direct.json().await.unwrap();
        assert_eq!(error_code(&body), "INVALID_TOKEN", "{body}");
    }

    session_changes_arrive_once(&hub, &http, &name, &user_id).await;
    console_through_the_gateway(&hub, &name).await;
    edge_rate_limit(&hub, &http).await;

    // A logout through instance 1 is refused by the others, direct and
    // through the gateway, on every protected route, as soon as their
    // session caches have the commit's notification (milliseconds; the
    // bound below only keeps a loaded machine from failing the test).
    let logout = http
        .post(format!("{}/logout", hub.direct(0, "rest-auth")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), 204);
    for i in [1, 2] {
        for url in [
            format!("{}/profile", hub.direct(i, "rest-auth")),
            format!("{}/api/sessions/verify", hub.direct(i, "sessions")),
            format!("{}/last-connection", hub.direct(i, "session-tracker")),
        ] {
            eventually(
                Duration::from_secs(2),
                &format!("{url} refused after logout on instance 1"),
                || async {
                    let answer = http.get(&url).bearer_auth(&token).send().await.ok()?;
                    (answer.status() == 401).then_some(())
                },
            )
            .await;
        }
    }
    for (method, path) in [
        ("GET", "/profile".to_owned()),
        ("POST", "/logout".to_owned()),
        ("GET", "/api/auth/profile".to_owned()),
        ("GET", "/api/sessions/verify".to_owned()),
        ("GET", format!("/api/sessions/{user_id}")),
        (
            "DELETE",
            format!("/api/sessions/{user_id}?session={session_id}"),
        ),
        ("GET", "/last-connection".to_owned()),
        ("POST", "/v1/images".to_owned()),
        ("POST", "/admin/users/import".to_owned()),
    ] {
        let refused = http
            .request(method.parse().unwrap(), format!("{origin}{path}"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), 401, "{method} {path} after logout");
        assert!(refused.headers().contains_key("www-authenticate"));
        let body: Value = refused.json().await.unwrap();
        assert_eq!(
            error_code(&body),
            "INVALID_TOKEN",
            "{method} {path}: {body}"
        );
    }
    let refused = grpcio(&hub.gateway.grpc_target(), &token, &[]).await;
    assert_eq!(refused["list_error"], "UNAUTHENTICATED", "{refused}");

    // Last, as it leaves two instances: one dies under load.
    let token = log_in(&http, &hub.direct(0, "rest-auth"), &name, PASSWORD).await;
    an_instance_dies_under_load(&mut hub, &http, &name, &token).await;
}

/// 500 session changes, spread over the three instances and the gateway,
/// each in MongoDB exactly once: every instance runs a relay, and no two
/// deliver the same event.
async fn session_changes_arrive_once(hub: &Deployment, http: &Client, name: &str, user_id: &str) {
    let token = log_in(http, &hub.origin(), name, PASSWORD).await;
    let bases: Vec<String> = (0..3)
        .map(|i| hub.direct(i, "sessions"))
        .chain([hub.origin()])
        .collect();
    let bases = Arc::new(bases);
    let next = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let (http, bases, next, token) = (
                http.clone(),
                Arc::clone(&bases),
                Arc::clone(&next),
                token.clone(),
            );
            let user_id = user_id.to_owned();
            tokio::spawn(async move {
                // 250 opened sessions, each revoked: 500 changes.
                loop {
                    let n = next.fetch_add(1, Ordering::Relaxed);
                    if n >= 250 {
                        break;
                    }
                    let opened = http
                        .post(format!("{}/api/sessions", bases[n % 4]))
                        .bearer_auth(&token)
                        .json(&json!({}))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(opened.status(), 201, "open #{n}");
                    let opened: Value = opened.json().await.unwrap();
                    let session = opened["session"]["id"].as_str().unwrap().to_owned();
                    let revoked = http
                        .delete(format!(
                            "{}/api/sessions/{user_id}?session={session}",
                            bases[(n + 1) % 4]
                        ))
                        .bearer_auth(&token)
                        .send()
                        .await
                        .unwrap();
                    assert!(
                        revoked.status().is_success(),
                        "revoke #{n}: {}",
                        revoked.status()
                    );
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }

    let environment = &hub.environments[0];
    let mut db = sqlx::PgConnection::connect(environment.var("POLYHUB_DATABASE__URL"))
        .await
        .unwrap();
    let outbox: BTreeSet<String> = sqlx::query_as::<_, (uuid::Uuid,)>(
        "SELECT event_id FROM events WHERE type LIKE 'session.%'",
    )
    .fetch_all(&mut db)
    .await
    .unwrap()
    .into_iter()
    .map(|(id,)| id.to_string())
    .collect();
    assert!(outbox.len() >= 500, "{} events in the outbox", outbox.len());
    let mongo = mongodb::Client::with_uri_str(environment.var("POLYHUB_MONGO__URL"))
        .await
        .unwrap();
    let events = mongo
        .database(environment.var("POLYHUB_MONGO__DATABASE"))
        .collection::<Document>("session_events");
    let expected = outbox.len() as u64;
    let documents = eventually(Duration::from_secs(60), "every event in MongoDB", || {
        let events = events.clone();
        async move {
            let n = events.count_documents(doc! {}).await.ok()?;
            (n >= expected).then_some(n)
        }
    })
    .await;
    // Give a duplicate the time to show up before counting.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let documents = documents.max(events.count_documents(doc! {}).await.unwrap());
    assert_eq!(documents, expected, "one document per event");
    let recorded: BTreeSet<String> = events
        .distinct("_id", doc! {})
        .await
        .unwrap()
        .into_iter()
        .map(|id| id.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recorded, outbox, "the same events on both sides");
}

/// Past its burst, the gateway's login limit answers 429 in polyhub's shape
/// without reaching an instance.
async fn edge_rate_limit(hub: &Deployment, http: &Client) {
    let attempts: Vec<_> = (0..40)
        .map(|_| {
            http.post(format!("{}/api/auth/login", hub.origin()))
                .header("content-type", "application/json")
                .body("{}")
                .send()
        })
        .collect();
    let (mut limited, mut reached) = (0, 0);
    for attempt in attempts {
        let response = attempt.await.unwrap();
        match response.status() {
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(response.headers()["retry-after"], "1");
                let body: Value = response.json().await.unwrap();
                assert_eq!(error_code(&body), "TOO_MANY_ATTEMPTS", "{body}");
                assert!(body["request_id"].as_str().is_some_and(|id| !id.is_empty()));
                limited += 1;
            }
            // The instance's own answer to an empty login.
            StatusCode::BAD_REQUEST => reached += 1,
            other => panic!("an empty login answered {other}"),
        }
    }
    assert!(limited >= 10, "{limited} of 40 limited at the edge");
    assert!(reached >= 1, "the burst reached an instance");
}

/// The account console through the gateway: its pages are routed, and a
/// sign-in form whose Origin names the gateway is accepted (nginx passes the
/// client's Host, port included, which the origin check compares with).
async fn console_through_the_gateway(hub: &Deployment, name: &str) {
    let origin = hub.origin();
    let browser = Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = browser
        .get(format!("{origin}/account/signin"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let policy = page.headers()["content-security-policy"].to_str().unwrap();
    assert!(policy.contains("frame-ancestors 'none'"), "{policy}");
    let csrf = page
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("polyhub_csrf="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let form = format!(
        "csrf={csrf}&login={name}&password={}",
        PASSWORD.replace(' ', "+")
    );
    let post = |origin_header: String| {
        browser
            .post(format!("{origin}/account/signin"))
            .header("origin", origin_header)
            .header("cookie", format!("polyhub_csrf={csrf}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form.clone())
            .send()
    };
    let forged = post("http://evil.example".to_owned()).await.unwrap();
    assert_eq!(forged.status(), 403, "a form from another origin");
    let signed_in = post(origin.clone()).await.unwrap();
    assert_eq!(signed_in.status(), 303, "{:?}", signed_in.text().await);
    assert_eq!(signed_in.headers()["location"], "/account");
    // What the browser sends from now on: the session and its CSRF secret.
    let session = signed_in
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.starts_with("polyhub_session=") || c.starts_with("polyhub_csrf="))
        .map(|c| c.split(';').next().unwrap().to_owned())
        .collect::<Vec<_>>()
        .join("; ");
    let account = browser
        .get(format!("{origin}/account"))
        .header("cookie", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(account.status(), 200);
    assert!(account.text().await.unwrap().contains(name));
    console_upload_at_the_edge(hub, &browser, &session, &origin).await;
}

/// A raw HTTP/1.1 request to the gateway: `head` (its blank line included)
/// and the first bytes of its body, the rest never sent.
fn stalled_request(port: u16, head: &str, body_start: &[u8]) -> std::net::TcpStream {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body_start).unwrap();
    stream
}

/// The head of the answer on `stream`, if one arrives within `within`.
fn answer_head(stream: &mut std::net::TcpStream, within: Duration) -> Option<String> {
    use std::io::Read;
    stream.set_read_timeout(Some(within)).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => seen.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&seen).into_owned();
    text.split_once("\r\n\r\n").map(|(head, _)| head.to_owned())
}

/// The console's upload form at the edge: a browser that is not signed in
/// is sent to sign in by the gateway before it reads a byte of the body (it
/// used to spool up to 64 MiB of it first), a signed-in one uploads
/// through it, and one client has at most 8 uploads in flight.
async fn console_upload_at_the_edge(
    hub: &Deployment,
    browser: &Client,
    session: &str,
    origin: &str,
) {
    let port = hub.gateway.http_port;
    let boundary = "polyhub-e2e-boundary";
    let head = |cookie: &str, length: usize| {
        format!(
            "POST /account/images HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: {origin}\r\n\
             Content-Type: multipart/form-data; boundary={boundary}\r\n\
             Content-Length: {length}\r\n{cookie}\r\n"
        )
    };
    // Not signed in, announcing 60 MB and sending a few bytes: answered at
    // once, by the edge (the console's own answers carry its CSP).
    let mut anonymous = stalled_request(
        port,
        &head("", 60_000_000),
        format!("--{boundary}\r\n").as_bytes(),
    );
    let answered = answer_head(&mut anonymous, Duration::from_secs(3)).unwrap_or_else(|| {
        panic!(
            "no answer to an anonymous upload while its body is unsent: the gateway is reading \
             (spooling) it before authenticating"
        )
    });
    assert!(
        answered.starts_with("HTTP/1.1 303"),
        "{answered}\n{}",
        hub.gateway.error_log()
    );
    let lower = answered.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nlocation: /account/signin"),
        "{answered}"
    );
    assert!(
        !lower.contains("content-security-policy"),
        "answered by the edge: {answered}"
    );
    // A forged or stale cookie is no better.
    let mut forged = stalled_request(
        port,
        &head("Cookie: polyhub_session=e30.e30.forged\r\n", 60_000_000),
        b"",
    );
    let answered =
        answer_head(&mut forged, Duration::from_secs(3)).expect("an answer to a forged cookie");
    assert!(answered.starts_with("HTTP/1.1 303"), "{answered}");

    // Signed in, the form goes through the edge (which passes no identity
    // headers the instance would refuse without a bearer token).
    let page = browser
        .get(format!("{origin}/account/images"))
        .header("cookie", session)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    let page = page.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in the images page:\n{page}"))
        .to_owned();
    let png = std::fs::read(png_file("gw-console")).unwrap();
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{csrf}\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"gw.png\"\r\n\
         Content-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&png);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let uploaded = browser
        .post(format!("{origin}/account/images"))
        .header("origin", origin)
        .header("cookie", session)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(uploaded.status(), 303, "{:?}", uploaded.text().await);
    assert_eq!(uploaded.headers()["location"], "/account/images?done=1");

    // Eight signed-in uploads stalled in their CSRF field (each held by an
    // instance, waiting): a ninth from the same client is refused at the
    // edge, in polyhub's shape.
    let cookie = format!("Cookie: {session}\r\n");
    let start = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\n{}",
        &csrf[..10]
    );
    // Sent one at a time until one is refused: the refused one is at the
    // latest the ninth (earlier when a request of the steps above is still
    // in flight at the gateway), and the gateway never took in more than 8.
    let mut stalled = Vec::new();
    let mut refused = None;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while refused.is_none() && std::time::Instant::now() < deadline {
        if stalled.len() < 12 {
            stalled.push(stalled_request(
                port,
                &head(&cookie, 100_000),
                start.as_bytes(),
            ));
        }
        for (index, stream) in stalled.iter_mut().enumerate() {
            if let Some(answer) = answer_head(stream, Duration::from_millis(20)) {
                refused = Some((index, answer));
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (index, answered) = refused.expect("an upload past the 8 in flight is refused");
    assert!(
        index <= 8,
        "the gateway took in {index} uploads before refusing"
    );
    assert!(answered.starts_with("HTTP/1.1 429"), "{answered}");
    assert!(
        answered.to_ascii_lowercase().contains("retry-after: 1"),
        "{answered}"
    );
    drop(stalled);
}

/// The gateway's gRPC listener forwards only the image service's gRPC
/// services: with a valid token, the instance's `/metrics` and `/ready`
/// (and anything else) are 404 there.
async fn grpc_listener_serves_only_grpc(hub: &Deployment, token: &str) {
    for path in [
        "/metrics",
        "/ready",
        "/health",
        "/v1/images/openapi.json",
        "/nope",
    ] {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--http2-prior-knowledge",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
                "-H",
            ])
            .arg(format!("authorization: Bearer {token}"))
            .arg(format!("http://{}{path}", hub.gateway.grpc_target()))
            .output()
            .await
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or_default();
        assert_eq!(status, "404", "{path} through the gRPC listener: {text}");
        assert!(!body.contains("polyhub_"), "{path}: {body}");
        assert!(body.contains("NOT_FOUND"), "{path}: {body}");
    }
}

/// One instance killed while honest clients read through the gateway: the
/// gateway retries their idempotent requests elsewhere (no error is seen)
/// and stops sending to the dead instance.
async fn an_instance_dies_under_load(hub: &mut Deployment, http: &Client, name: &str, token: &str) {
    let origin = hub.origin();
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (http, origin, stop, served) = (
                http.clone(),
                origin.clone(),
                Arc::clone(&stop),
                Arc::clone(&served),
            );
            let (name, token) = (name.to_owned(), token.to_owned());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let request = if w % 2 == 0 {
                        http.get(format!("{origin}/user/soap?username={name}"))
                    } else {
                        http.get(format!("{origin}/api/sessions/verify"))
                            .bearer_auth(&token)
                    };
                    let response = request.send().await.unwrap();
                    assert_eq!(
                        response.status(),
                        200,
                        "worker {w}: {}",
                        response.text().await.unwrap()
                    );
                    served.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let access_log = hub.gateway.dir.join("logs/polyhub-access.log");
    let dead_ports: Vec<String> = ["soap-lookup", "sessions"]
        .iter()
        .map(|s| format!("127.0.0.1:{}", hub.environments[1].port(s)))
        .collect();
    hub.instances[1] = None; // SIGKILL: no graceful goodbye
    let killed_at = std::fs::metadata(&access_log).unwrap().len() as usize;
    let before = served.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let after = served.load(Ordering::Relaxed) - before;
    assert!(after >= 50, "only {after} requests after the kill");
    let log = std::fs::read_to_string(&access_log).unwrap();
    let tried_dead = log[killed_at..]
        .lines()
        .filter(|line| dead_ports.iter().any(|port| line.contains(port.as_str())))
        .count();
    // Each upstream group tries the dead instance until it fails once
    // (max_fails=1), and then not again within fail_timeout.
    assert!(
        tried_dead <= 12,
        "{tried_dead} of {after} requests after the kill still went to the dead instance:\n{}",
        hub.gateway.error_log()
    );
}
