//! polyhub's OAuth 2.0 / OpenID Connect provider side by side with panva's
//! oidc-provider (an OpenID Certified provider, one Node process, its
//! in-memory adapter) configured with the same client, in one run:
//!
//!     scripts/bench oidc        (sets up PostgreSQL and the peer's npm packages)
//!
//! 1. Client-credentials grants per second (the peer issues RS256 JWT access
//!    tokens; polyhub EdDSA ones), Basic client authentication.
//! 2. Refresh grants per second with rotation: each connection refreshes its
//!    own grant over and over, each answer a new refresh token and an ID
//!    token (polyhub keeps the rotation in PostgreSQL, the peer in memory).
//! 3. Whole code flows per second for signed-in users (each connection a
//!    user of its own, with its own session on either side): the
//!    authorization request with the session cookie (PKCE S256) to the
//!    redirect with the code, then the code's exchange.
//!
//! Both are driven by the same client from this process (16 connections,
//! each a task of its own), sharing the machine's two cores with the server
//! under test; the peer runs while polyhub idles and the other way round.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_core::{GrantType, NewClient};
use hub_testkit::console::{session_cookies, sign_in};
use hub_testkit::{ROOT, Service, TestSetup, free_port, sign_up};
use reqwest::header;
use serde_json::Value;

const CONNECTIONS: usize = 16;
const SCOPE: &str = "openid offline_access images:read";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const CHALLENGE: &str = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";

/// One provider as the load generator sees it.
#[derive(Clone)]
struct Target {
    name: &'static str,
    /// `http://127.0.0.1:PORT`, for redirects to a path.
    origin: String,
    authorize: String,
    token: String,
    /// Each connection's signed-in user's cookies: a user of its own per
    /// connection, as many users signing in at once are.
    cookies: Vec<String>,
    client_id: String,
    secret: String,
    redirect: String,
}

struct Load {
    done: u64,
    failed: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }

    fn p99_ms(&mut self) -> f64 {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * 0.99).round() as usize;
        self.latencies
            .get(i)
            .copied()
            .unwrap_or_default()
            .as_secs_f64()
            * 1000.0
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(CONNECTIONS * 2)
        .build()
        .unwrap()
}

async fn post_token(
    http: &reqwest::Client,
    target: &Target,
    form: &[(&str, &str)],
) -> Option<Value> {
    let body = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(form)
        .finish();
    let response = http
        .post(&target.token)
        .basic_auth(&target.client_id, Some(&target.secret))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// One code flow: the authorization request with the user's cookies (and
/// whatever cookies the hops set) to the redirect carrying the code, then
/// its exchange. The tokens.
async fn code_flow(http: &reqwest::Client, target: &Target, who: usize) -> Option<Value> {
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs([
            ("response_type", "code"),
            ("client_id", target.client_id.as_str()),
            ("redirect_uri", target.redirect.as_str()),
            ("scope", SCOPE),
            ("state", "bench-state"),
            ("nonce", "bench-nonce"),
            ("code_challenge", CHALLENGE),
            ("code_challenge_method", "S256"),
        ])
        .finish();
    let mut url = format!("{}?{query}", target.authorize);
    let mut cookies: Vec<(String, String)> = target.cookies[who % target.cookies.len()]
        .split("; ")
        .filter_map(|c| c.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    for _ in 0..4 {
        let jar: Vec<String> = cookies.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let response = http
            .get(&url)
            .header(header::COOKIE, jar.join("; "))
            .send()
            .await
            .ok()?;
        for set in response.headers().get_all(header::SET_COOKIE) {
            let pair = set.to_str().ok()?.split(';').next()?;
            if let Some((k, v)) = pair.split_once('=') {
                cookies.retain(|(name, _)| name != k);
                cookies.push((k.to_owned(), v.to_owned()));
            }
        }
        let location = response.headers().get(header::LOCATION)?.to_str().ok()?;
        if location.starts_with(&target.redirect) {
            let code = form_urlencoded::parse(location.split_once('?')?.1.as_bytes())
                .find(|(k, _)| k == "code")?
                .1
                .into_owned();
            return post_token(
                http,
                target,
                &[
                    ("grant_type", "authorization_code"),
                    ("code", &code),
                    ("redirect_uri", &target.redirect),
                    ("code_verifier", VERIFIER),
                ],
            )
            .await;
        }
        url = if location.starts_with('/') {
            format!("{}{location}", target.origin)
        } else {
            location.to_owned()
        };
    }
    None
}

/// `CONNECTIONS` tasks, each with its own state from `init`, running `op`
/// until the run ends.
async fn drive<S, I, IF, O, OF>(init: I, op: O) -> Load
where
    S: Send + 'static,
    I: Fn(usize) -> IF,
    IF: std::future::Future<Output = S> + Send + 'static,
    O: Fn(S) -> OF + Clone + Send + Sync + 'static,
    OF: std::future::Future<Output = (S, bool)> + Send,
{
    let mut states = Vec::with_capacity(CONNECTIONS);
    for connection in 0..CONNECTIONS {
        states.push(init(connection).await);
    }
    let started = Instant::now();
    let deadline = started + support::RUN;
    let tasks: Vec<_> = states
        .into_iter()
        .map(|state| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut done, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
                let mut state = state;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let (next, ok) = op(state).await;
                    state = next;
                    if ok {
                        done += 1;
                        latencies.push(t.elapsed());
                    } else {
                        failed += 1;
                    }
                }
                (done, failed, latencies)
            })
        })
        .collect();
    let mut load = Load {
        done: 0,
        failed: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (d, f, l) = task.await.unwrap();
        load.done += d;
        load.failed += f;
        load.latencies.extend(l);
    }
    load.elapsed = started.elapsed();
    load
}

async fn client_credentials(target: &Target) -> Load {
    let target = Arc::new(target.clone());
    let http = http();
    drive(
        |_| async {},
        move |()| {
            let (target, http) = (Arc::clone(&target), http.clone());
            async move {
                let ok = post_token(
                    &http,
                    &target,
                    &[
                        ("grant_type", "client_credentials"),
                        ("scope", "images:read"),
                    ],
                )
                .await
                .is_some_and(|t| t["access_token"].is_string());
                ((), ok)
            }
        },
    )
    .await
}

async fn refreshes(target: &Target) -> Load {
    let target = Arc::new(target.clone());
    let http = http();
    let first = {
        let (target, http) = (Arc::clone(&target), http.clone());
        move |connection| {
            let (target, http) = (Arc::clone(&target), http.clone());
            async move {
                let tokens = code_flow(&http, &target, connection)
                    .await
                    .expect("a grant to refresh");
                tokens["refresh_token"]
                    .as_str()
                    .expect("a refresh token")
                    .to_owned()
            }
        }
    };
    drive(first, move |refresh: String| {
        let (target, http) = (Arc::clone(&target), http.clone());
        async move {
            let answer = post_token(
                &http,
                &target,
                &[("grant_type", "refresh_token"), ("refresh_token", &refresh)],
            )
            .await;
            match answer
                .as_ref()
                .and_then(|t| t["refresh_token"].as_str())
                .filter(|next| *next != refresh)
            {
                Some(next) => (next.to_owned(), true),
                None => (refresh, false),
            }
        }
    })
    .await
}

async fn code_flows(target: &Target) -> Load {
    let target = Arc::new(target.clone());
    let http = http();
    drive(
        |connection| async move { connection },
        move |connection: usize| {
            let (target, http) = (Arc::clone(&target), http.clone());
            async move {
                let ok = code_flow(&http, &target, connection)
                    .await
                    .is_some_and(|t| t["id_token"].is_string());
                (connection, ok)
            }
        },
    )
    .await
}

/// oidc-provider on `port` with `client`: the child, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn peer(port: u16, clients: &Value) -> Peer {
    let dir = std::path::Path::new(ROOT).join("hub/benches/oidc_peer");
    let file = hub_testkit::scratch_dir().join("clients.json");
    std::fs::write(&file, clients.to_string()).unwrap();
    let mut child = Command::new("node")
        .arg(dir.join("server.mjs"))
        .arg(port.to_string())
        .arg(&file)
        .stdout(Stdio::piped())
        .spawn()
        .expect("node: scripts/bench installs oidc-provider");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening"), "the peer said {line:?}");
    Peer(child)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let mut setup = TestSetup::new(&[Service::RestAuth]);
    // Every code flow opens a session for the one bench user.
    setup.config.sessions.max_open_per_user = u32::MAX;
    setup.config.services.rest_auth.login_limit.per_ip_burst = u32::MAX;
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let redirect = "http://127.0.0.1:9/cb".to_owned();
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "bench".into(),
            redirect_uris: vec![redirect.clone()],
            first_party: true,
            grant_types: vec![
                GrantType::AuthorizationCode,
                GrantType::RefreshToken,
                GrantType::ClientCredentials,
            ],
            scopes: SCOPE.split(' ').map(str::to_owned).collect(),
            ..NewClient::default()
        })
        .await
        .unwrap();
    let secret = secret.unwrap().shown().to_owned();
    let mut cookies = Vec::with_capacity(CONNECTIONS);
    for n in 0..CONNECTIONS {
        let name = format!("benchuser{n}");
        sign_up(&base, &name, "correct horse battery").await;
        let signed = sign_in(&http(), &base, &name, "correct horse battery").await;
        cookies.push(session_cookies(&signed));
    }
    let polyhub = Target {
        name: "polyhub",
        origin: base.clone(),
        authorize: format!("{base}/oauth2/authorize"),
        token: format!("{base}/oauth2/token"),
        cookies,
        client_id: client.id.to_string(),
        secret: secret.clone(),
        redirect: redirect.clone(),
    };

    let port = free_port();
    let peer_base = format!("http://127.0.0.1:{port}");
    let _peer = peer(
        port,
        &serde_json::json!({
            "clients": [{
                "client_id": client.id.to_string(),
                "client_secret": secret,
                "redirect_uris": [redirect],
                "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                "response_types": ["code"],
                "token_endpoint_auth_method": "client_secret_basic",
                "scope": SCOPE,
            }],
            "account": "benchuser",
        }),
    );
    // One session (and grant) per connection there too.
    let mut peer_cookies = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS {
        let session: Value = http()
            .post(format!("{peer_base}/bench/session"))
            .json(&serde_json::json!({"client_id": client.id.to_string(), "scope": SCOPE}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        peer_cookies.push(session["cookie"].as_str().unwrap().to_owned());
    }
    let oidc_provider = Target {
        name: "oidc-provider",
        origin: peer_base.clone(),
        authorize: format!("{peer_base}/auth"),
        token: format!("{peer_base}/token"),
        cookies: peer_cookies,
        client_id: polyhub.client_id.clone(),
        secret: polyhub.secret.clone(),
        redirect: polyhub.redirect.clone(),
    };
    // Each side once before measuring: a flow that fails here would only
    // show as a zero below.
    for target in [&polyhub, &oidc_provider] {
        let tokens = code_flow(&http(), target, 0).await;
        assert!(
            tokens.as_ref().is_some_and(|t| t["id_token"].is_string()),
            "{}: no code flow: {tokens:?}",
            target.name
        );
    }

    println!(
        "| figure ({CONNECTIONS} connections, {} s each) | polyhub | oidc-provider | ratio | goal |",
        support::RUN.as_secs()
    );
    println!("|---|---|---|---|---|");
    let rounds: [(&str, f64); 3] = [
        ("client-credentials grants/s", 3.0),
        ("refresh grants/s, rotated", 2.0),
        ("code flows/s (authorize + token)", 2.0),
    ];
    for (round, (figure, goal)) in rounds.into_iter().enumerate() {
        let mut ours = match round {
            0 => client_credentials(&polyhub).await,
            1 => refreshes(&polyhub).await,
            _ => code_flows(&polyhub).await,
        };
        let mut theirs = match round {
            0 => client_credentials(&oidc_provider).await,
            1 => refreshes(&oidc_provider).await,
            _ => code_flows(&oidc_provider).await,
        };
        let ratio = ours.rate() / theirs.rate();
        println!(
            "| {figure} | {:.0}/s, p99 {:.1} ms ({} failed) | {:.0}/s, p99 {:.1} ms ({} failed) | {ratio:.2} | ≥ {goal} {} |",
            ours.rate(),
            ours.p99_ms(),
            ours.failed,
            theirs.rate(),
            theirs.p99_ms(),
            theirs.failed,
            if ratio >= goal { "met" } else { "not met" },
        );
    }
    hub.stop().await;
}
