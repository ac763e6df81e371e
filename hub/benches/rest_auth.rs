//! rest-auth under load, each figure beside its baseline measured in the same
//! run (these machines are noisy; ratios travel, absolute numbers do not).
//!
//!     scripts/bench rest_auth        (sets up PostgreSQL, then runs this)
//!
//! 1. Login throughput vs the raw PBKDF2-verify rate on the same cores.
//! 2. GET /profile (signature, claims, open-session check, user read) driven by
//!    wrk with 32 connections vs the same primary-key SELECT driven by pgbench
//!    with 32 connections: two C load generators in processes of their own, so
//!    neither side is charged for a heavier client.
//! 3. /health latency while a login flood saturates the hashing pool, vs idle.
//!
//! Logins and /health are driven from this process (the login figure is bound
//! by hashing, the /health one by scheduling); everything shares the machine's
//! cores with the hub and PostgreSQL, figure and baseline alike.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use support::{RUN, pgbench};

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hub_core::{Password, PasswordHasher, Username};
use hub_testkit::{Service, TestSetup};
use serde_json::{Value, json};

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

    fn percentile(&mut self, p: f64) -> Duration {
        self.latencies.sort_unstable();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies.get(i).copied().unwrap_or_default()
    }
}

/// Runs `op` from `clients` concurrent tasks for `duration`; `op` says whether
/// the request succeeded.
async fn drive<F, Fut>(clients: usize, duration: Duration, op: F) -> Load
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let op = op.clone();
            tokio::spawn(async move {
                let (mut done, mut failed, mut latencies) = (0u64, 0u64, Vec::new());
                while Instant::now() < deadline {
                    let t = Instant::now();
                    if op().await {
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

/// PBKDF2 verifications per second with one thread per hashing worker.
fn raw_verify_rate(workers: usize) -> f64 {
    let hasher = Arc::new(PasswordHasher::new(PasswordHasher::MIN_ITERATIONS).unwrap());
    let user = Username::parse("bench").unwrap();
    let stored = Arc::new(
        hasher
            .hash(&Password::parse("correct horse battery", &user).unwrap())
            .unwrap(),
    );
    let count = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let (hasher, stored, count) = (hasher.clone(), stored.clone(), count.clone());
            std::thread::spawn(move || {
                while started.elapsed() < RUN {
                    assert!(hasher.verify("correct horse battery", &stored));
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    count.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and nextest probe bench binaries this way
    }
    // The hub runs on its default pool size (16): on two cores more
    // connections only add contention inside PostgreSQL.
    let mut setup = TestSetup::new(&[Service::RestAuth]).production_hashing();
    let limits = &mut setup.config.services.rest_auth.login_limit;
    limits.per_ip_burst = u32::MAX;
    limits.per_user_burst = u32::MAX;
    // Every load generator here is one client; its floods measure the pool
    // as a whole, so its hashing share is the whole pool.
    setup.config.hashing.max_per_client = usize::MAX;
    let workers = setup.config.hashing.pool_config().workers;
    let database_url = setup.config.database.url.expose().clone();
    let hub = setup.start().await;
    let base = hub.url(Service::RestAuth);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .unwrap();
    let registered: Value = client
        .post(format!("{base}/register"))
        .json(&json!({"username": "bench", "email": "bench@example.com", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let user_id = uuid::Uuid::parse_str(registered["id"].as_str().unwrap()).unwrap();

    println!("hashing workers: {workers}; each run {} s\n", RUN.as_secs());

    // 1. Logins vs raw verifies.
    let verify_rate = tokio::task::spawn_blocking(move || raw_verify_rate(workers))
        .await
        .unwrap();
    let login = {
        let (client, url) = (client.clone(), format!("{base}/login"));
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                client
                    .post(url)
                    .json(&json!({"username": "bench", "password": "correct horse battery"}))
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200)
            }
        }
    };
    let logins = drive(workers * 4, RUN, login.clone()).await;
    println!(
        "| login throughput | {:.1} logins/s | raw PBKDF2 verify {:.1}/s | ratio {:.2} | failed {} |",
        logins.rate(),
        verify_rate,
        logins.rate() / verify_rate,
        logins.failed
    );

    // 2. Token verification on GET /profile vs direct primary-key SELECTs.
    let token = {
        let body: Value = client
            .post(format!("{base}/login"))
            .json(&json!({"username": "bench", "password": "correct horse battery"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["token"].as_str().unwrap().to_owned()
    };
    let run_wrk = |url: String, headers: Vec<String>| async move {
        tokio::task::spawn_blocking(move || support::wrk(&url, &headers, None))
            .await
            .unwrap()
    };
    let (profile_rate, profile_p99) = run_wrk(
        format!("{base}/profile"),
        vec![format!("Authorization: Bearer {token}")],
    )
    .await;
    // One sqlx round trip through the hub and nothing else: the ceiling that
    // /profile (one query) is up against.
    let (ping_rate, ping_p99) = run_wrk(format!("{base}/test-db"), Vec::new()).await;
    let (select_rate, select_p99) = {
        let url = database_url.clone();
        tokio::task::spawn_blocking(move || {
            pgbench(
                &url,
                "SELECT id, username, email FROM users WHERE id = :id;",
                &[("id", user_id.to_string())],
            )
        })
        .await
        .unwrap()
    };
    println!(
        "| GET /profile, 32 connections (wrk) | {profile_rate:.0} req/s, p99 {profile_p99:.1} ms | direct PK SELECT, 32 connections (pgbench) {select_rate:.0}/s, p99 {select_p99:.1} ms | ratio {:.2} |",
        profile_rate / select_rate
    );

    println!(
        "| GET /test-db (SELECT 1 through sqlx), 32 connections (wrk) | {ping_rate:.0} req/s, p99 {ping_p99:.1} ms | same pgbench run | ratio {:.2} |",
        ping_rate / select_rate
    );

    // 3. /health while logins saturate the hashing pool, vs idle.
    let health = {
        let (client, url) = (client.clone(), format!("{base}/health"));
        move || {
            let (client, url) = (client.clone(), url.clone());
            async move {
                let ok = client
                    .get(url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                tokio::time::sleep(Duration::from_millis(5)).await;
                ok
            }
        }
    };
    let mut idle = drive(1, RUN, health.clone()).await;
    let flood = tokio::spawn(drive(64, RUN + Duration::from_secs(1), login));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut busy = drive(1, RUN, health).await;
    let flood = flood.await.unwrap();
    // The 5 ms pause between probes is part of each sample; take it off.
    let p = |load: &mut Load, q: f64| {
        (load.percentile(q).saturating_sub(Duration::from_millis(5))).as_secs_f64() * 1e3
    };
    println!(
        "| /health during a login flood | p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms | idle p50 {:.2} ms, p99 {:.2} ms | flood: {} ok, {} refused (429/503) |",
        p(&mut busy, 0.5),
        p(&mut busy, 0.99),
        p(&mut busy, 1.0),
        p(&mut idle, 0.5),
        p(&mut idle, 0.99),
        flood.done,
        flood.failed
    );

    hub.stop().await;
}
