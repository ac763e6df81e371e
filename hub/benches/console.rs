//! The account console's pages, each figure beside its baseline measured in
//! the same run.
//!
//!     scripts/bench console
//!
//! 1. Time to first byte and full load (the page, then its one stylesheet:
//!    the pages load nothing else) of the sign-in page and of the devices
//!    page of a user signed in on five devices, and what each transfers,
//!    beside `GET /health` on the same port, over one keep-alive connection.
//! 2. Sign-in page requests/s against `/health` on the same port, wrk with 32
//!    connections for both.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use hub_testkit::{Service, TestSetup};
use reqwest::header;
use serde_json::json;

/// Requests per page for the latency figures.
const SAMPLES: usize = 300;

struct Timing {
    first_byte: Vec<Duration>,
    full: Vec<Duration>,
    bytes: usize,
}

fn percentile(values: &mut [Duration], p: f64) -> f64 {
    values.sort_unstable();
    let i = ((values.len() as f64 - 1.0) * p).round() as usize;
    values[i].as_secs_f64() * 1000.0
}

/// What a response costs on the wire, near enough: its status line and
/// headers as sent, and its body.
fn wire_bytes(response: &reqwest::Response, body: usize) -> usize {
    let headers: usize = response
        .headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum();
    17 + headers + 2 + body
}

async fn time_page(client: &reqwest::Client, url: &str, css: Option<&str>, cookie: &str) -> Timing {
    let mut timing = Timing {
        first_byte: Vec::new(),
        full: Vec::new(),
        bytes: 0,
    };
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let response = client
            .get(url)
            .header(header::COOKIE, cookie)
            .send()
            .await
            .unwrap();
        assert!(
            response.status().is_success(),
            "{url}: {}",
            response.status()
        );
        timing.first_byte.push(started.elapsed());
        let mut bytes = 0;
        let head = wire_bytes(&response, 0);
        bytes += head + response.bytes().await.unwrap().len();
        if let Some(css) = css {
            let sheet = client.get(css).send().await.unwrap();
            bytes += wire_bytes(&sheet, 0) + sheet.bytes().await.unwrap().len();
        }
        timing.full.push(started.elapsed());
        timing.bytes = bytes;
    }
    timing
}

fn row(name: &str, timing: &mut Timing, health: &mut Timing) {
    println!(
        "| {name} | TTFB p50 {:.2} ms, p99 {:.2} ms; full load p50 {:.2} ms, p99 {:.2} ms; {:.1} KB | /health TTFB p50 {:.2} ms | TTFB ratio {:.1} |",
        percentile(&mut timing.first_byte, 0.5),
        percentile(&mut timing.first_byte, 0.99),
        percentile(&mut timing.full, 0.5),
        percentile(&mut timing.full, 0.99),
        timing.bytes as f64 / 1000.0,
        percentile(&mut health.first_byte, 0.5),
        percentile(&mut timing.first_byte, 0.5) / percentile(&mut health.first_byte, 0.5),
    );
}

/// Signs in through the console's own form; the `Cookie` header from then on.
async fn sign_in(client: &reqwest::Client, base: &str, name: &str, password: &str) -> String {
    let page = client
        .get(format!("{base}/account/signin"))
        .send()
        .await
        .unwrap();
    let csrf = page
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|c| c.strip_prefix("polyhub_csrf="))
        .and_then(|c| c.split(';').next())
        .unwrap()
        .to_owned();
    let signed_in = client
        .post(format!("{base}/account/signin"))
        .header(header::ORIGIN, base)
        .header(header::COOKIE, format!("polyhub_csrf={csrf}"))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!(
            "csrf={csrf}&login={name}&password={}",
            password.replace(' ', "+")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), 303);
    // The session and its CSRF secret, as a browser sends them.
    signed_in
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter(|c| c.starts_with("polyhub_session=") || c.starts_with("polyhub_csrf="))
        .filter_map(|c| c.split(';').next())
        .collect::<Vec<_>>()
        .join("; ")
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and nextest probe bench binaries this way
    }
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    setup.config.http.secure_cookies = false;
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_ip_burst = u32::MAX;
    limits.per_user_burst = u32::MAX;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth).to_owned();
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let (name, password) = ("bench", "correct horse battery");
    let registered = client
        .post(format!("{base}/register"))
        .json(&json!({"username": name, "email": "bench@example.com", "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(registered.status(), 201);
    // Five devices: the devices page lists five sessions.
    let mut session = String::new();
    for _ in 0..5 {
        session = sign_in(&client, &base, name, password).await;
    }
    let css = format!("{base}/account/console.css");
    println!(
        "each latency figure: {SAMPLES} requests in a row on one connection; wrk runs {} s\n",
        support::RUN.as_secs()
    );

    // 1. Time to first byte, full load, bytes.
    let mut health = time_page(&client, &format!("{base}/health"), None, "").await;
    let mut signin = time_page(&client, &format!("{base}/account/signin"), Some(&css), "").await;
    let mut devices = time_page(
        &client,
        &format!("{base}/account/devices"),
        Some(&css),
        &session,
    )
    .await;
    row("GET /account/signin", &mut signin, &mut health);
    row(
        "GET /account/devices (5 devices)",
        &mut devices,
        &mut health,
    );

    // 2. Throughput beside /health on the same port.
    let run_wrk = |url: String| tokio::task::spawn_blocking(move || support::wrk(&url, &[], None));
    let (page_rate, page_p99) = run_wrk(format!("{base}/account/signin")).await.unwrap();
    let (health_rate, health_p99) = run_wrk(format!("{base}/health")).await.unwrap();
    println!(
        "| GET /account/signin, 32 connections (wrk) | {page_rate:.0} req/s, p99 {page_p99:.1} ms | GET /health {health_rate:.0} req/s, p99 {health_p99:.1} ms | ratio {:.2} |",
        page_rate / health_rate
    );
}
