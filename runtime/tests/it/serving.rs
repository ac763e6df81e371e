//! A listener under hostile clients, over real loopback sockets: a request
//! head or body that trickles, a connection that sends nothing, a flood of
//! connections (the probes still answer from the reserve), and made-up
//! methods and paths that must not become metric series. Every wait is
//! bounded; nothing here runs longer than a few seconds.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::{get, post};
use hub_runtime::config::HttpConfig;
use hub_runtime::connections::{self, ConnectionStats};
use hub_runtime::shutdown::ShutdownTrigger;
use hub_runtime::{JsonBody, Readiness, Shutdown, service_router};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A test server; dropping the trigger would stop it, so tests keep it.
struct Server {
    addr: std::net::SocketAddr,
    stats: Arc<ConnectionStats>,
    _stop: ShutdownTrigger,
}

async fn echo(JsonBody(body): JsonBody<Value>) -> axum::Json<Value> {
    axum::Json(body)
}

async fn start(config: HttpConfig) -> Server {
    let stats = Arc::new(ConnectionStats::new("test-svc"));
    let readiness =
        Readiness::new("test-svc", Duration::from_millis(300)).with_metrics(stats.clone());
    let routes = Router::new().route("/echo", post(echo)).route(
        "/slow",
        get(|| async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            "late"
        }),
    );
    let router = service_router(routes, readiness, &config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (shutdown, stop) = Shutdown::new();
    let served = Arc::clone(&stats);
    tokio::spawn(
        async move { connections::serve(listener, router, &config, served, shutdown).await },
    );
    Server {
        addr,
        stats,
        _stop: stop,
    }
}

/// Long timers, so only what a test sets decides.
fn patient() -> HttpConfig {
    HttpConfig {
        header_read_timeout_ms: 30_000,
        body_read_timeout_ms: 30_000,
        idle_timeout_ms: 30_000,
        request_timeout_ms: 30_000,
        ..HttpConfig::default()
    }
}

/// Reads until the server closes the connection (or `within` passes:
/// `None`), returning what it sent.
async fn until_closed(stream: &mut TcpStream, within: Duration) -> Option<String> {
    let mut seen = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut seen)).await;
    match read {
        Ok(_) => Some(String::from_utf8_lossy(&seen).into_owned()),
        Err(_) => None,
    }
}

async fn fetch(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let answer = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("an answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, answer)
}

#[tokio::test]
async fn a_head_that_trickles_is_cut_at_the_header_timeout() {
    let server = start(HttpConfig {
        header_read_timeout_ms: 300,
        ..patient()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n")
        .await
        .unwrap();
    let closed = until_closed(&mut stream, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a half-sent head is still held after 5 s");
}

#[tokio::test]
async fn a_body_that_trickles_gets_408_in_the_error_shape() {
    let server = start(HttpConfig {
        body_read_timeout_ms: 300,
        min_body_bytes_per_sec: 1 << 20,
        ..patient()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream
        .write_all(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
              Content-Length: 100\r\n\r\n{\"a\":",
        )
        .await
        .unwrap();
    let answer = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .expect("a half-sent body is still held after 5 s");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}

#[tokio::test]
async fn a_body_that_keeps_its_pace_is_read_past_the_grace() {
    let server = start(HttpConfig {
        body_read_timeout_ms: 300,
        min_body_bytes_per_sec: 100,
        ..patient()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let body = format!(r#"{{"pad":"{}"}}"#, "x".repeat(88));
    stream
        .write_all(
            format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .await
        .unwrap();
    // 100 bytes at 100 B/s may take a second: ten pieces, 50 ms apart.
    for piece in body.as_bytes().chunks(10) {
        stream.write_all(piece).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let answer = until_closed(&mut stream, Duration::from_secs(5))
        .await
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_when_idle() {
    let server = start(HttpConfig {
        idle_timeout_ms: 300,
        ..patient()
    })
    .await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(
        until_closed(&mut stream, Duration::from_secs(5))
            .await
            .is_some(),
        "an idle connection is still held after 5 s"
    );
}

#[tokio::test]
async fn a_request_past_its_deadline_is_503_request_timeout() {
    let server = start(HttpConfig {
        request_timeout_ms: 300,
        ..patient()
    })
    .await;
    let (status, answer) = fetch(server.addr, "/slow").await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("REQUEST_TIMEOUT"), "{answer}");
}

#[tokio::test]
async fn a_full_port_still_answers_probes_and_sheds_the_rest() {
    let server = start(HttpConfig {
        max_connections: 4,
        reserve_connections: 2,
        max_connections_per_client: 100,
        ..patient()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Accepted in order: wait until the four count, so the next are reserve.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.stats.open() < 4 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the four were not accepted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, _) = fetch(server.addr, "/health").await;
    assert_eq!(status, 200, "/health answers from the reserve");
    let (status, answer) = fetch(server.addr, "/echo").await;
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains("OVERLOADED"), "{answer}");
    // Reserve full too: the next connection is closed at once.
    let mut reserve = Vec::new();
    for _ in 0..2 {
        reserve.push(TcpStream::connect(server.addr).await.unwrap());
    }
    while server.stats.open() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the reserve was not taken"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut refused = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        until_closed(&mut refused, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(""),
        "past the reserve a connection is closed without an answer"
    );
    // Places come back when connections close.
    drop(held);
    drop(reserve);
    while server.stats.open() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "places were not given back"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, answer) = fetch(server.addr, "/metrics").await;
    assert_eq!(status, 200, "{answer}");
    assert!(
        answer.contains(r#"polyhub_connections_refused_total{service="test-svc",reason="full"} 1"#),
        "{answer}"
    );
}

#[tokio::test]
async fn one_client_cannot_take_every_place() {
    let server = start(HttpConfig {
        max_connections_per_client: 2,
        ..patient()
    })
    .await;
    let _one = TcpStream::connect(server.addr).await.unwrap();
    let _two = TcpStream::connect(server.addr).await.unwrap();
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        until_closed(&mut third, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(""),
        "a third connection from one address is closed"
    );
}

#[tokio::test]
async fn made_up_methods_and_paths_make_no_new_series() {
    let server = start(patient()).await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    for i in 0..1_000 {
        let method = reqwest::Method::from_bytes(format!("MADEUP{i}").as_bytes()).unwrap();
        let resp = client
            .request(method, format!("{base}/made/up/{i}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404);
    }
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("polyhub_http_requests_total{"))
        .collect();
    assert_eq!(
        series,
        [
            r#"polyhub_http_requests_total{service="test-svc",method="other",route="unmatched",status="404"} 1000"#
        ],
        "{metrics}"
    );
}

#[tokio::test]
async fn an_early_answer_to_a_large_body_leaves_the_client_able_to_go_on() {
    let server = start(HttpConfig {
        max_body_bytes: 1024,
        ..patient()
    })
    .await;
    let client = reqwest::Client::new();
    let base = format!("http://{}", server.addr);
    for _ in 0..3 {
        let resp = client
            .post(format!("{base}/echo"))
            .header("content-type", "application/json")
            .body(format!(r#"{{"a":"{}"}}"#, "x".repeat(300 * 1024)))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 413);
        let health = client.get(format!("{base}/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
    }
}

/// A writer the test reads back: what the logs would have put on stderr.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

async fn access_lines(config: HttpConfig, requests: &[&str]) -> Vec<String> {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    // The test's runtime has one thread: the server's tasks log here too.
    let _guard = tracing::subscriber::set_default(subscriber);
    let server = start(config).await;
    for path in requests {
        fetch(server.addr, path).await;
    }
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    text.lines()
        .filter(|l| l.contains("request"))
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn one_access_line_per_request_with_route_status_and_request_id() {
    let lines = access_lines(patient(), &["/health", "/made/up/path", "/health"]).await;
    assert_eq!(lines.len(), 3, "{lines:#?}");
    assert!(lines[0].contains(r#"route="/health""#), "{}", lines[0]);
    assert!(
        lines[0].contains("status=200") && lines[0].contains("request_id="),
        "{}",
        lines[0]
    );
    assert!(
        lines[1].contains(r#"route="unmatched""#) && lines[1].contains("status=404"),
        "{}",
        lines[1]
    );
    assert!(
        !lines[1].contains("/made/up/path"),
        "the client's path is not logged: {}",
        lines[1]
    );
    assert!(
        lines.iter().all(|l| !l.contains('\u{1b}')),
        "no colour codes in a file"
    );
}

#[tokio::test]
async fn the_access_log_can_keep_errors_only_or_a_sample() {
    use hub_runtime::config::AccessLogMode;
    let errors_only = access_lines(
        HttpConfig {
            access_log: AccessLogMode::Errors,
            ..patient()
        },
        &["/health", "/nope", "/health"],
    )
    .await;
    assert_eq!(errors_only.len(), 1, "{errors_only:#?}");
    assert!(errors_only[0].contains("status=404"));
    let sampled = access_lines(
        HttpConfig {
            access_log_sample: 2,
            ..patient()
        },
        &["/health", "/health", "/health", "/health", "/nope"],
    )
    .await;
    assert_eq!(
        sampled.len(),
        3,
        "two of four successes and the error: {sampled:#?}"
    );
}

/// Behind a gateway: loopback is the trusted proxy, and each request names
/// its client in `X-Forwarded-For`.
fn behind_a_gateway(per_client: usize) -> HttpConfig {
    HttpConfig {
        max_connections_per_client: per_client,
        trusted_proxies: vec!["127.0.0.1".parse().unwrap()],
        ..patient()
    }
}

/// One answer on a kept-alive connection: its head and body (by
/// Content-Length), or what came before the server closed it.
async fn answer(stream: &mut TcpStream) -> String {
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let text = String::from_utf8_lossy(&seen).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(|v| v.trim().parse::<usize>().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= length {
                    return text;
                }
            }
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return text;
            }
            seen.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(5), read)
        .await
        .expect("an answer within 5 s")
}

async fn get_as(stream: &mut TcpStream, path: &str, client: &str) -> String {
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: {client}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .unwrap();
    answer(stream).await
}

#[tokio::test]
async fn a_gateways_clients_are_not_capped_as_one_client() {
    let server = start(behind_a_gateway(2)).await;
    // The gateway's connections, all open at once, for four clients.
    let mut gateway = Vec::new();
    for _ in 0..4 {
        gateway.push(TcpStream::connect(server.addr).await.unwrap());
    }
    for (i, stream) in gateway.iter_mut().enumerate() {
        let answer = get_as(stream, "/health", &format!("203.0.113.{i}")).await;
        assert!(
            answer.starts_with("HTTP/1.1 200"),
            "the gateway's connection {i} for its own client: {answer:?}"
        );
    }
    // Untrusted peers are still capped by their connections (no proxy
    // trusts 127.0.0.2, which loopback also answers on).
    let direct = behind_a_gateway(1);
    let server = start(HttpConfig {
        trusted_proxies: vec!["127.0.0.2".parse().unwrap()],
        ..direct
    })
    .await;
    let _one = TcpStream::connect(server.addr).await.unwrap();
    let mut second = TcpStream::connect(server.addr).await.unwrap();
    assert_eq!(
        until_closed(&mut second, Duration::from_secs(5))
            .await
            .as_deref(),
        Some(""),
        "a second connection from an untrusted address is closed"
    );
}

#[tokio::test]
async fn a_forwarded_client_is_capped_by_its_requests_in_flight() {
    let server = start(behind_a_gateway(2)).await;
    // Two uploads of one client, stalled half-way, on two of the gateway's
    // connections.
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream
            .write_all(
                b"POST /echo HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.7\r\n\
                  Content-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":",
            )
            .await
            .unwrap();
        stalled.push(stream);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while server.stats.forwarded_in_flight() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stalled uploads were not in flight"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The same client's third request is refused, in the error shape...
    let mut third = TcpStream::connect(server.addr).await.unwrap();
    let refused = get_as(&mut third, "/health", "203.0.113.7").await;
    assert!(refused.starts_with("HTTP/1.1 429"), "{refused}");
    assert!(refused.contains("TOO_MANY_ATTEMPTS"), "{refused}");
    assert!(
        refused.to_ascii_lowercase().contains("retry-after: 1"),
        "{refused}"
    );
    // ...on a connection that goes on serving the gateway's other clients,
    // as do its fresh ones.
    let other = get_as(&mut third, "/health", "203.0.113.8").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    let mut fresh = TcpStream::connect(server.addr).await.unwrap();
    let other = get_as(&mut fresh, "/health", "198.51.100.1").await;
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // An upload that ends gives its place back.
    stalled[0].write_all(b"1}").await.unwrap();
    let done = answer(&mut stalled[0]).await;
    assert!(done.starts_with("HTTP/1.1 200"), "{done}");
    while server.stats.forwarded_in_flight() > 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the ended upload kept its place"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let again = get_as(&mut third, "/health", "203.0.113.7").await;
    assert!(again.starts_with("HTTP/1.1 200"), "{again}");
    let metrics = get_as(&mut fresh, "/metrics", "198.51.100.1").await;
    assert!(
        metrics.contains(r#"polyhub_forwarded_requests_refused_total{service="test-svc"} 1"#),
        "{metrics}"
    );
}
