//! Webhook delivery under load, each figure beside a baseline from the same
//! run (ratios travel between machines; absolute numbers do not).
//!
//!     scripts/bench webhooks        (sets up PostgreSQL and MongoDB, then runs this)
//!
//! 1. End-to-end lag, event time (inside the committing transaction) to the
//!    receiver, p50 and p99, at a steady 500 and 2,000 session changes per
//!    second spread over 200 users, with the dispatcher running in the hub.
//! 2. The most events per second one endpoint receives: a backlog of
//!    20,000 events drained by the dispatcher, against the same bodies
//!    POSTed straight to the same receiver over as many keep-alive
//!    connections as the dispatcher uses.
//! 3. Registrations per second with three endpoints subscribed (and
//!    delivered to) against none, alternating rounds in one run.
//!
//! The receiver is an in-process axum server on loopback that answers 204
//! and records the lag of every delivery. The relay to MongoDB is off in
//! every part (its stand-in server is Python and would take the CPU).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hub_core::{ClientInfo, EventTypes, RegisterUser, User};
use hub_testkit::{Service, TestSetup};
use time::OffsetDateTime;

const SERVICES: &[Service] = &[Service::RestAuth, Service::Sessions];
const USERS: usize = 200;
const BACKLOG: u64 = 20_000;
const REGISTRATIONS: usize = 1_500;

#[derive(Default)]
struct Received {
    count: AtomicU64,
    lags: Mutex<Vec<Duration>>,
}

/// The receiver: its URL and what it saw.
async fn receiver() -> (String, Arc<Received>) {
    let received = Arc::new(Received::default());
    let seen = Arc::clone(&received);
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let seen = Arc::clone(&seen);
            async move {
                let now = OffsetDateTime::now_utc();
                if let Ok(event) = serde_json::from_slice::<serde_json::Value>(&body)
                    && let Some(at) = event["occurred_at"].as_str().and_then(|at| {
                        OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
                            .ok()
                    })
                {
                    let lag = Duration::try_from(now - at).unwrap_or_default();
                    seen.lags.lock().unwrap().push(lag);
                }
                seen.count.fetch_add(1, Ordering::Relaxed);
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, received)
}

fn setup(enabled: bool) -> TestSetup {
    let mut setup = TestSetup::new(SERVICES);
    setup.config.webhooks.allowed_networks = vec!["127.0.0.1/32".parse().unwrap()];
    setup.config.webhooks.enabled = enabled;
    setup.config.database.max_connections = 32;
    // The activity log's relay is off: its MongoDB stand-in (SecantusDB, in
    // Python) would take the CPU the figures are about.
    setup.config.relay.enabled = false;
    setup
}

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
}

async fn users(hub: &hub::Hub, prefix: &str, n: usize) -> Vec<User> {
    let mut made = Vec::with_capacity(n);
    for i in 0..n {
        made.push(
            hub.registration()
                .register(RegisterUser {
                    username: format!("{prefix}{i}"),
                    email: format!("{prefix}{i}@example.com"),
                    password: "correct horse battery".into(),
                })
                .await
                .unwrap(),
        );
    }
    made
}

async fn endpoint(hub: &hub::Hub, url: &str, types: &[&str]) {
    hub.webhooks()
        .unwrap()
        .add(None, url, EventTypes::parse(types).unwrap(), "bench")
        .await
        .unwrap();
}

async fn until(received: &Received, count: u64, within: Duration) {
    let started = Instant::now();
    while received.count.load(Ordering::Relaxed) < count {
        assert!(
            started.elapsed() < within,
            "only {} of {count} deliveries",
            received.count.load(Ordering::Relaxed)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Session openings at `rate` per second for `run`, round robin over `users`.
async fn steady(auth: &hub_core::Authentication, users: &[User], rate: u64, run: Duration) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut written = 0u64;
    let mut tasks = Vec::new();
    while started.elapsed() < run {
        tick.tick().await;
        let (auth, user) = (auth.clone(), users[written as usize % users.len()].clone());
        tasks.push(tokio::spawn(async move {
            auth.open_session(&user, None, ClientInfo::default())
                .await
                .unwrap();
        }));
        written += 1;
    }
    for task in tasks {
        task.await.unwrap();
    }
    written
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let run = support::RUN;
    println!("each load run {} s\n", run.as_secs());

    // 1. Lag at steady rates.
    {
        let hub = setup(true).start().await;
        let (url, received) = receiver().await;
        endpoint(&hub.hub, &url, &["session.*"]).await;
        let people = users(&hub.hub, "lag", USERS).await;
        let auth = hub.hub.authentication().unwrap();
        // The endpoint's worker is running (it starts within
        // DispatchSettings::refresh of the endpoint's creation).
        auth.open_session(&people[0], None, ClientInfo::default())
            .await
            .unwrap();
        until(&received, 1, Duration::from_secs(30)).await;
        for rate in [500, 2_000] {
            received.lags.lock().unwrap().clear();
            let before = received.count.load(Ordering::Relaxed);
            let started = Instant::now();
            let written = steady(&auth, &people, rate, run).await;
            let achieved = written as f64 / started.elapsed().as_secs_f64();
            until(&received, before + written, Duration::from_secs(120)).await;
            let mut lags = std::mem::take(&mut *received.lags.lock().unwrap());
            let failed = hub
                .metrics(Service::Sessions)
                .await
                .lines()
                .find(|l| l.starts_with("polyhub_webhook_failed_total"))
                .map(str::to_owned)
                .unwrap_or_default();
            let last_error = hub.hub.webhooks().unwrap().list(None).await.unwrap()[0]
                .last_error
                .clone();
            println!("deliveries failed so far: {failed}; last error: {last_error:?}");
            println!(
                "| webhook lag at {achieved:.0} events/s ({rate} asked, {USERS} users) | event to receiver: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({} deliveries) |",
                percentile(&mut lags, 0.5),
                percentile(&mut lags, 0.99),
                percentile(&mut lags, 1.0),
                lags.len()
            );
        }
        hub.stop().await;
    }

    // 2. The most one endpoint receives: a backlog drained, against direct POSTs.
    {
        let setup = setup(false);
        let concurrency = setup.config.webhooks.concurrency;
        let hub = setup.start().await;
        let (url, received) = receiver().await;
        endpoint(&hub.hub, &url, &["session.*"]).await;
        let people = users(&hub.hub, "drain", USERS).await;
        let auth = hub.hub.authentication().unwrap();
        let per = BACKLOG / 8;
        let writers: Vec<_> = (0..8)
            .map(|w| {
                let (auth, people) = (auth.clone(), people.clone());
                tokio::spawn(async move {
                    for i in 0..per {
                        let user = &people[(w * per + i) as usize % people.len()];
                        auth.open_session(user, None, ClientInfo::default())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for writer in writers {
            writer.await.unwrap();
        }
        let (shutdown, trigger) = hub_runtime::shutdown::Shutdown::new();
        let dispatcher = hub.hub.dispatcher().unwrap();
        let started = Instant::now();
        let running = tokio::spawn(dispatcher.run(async move { shutdown.wait().await }));
        until(&received, BACKLOG, Duration::from_secs(300)).await;
        let drained = BACKLOG as f64 / started.elapsed().as_secs_f64();
        trigger.trigger();
        let _ = running.await;

        // The baseline: the same number of event-sized bodies, POSTed straight.
        let body = Arc::new(
            serde_json::json!({
                "id": 1, "event_id": uuid::Uuid::now_v7().to_string(), "type": "session.opened",
                "occurred_at": "2026-12-06T00:00:00Z", "timestamp": "2026-12-06T00:00:00Z",
                "user_id": uuid::Uuid::now_v7().to_string(), "session_id": uuid::Uuid::now_v7().to_string(),
                "data": {"client_ip": null, "user_agent": null, "reason": null}
            })
            .to_string(),
        );
        let before = received.count.load(Ordering::Relaxed);
        let started = Instant::now();
        let per = BACKLOG / concurrency as u64;
        let posters: Vec<_> = (0..concurrency)
            .map(|_| {
                let (url, body) = (url.clone(), Arc::clone(&body));
                tokio::spawn(async move {
                    let http = reqwest::Client::new();
                    for _ in 0..per {
                        let sent = http
                            .post(&url)
                            .header("content-type", "application/json")
                            .header("webhook-id", "msg")
                            .header("webhook-timestamp", "0")
                            .header("webhook-signature", "v1,AAAA")
                            .body(body.as_str().to_owned())
                            .send()
                            .await
                            .unwrap();
                        assert_eq!(sent.status(), 204);
                    }
                })
            })
            .collect();
        for poster in posters {
            poster.await.unwrap();
        }
        let direct = (received.count.load(Ordering::Relaxed) - before) as f64
            / started.elapsed().as_secs_f64();
        println!(
            "| one endpoint, a backlog of {BACKLOG} events drained | {drained:.0} events/s | the same bodies POSTed straight, {concurrency} keep-alive connections (reqwest) {direct:.0}/s | ratio {:.2} |",
            drained / direct
        );
        hub.stop().await;
    }

    // 3. Registrations with three endpoints against none, alternating.
    {
        let hub = setup(true).start().await;
        let registration = hub.hub.registration();
        let webhooks = hub.hub.webhooks().unwrap();
        let (url, received) = receiver().await;
        let mut rounds = Vec::new();
        for (round, subscribed) in [false, true, false, true, false, true]
            .into_iter()
            .enumerate()
        {
            let mut ids = Vec::new();
            if subscribed {
                for _ in 0..3 {
                    let created = webhooks
                        .add(None, &url, EventTypes::parse(["user.*"]).unwrap(), "bench")
                        .await
                        .unwrap();
                    ids.push(created.endpoint.id);
                }
            }
            let before = received.count.load(Ordering::Relaxed);
            let started = Instant::now();
            let tasks: Vec<_> = (0..16)
                .map(|t| {
                    let registration = registration.clone();
                    tokio::spawn(async move {
                        for i in 0..REGISTRATIONS / 16 {
                            registration
                                .register(RegisterUser {
                                    username: format!("r{round}t{t}n{i}"),
                                    email: format!("r{round}t{t}n{i}@example.com"),
                                    password: "correct horse battery".into(),
                                })
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let registered = REGISTRATIONS / 16 * 16;
            let rate = registered as f64 / started.elapsed().as_secs_f64();
            println!(
                "| registrations, 16 at once, round {} | {rate:.0}/s with {} endpoints subscribed |",
                round + 1,
                ids.len()
            );
            // Every delivery made before the next round starts.
            until(
                &received,
                before + (3 * registered * usize::from(subscribed)) as u64,
                Duration::from_secs(120),
            )
            .await;
            for id in ids {
                webhooks.delete(None, id).await.unwrap();
            }
            rounds.push((subscribed, rate));
        }
        let mean = |subscribed: bool| {
            let rates: Vec<f64> = rounds
                .iter()
                .filter(|(s, _)| *s == subscribed)
                .map(|(_, r)| *r)
                .collect();
            rates.iter().sum::<f64>() / rates.len() as f64
        };
        println!(
            "| registrations/s, three endpoints vs none (mean of 3 rounds each) | {:.0} vs {:.0} | ratio {:.2} |",
            mean(true),
            mean(false),
            mean(true) / mean(false)
        );
        hub.stop().await;
    }
}
