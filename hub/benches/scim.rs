//! polyhub's SCIM 2.0 server (`/scim/v2` on rest-auth) side by side with
//! scim2-server, PyPI's reference SCIM server (pinned in
//! hub/benches/scim_peer/requirements.txt; its in-memory storage, served by
//! uvicorn: see peer.py), each holding the same 1,000,000 users:
//!
//!     scripts/bench scim        (sets up PostgreSQL and the peer's venv)
//!
//! polyhub's users are seeded straight into PostgreSQL with one
//! `INSERT ... SELECT generate_series` (ids UUIDv7, no password), then
//! vacuumed and analyzed; the peer loads the same users through its storage's
//! own API before it listens. `SCIM_BENCH_USERS` sets another number.
//!
//! 1. Users created per second, `POST /Users` with a minimal Entra-shaped
//!    user (userName, name, a primary work email, active, externalId).
//! 2. `GET /Users?filter=userName eq "…"`, a random existing user each time.
//! 3. `GET /Users?filter=emails co "…"`, a random existing user's 7-digit
//!    number (a local-part fragment that user alone has).
//!
//! Both are driven by the same client from this process (16 connections,
//! each a task of its own, bearer tokens on every request: a
//! client-credentials token with scope `scim` for polyhub, a static token
//! for the peer), sharing the machine's cores with the server under test;
//! the peer runs while polyhub idles and the other way round. Requests are
//! started for `support::RUN`; those still running then get `DRAIN` more to
//! finish, and are abandoned after that (their latency so far makes the p99
//! a lower bound, shown as ≥).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::future::Future;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hub_core::{GrantType, NewClient};
use hub_testkit::{ROOT, Service, TestSetup, free_port};
use reqwest::{StatusCode, header};
use serde_json::{Value, json};
use sqlx::Connection as _;

const CONNECTIONS: usize = 16;
/// How long requests still running at the end of a run may take to finish.
const DRAIN: Duration = Duration::from_secs(30);
const SCIM_JSON: &str = "application/scim+json";
const PEER_TOKEN: &str = "scim-bench-static-token";
const GOAL: f64 = 10.0;

/// One server as the load generator sees it.
#[derive(Clone)]
struct Target {
    name: &'static str,
    /// `…/Users`.
    users: String,
    bearer: String,
}

struct Load {
    done: u64,
    failed: u64,
    first_failure: Option<String>,
    /// Every finished request's latency, and each abandoned one's so far
    /// (`true`).
    latencies: Vec<(Duration, bool)>,
    elapsed: Duration,
}

impl Load {
    fn rate(&self) -> f64 {
        self.done as f64 / self.elapsed.as_secs_f64()
    }

    fn abandoned(&self) -> usize {
        self.latencies.iter().filter(|(_, a)| *a).count()
    }

    /// The p99 in ms, and whether it is only a lower bound (requests were
    /// abandoned).
    fn p99_ms(&mut self) -> (f64, bool) {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * 0.99).round() as usize;
        let p99 = self
            .latencies
            .get(i)
            .map_or(f64::NAN, |(d, _)| d.as_secs_f64() * 1000.0);
        (p99, self.abandoned() > 0)
    }

    fn cell(&mut self) -> String {
        let (p99, bound) = self.p99_ms();
        let mut cell = format!(
            "{}/s, p99 {}{}",
            number(self.rate()),
            if bound { "≥ " } else { "" },
            millis(p99)
        );
        if self.failed > 0 {
            cell.push_str(&format!(" ({} failed)", self.failed));
        }
        if self.abandoned() > 0 {
            cell.push_str(&format!(" ({} abandoned)", self.abandoned()));
        }
        cell
    }
}

fn number(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn millis(ms: f64) -> String {
    if ms >= 10_000.0 {
        format!("{:.1} s", ms / 1000.0)
    } else {
        format!("{ms:.1} ms")
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(CONNECTIONS * 2)
        .build()
        .unwrap()
}

/// `CONNECTIONS` tasks, each with its own state, running `op` for
/// [`support::RUN`] and waiting at most [`DRAIN`] more for the last ones.
async fn drive<S, O, OF>(states: Vec<S>, op: O) -> Load
where
    S: Send + 'static,
    O: Fn(S) -> OF + Clone + Send + Sync + 'static,
    OF: Future<Output = (S, Result<(), String>)> + Send,
{
    let started = Instant::now();
    let deadline = started + support::RUN;
    let cutoff = tokio::time::Instant::from_std(deadline + DRAIN);
    let tasks: Vec<_> = states
        .into_iter()
        .map(|state| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut done, mut failed, mut first, mut latencies) =
                    (0u64, 0u64, None, Vec::new());
                let mut state = state;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match tokio::time::timeout_at(cutoff, op(state)).await {
                        Ok((next, outcome)) => {
                            state = next;
                            match outcome {
                                Ok(()) => {
                                    done += 1;
                                    latencies.push((t.elapsed(), false));
                                }
                                Err(why) => {
                                    failed += 1;
                                    first.get_or_insert(why);
                                }
                            }
                        }
                        Err(_) => {
                            latencies.push((t.elapsed(), true));
                            break;
                        }
                    }
                }
                (done, failed, first, latencies)
            })
        })
        .collect();
    let mut load = Load {
        done: 0,
        failed: 0,
        first_failure: None,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        let (d, f, first, l) = task.await.unwrap();
        load.done += d;
        load.failed += f;
        if load.first_failure.is_none() {
            load.first_failure = first;
        }
        load.latencies.extend(l);
    }
    load.elapsed = started.elapsed();
    load
}

/// A minimal user as Microsoft Entra provisions one.
fn new_user(connection: usize, n: u64) -> Vec<u8> {
    let name = format!("new{connection:02}x{n:07}");
    serde_json::to_vec(&json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "externalId": format!("bench-{name}"),
        "userName": name,
        "name": {"givenName": "New", "familyName": format!("User{n}")},
        "emails": [{"value": format!("{name}@bench.example"), "type": "work", "primary": true}],
        "active": true,
    }))
    .unwrap()
}

async fn create(http: &reqwest::Client, target: &Target, body: Vec<u8>) -> Result<(), String> {
    let response = http
        .post(&target.users)
        .bearer_auth(&target.bearer)
        .header(header::CONTENT_TYPE, SCIM_JSON)
        .header(header::ACCEPT, SCIM_JSON)
        .body(body)
        .send()
        .await
        .map_err(|e| format!("POST: {e}"))?;
    let status = response.status();
    if status == StatusCode::CREATED {
        // Read as a client would.
        response.bytes().await.map_err(|e| format!("POST: {e}"))?;
        Ok(())
    } else {
        Err(format!(
            "POST: {status} {}",
            response.text().await.unwrap_or_default()
        ))
    }
}

/// A search; `Ok` when it finds `want` users (`None`: at least one).
async fn search(
    http: &reqwest::Client,
    target: &Target,
    filter: &str,
    want: Option<u64>,
) -> Result<(), String> {
    // %20 rather than form encoding's `+` for spaces: any parser reads it.
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("filter", filter)
        .finish()
        .replace('+', "%20");
    let response = http
        .get(format!("{}?{query}", target.users))
        .bearer_auth(&target.bearer)
        .header(header::ACCEPT, SCIM_JSON)
        .send()
        .await
        .map_err(|e| format!("{filter}: {e}"))?;
    let status = response.status();
    let body = response
        .bytes()
        .await
        .map_err(|e| format!("{filter}: {e}"))?;
    if status != StatusCode::OK {
        return Err(format!(
            "{filter}: {status} {}",
            String::from_utf8_lossy(&body)
        ));
    }
    let found = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["totalResults"].as_u64());
    match (found, want) {
        (Some(n), Some(want)) if n == want => Ok(()),
        (Some(n), None) if n >= 1 => Ok(()),
        _ => Err(format!(
            "{filter}: found {found:?}, not {want:?}: {}",
            String::from_utf8_lossy(&body)
        )),
    }
}

/// xorshift64*: a random existing user per request, the same sequence on
/// either side.
fn next_user(state: &mut u64, users: u64) -> u64 {
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    state.wrapping_mul(0x2545_F491_4F6C_DD1D) % users
}

fn seeds() -> Vec<u64> {
    (0..CONNECTIONS as u64)
        .map(|c| 0x9E37_79B9_7F4A_7C15 ^ (c + 1).wrapping_mul(0xD1B5_4A32_D192_ED03))
        .collect()
}

async fn creates(target: &Target) -> Load {
    let (target, http) = (Arc::new(target.clone()), http());
    let states = (0..CONNECTIONS).map(|c| (c, 0u64)).collect();
    drive(states, move |(connection, n): (usize, u64)| {
        let (target, http) = (Arc::clone(&target), http.clone());
        async move {
            let outcome = create(&http, &target, new_user(connection, n)).await;
            ((connection, n + 1), outcome)
        }
    })
    .await
}

async fn by_username(target: &Target, users: u64) -> Load {
    let (target, http) = (Arc::new(target.clone()), http());
    drive(seeds(), move |mut rng: u64| {
        let (target, http) = (Arc::clone(&target), http.clone());
        async move {
            let i = next_user(&mut rng, users);
            let filter = format!("userName eq \"user{i:07}\"");
            let outcome = search(&http, &target, &filter, Some(1)).await;
            (rng, outcome)
        }
    })
    .await
}

async fn by_email_fragment(target: &Target, users: u64) -> Load {
    let (target, http) = (Arc::new(target.clone()), http());
    drive(seeds(), move |mut rng: u64| {
        let (target, http) = (Arc::clone(&target), http.clone());
        async move {
            let i = next_user(&mut rng, users);
            let filter = format!("emails co \"{i:07}\"");
            let outcome = search(&http, &target, &filter, None).await;
            (rng, outcome)
        }
    })
    .await
}

/// Seeds `users` users straight into polyhub's database in one statement:
/// what peer.py loads into scim2-server. The users triggers (the change
/// notification and `emails_text`'s upkeep) are off meanwhile, so
/// `emails_text` is written here; listeners get the one "*" the notify
/// trigger sends for a statement this big.
const SEED: &str = r"
INSERT INTO users (id, username, email, password_hash, role, created_at, updated_at,
                   active, external_id, scim, version, emails_text)
SELECT (lpad(to_hex(floor(extract(epoch FROM t) * 1000)::bigint), 12, '0')
        || '7' || substr(h, 1, 3)
        || substr('89ab', 1 + floor(random() * 4)::int, 1)
        || substr(h, 18, 15))::uuid,
       u, e, '$none$', 'user', t, t, true, 'ext-' || i,
       jsonb_build_object('name', jsonb_build_object(
           'givenName', (ARRAY['Ada', 'Alan', 'Grace', 'Edsger', 'Barbara', 'Donald',
                               'Frances', 'Ken'])[1 + i % 8],
           'familyName', (ARRAY['Lovelace', 'Turing', 'Hopper', 'Dijkstra', 'Liskov',
                                'Knuth', 'Allen'])[1 + i % 7] || i)),
       1, e
FROM (SELECT i,
             'user' || lpad(i::text, 7, '0') AS u,
             'user' || lpad(i::text, 7, '0') || '@corp' || (i % 100) || '.example' AS e,
             now() - interval '1 day' + i * interval '1 millisecond' AS t,
             -- 128 random bits as hex; the version and variant nibbles
             -- (13th and 17th) are skipped.
             replace(gen_random_uuid()::text, '-', '') AS h
      FROM generate_series(0, $1::int - 1) AS i) AS s";

async fn seed(database_url: &str, users: u64) -> Duration {
    let mut db = sqlx::PgConnection::connect(database_url).await.unwrap();
    let started = Instant::now();
    sqlx::raw_sql("ALTER TABLE users DISABLE TRIGGER USER")
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::query(SEED)
        .bind(i32::try_from(users).unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    sqlx::raw_sql("ALTER TABLE users ENABLE TRIGGER USER; SELECT pg_notify('polyhub_users', '*')")
        .execute(&mut db)
        .await
        .unwrap();
    // Settles the table as time would: statistics, GIN pending lists
    // merged, hint bits and the visibility map set.
    sqlx::raw_sql("VACUUM (ANALYZE) users")
        .execute(&mut db)
        .await
        .unwrap();
    let took = started.elapsed();
    db.close().await.unwrap();
    took
}

/// A client-credentials access token with scope `scim`.
async fn access_token(base: &str, client_id: &str, secret: &str) -> String {
    let response = http()
        .post(format!("{base}/oauth2/token"))
        .basic_auth(client_id, Some(secret))
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("grant_type=client_credentials&scope=scim")
        .send()
        .await
        .unwrap();
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert!(status.is_success(), "no token: {status} {body}");
    body["access_token"].as_str().unwrap().to_owned()
}

/// scim2-server on `port`, loading `users` users: the child, killed on drop.
struct Peer {
    child: Child,
    _stdout: Option<ChildStdout>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_peer(port: u16, users: u64) -> (Peer, ChildStdout) {
    let dir = Path::new(ROOT).join("hub/benches/scim_peer");
    let python = dir.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: scripts/bench scim makes it",
        python.display()
    );
    let mut child = Command::new(python)
        .arg(dir.join("peer.py"))
        .args(["--port", &port.to_string()])
        .args(["--users", &users.to_string()])
        .args(["--bearer-token", PEER_TOKEN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    (
        Peer {
            child,
            _stdout: None,
        },
        stdout,
    )
}

/// The peer's `ready …` line, once it listens (it loads its users first).
async fn peer_ready(peer: &mut Peer, stdout: ChildStdout) -> String {
    let (line, stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        (line, reader.into_inner())
    })
    .await
    .unwrap();
    assert!(line.starts_with("ready"), "the peer said {line:?}");
    peer._stdout = Some(stdout);
    line.trim().to_owned()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let users: u64 = std::env::var("SCIM_BENCH_USERS")
        .ok()
        .map_or(1_000_000, |n| {
            n.parse().expect("SCIM_BENCH_USERS: a number")
        });
    assert!(users > 0);

    // The peer loads its users while polyhub's are seeded: neither is measured.
    let port = free_port();
    let (mut peer, peer_stdout) = spawn_peer(port, users);

    let setup = TestSetup::new(&[Service::RestAuth]);
    let database_url = setup.config.database.url.expose().clone();
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let (client, secret) = hub
        .hub
        .client_registry()
        .create_client(NewClient {
            name: "scim-bench".into(),
            grant_types: vec![GrantType::ClientCredentials],
            scopes: vec!["scim".into()],
            ..NewClient::default()
        })
        .await
        .unwrap();
    let client_id = client.id.to_string();
    let secret = secret.unwrap().shown().to_owned();
    let seeded = seed(&database_url, users).await;
    println!(
        "polyhub: {users} users seeded in PostgreSQL in {:.1} s (INSERT … SELECT, then VACUUM ANALYZE)",
        seeded.as_secs_f64()
    );
    let ready = peer_ready(&mut peer, peer_stdout).await;
    println!("scim2-server: {ready}");

    let polyhub = |bearer: String| Target {
        name: "polyhub",
        users: format!("{base}/scim/v2/Users"),
        bearer,
    };
    let scim2_server = Target {
        name: "scim2-server",
        users: format!("http://127.0.0.1:{port}/v2/Users"),
        bearer: PEER_TOKEN.to_owned(),
    };

    // Each side once before measuring: what fails here would only show as
    // a zero below.
    let probe = polyhub(access_token(&base, &client_id, &secret).await);
    for target in [&probe, &scim2_server] {
        let http = http();
        let last = users - 1;
        for outcome in [
            create(&http, target, new_user(99, 0)).await,
            search(
                &http,
                target,
                &format!("userName eq \"user{last:07}\""),
                Some(1),
            )
            .await,
            search(&http, target, &format!("emails co \"{last:07}\""), None).await,
        ] {
            if let Err(why) = outcome {
                panic!("{}: {why}", target.name);
            }
        }
    }

    let figures = [
        "POST /Users (users created/s)",
        "GET /Users?filter=userName eq (random user)",
        "GET /Users?filter=emails co (7-digit fragment)",
    ];
    let mut rows = Vec::new();
    let mut p99s = Vec::new();
    for (round, figure) in figures.into_iter().enumerate() {
        // A fresh token per round: it outlives any round.
        let ours_target = polyhub(access_token(&base, &client_id, &secret).await);
        let mut loads = Vec::new();
        for target in [&ours_target, &scim2_server] {
            let load = match round {
                0 => creates(target).await,
                1 => by_username(target, users).await,
                _ => by_email_fragment(target, users).await,
            };
            if let Some(why) = &load.first_failure {
                println!("{} {figure}: first failure: {why}", target.name);
            }
            loads.push(load);
        }
        let (mut ours, mut theirs) = (loads.remove(0), loads.remove(0));
        let ratio = if theirs.done == 0 {
            // Fewer than one in the whole run and drain.
            format!("> {}", number(ours.rate() * theirs.elapsed.as_secs_f64()))
        } else {
            number(ours.rate() / theirs.rate())
        };
        let met = theirs.done == 0 || ours.rate() / theirs.rate() >= GOAL;
        rows.push(format!(
            "| {figure} | {} | {} | {ratio} | ≥ {GOAL} {} |",
            ours.cell(),
            theirs.cell(),
            if met { "met" } else { "not met" },
        ));
        let ((a, a_bound), (b, b_bound)) = (ours.p99_ms(), theirs.p99_ms());
        p99s.push(format!(
            "p99 {figure}: polyhub {}{}, scim2-server {}{}",
            if a_bound { "≥ " } else { "" },
            millis(a),
            if b_bound { "≥ " } else { "" },
            millis(b),
        ));
    }
    // Requests the peer abandoned may still hold its storage's lock.
    drop(peer);

    println!();
    println!(
        "| figure ({CONNECTIONS} connections, {} s each, {users} users) | polyhub | scim2-server | ratio | goal |",
        support::RUN.as_secs()
    );
    println!("|---|---|---|---|---|");
    for row in rows {
        println!("{row}");
    }
    println!();
    for line in p99s {
        println!("{line}");
    }
    hub.stop().await;
}
