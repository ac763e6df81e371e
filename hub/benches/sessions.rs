//! The session service under load, each figure beside its baseline measured
//! in the same run (ratios travel between machines; absolute numbers do not).
//!
//!     scripts/bench sessions        (sets up PostgreSQL and MongoDB, then runs this)
//!
//! 1. GET /api/sessions/verify driven by wrk with 32 connections vs the same
//!    open-session SELECT driven by pgbench with 32 connections.
//! 2. Relay throughput draining a backlog from PostgreSQL into MongoDB vs raw
//!    inserts of as many documents of the same shape into the same MongoDB
//!    server, in batches of the relay's size and one by one; five rounds,
//!    each relay drain followed by its baseline, and the median ratio.
//! 3. Relay lag at a steady 500 session changes per second: commit to
//!    visible in MongoDB, sampled by a reader that polls every 2 ms, and
//!    commit to the relay's write for every event.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

mod support;

use std::time::{Duration, Instant};

use hub_core::{ClientInfo, RegisterUser, User};
use hub_testkit::{Service, TestHub, TestSetup};
use mongodb::bson::{Document, doc};
use support::{RUN, pgbench};

/// Users sign in on rest-auth; sessions verifies and relays.
const SERVICES: &[Service] = &[Service::RestAuth, Service::Sessions];

/// Events per relay round, and rounds.
const BACKLOG: usize = 4_000;
const ROUNDS: usize = 5;
const CHANGES_PER_SEC: u64 = 500;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort_unstable();
    let i = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(i).copied().unwrap_or_default().as_secs_f64() * 1e3
}

async fn user(hub: &hub::Hub, name: &str) -> User {
    hub.registration()
        .register(RegisterUser {
            username: name.into(),
            email: format!("{name}@example.com"),
            password: "correct horse battery".into(),
        })
        .await
        .unwrap()
}

/// Raw inserts of `count` documents shaped like session events: (batched
/// per second, one-by-one per second).
async fn raw_insert_rates(db: &mongodb::Database, count: usize, batch: usize) -> (f64, f64) {
    let events = db.collection::<Document>("raw_inserts");
    let document = |i: usize| {
        doc! {
            "_id": uuid::Uuid::now_v7().to_string(),
            "kind": "session.opened",
            "session_id": uuid::Uuid::now_v7().to_string(),
            "user_id": uuid::Uuid::now_v7().to_string(),
            "at": mongodb::bson::DateTime::now(),
            "client_ip": "198.51.100.7",
            "user_agent": format!("bench/{i}"),
            "reason": mongodb::bson::Bson::Null,
            "delivered_at": mongodb::bson::DateTime::now(),
        }
    };
    let started = Instant::now();
    for chunk in (0..count).collect::<Vec<_>>().chunks(batch) {
        events
            .insert_many(chunk.iter().map(|&i| document(i)))
            .ordered(false)
            .await
            .unwrap();
    }
    let batched = count as f64 / started.elapsed().as_secs_f64();
    let single_count = count / 4;
    let started = Instant::now();
    for i in 0..single_count {
        events.insert_one(document(i)).await.unwrap();
    }
    let single = single_count as f64 / started.elapsed().as_secs_f64();
    (batched, single)
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` and nextest probe bench binaries this way
    }
    println!("each load run {} s\n", RUN.as_secs());

    // 1. Verify vs the same SELECT through pgbench.
    {
        let setup = TestSetup::new(SERVICES);
        let database_url = setup.config.database.url.expose().clone();
        let hub = setup.start().await;
        let login = hub_testkit::sign_up(
            &hub.url(Service::RestAuth),
            "bench",
            "correct horse battery",
        )
        .await;
        let token = login["token"].as_str().unwrap().to_owned();
        let session_id = login["session_id"].as_str().unwrap().to_owned();
        let url = format!("{}/api/sessions/verify", hub.url(Service::Sessions));
        let (verify_rate, verify_p99) = tokio::task::spawn_blocking(move || {
            support::wrk(&url, &[format!("Authorization: Bearer {token}")], None)
        })
        .await
        .unwrap();
        let (select_rate, select_p99) = tokio::task::spawn_blocking(move || {
            pgbench(
                &database_url,
                "SELECT id, user_id, expires_at FROM sessions \
                 WHERE id = :id AND revoked_at IS NULL AND expires_at > now();",
                &[("id", session_id)],
            )
        })
        .await
        .unwrap();
        println!(
            "| GET /api/sessions/verify, 32 connections (wrk) | {verify_rate:.0} req/s, p99 {verify_p99:.1} ms | open-session SELECT, 32 connections (pgbench) {select_rate:.0}/s, p99 {select_p99:.1} ms | ratio {:.2} |",
            verify_rate / select_rate
        );
        hub.stop().await;
    }

    // 2. Relay throughput vs raw inserts, in alternating rounds: the
    // MongoDB-wire stand-in sometimes stalls for tens of seconds, and a stall
    // should spoil one round's ratio, not the figure.
    {
        let mut setup = TestSetup::new(SERVICES);
        setup.config.relay.enabled = false;
        let batch = setup.config.relay.batch_size as usize;
        let hub = setup.build();
        hub.migrate().await.unwrap();
        let alice = user(&hub, "alice").await;
        let auth = hub.authentication().unwrap();
        let relay = hub.relay().await.unwrap();
        // alice's user.created goes first, so each round's backlog is its
        // session openings alone.
        while relay.deliver_batch().await.unwrap() > 0 {}
        let db = hub.mongo().await.unwrap();
        let mut ratios = Vec::new();
        for round in 1..=ROUNDS {
            let tasks: Vec<_> = (0..8)
                .map(|_| {
                    let (auth, alice) = (auth.clone(), alice.clone());
                    tokio::spawn(async move {
                        for _ in 0..BACKLOG / 8 {
                            auth.open_session(&alice, None, ClientInfo::default())
                                .await
                                .unwrap();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
            let started = Instant::now();
            let mut drained = 0;
            loop {
                let count = relay.deliver_batch().await.unwrap();
                if count == 0 {
                    break;
                }
                drained += count;
            }
            assert_eq!(drained, BACKLOG);
            let relay_rate = BACKLOG as f64 / started.elapsed().as_secs_f64();
            let (batched, single) = raw_insert_rates(&db, BACKLOG, batch).await;
            println!(
                "| relay round {round} (batch {batch}) | {relay_rate:.0} events/s | raw insert_many of {batch} {batched:.0} docs/s; raw insert_one {single:.0} docs/s | ratio {:.2} (vs insert_many), {:.2} (vs insert_one) |",
                relay_rate / batched,
                relay_rate / single
            );
            ratios.push(relay_rate / batched);
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "relay vs raw insert_many: median of {ROUNDS} rounds {:.2} (min {:.2}, max {:.2})",
            ratios[ratios.len() / 2],
            ratios[0],
            ratios[ratios.len() - 1]
        );
    }

    // 3. Lag at a steady rate of session changes, with the relay running in the hub.
    {
        let hub = TestHub::with(SERVICES).await;
        let alice = user(&hub.hub, "alice").await;
        let auth = hub.hub.authentication().unwrap();
        let events = hub
            .hub
            .mongo()
            .await
            .unwrap()
            .collection::<Document>("session_events");
        let run = RUN * 2;
        let started = Instant::now();
        // The steady writer.
        let writer = {
            let (auth, alice) = (auth.clone(), alice.clone());
            tokio::spawn(async move {
                let mut tick =
                    tokio::time::interval(Duration::from_micros(1_000_000 / CHANGES_PER_SEC));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                let mut written = 0u64;
                while started.elapsed() < run {
                    tick.tick().await;
                    let (auth, alice) = (auth.clone(), alice.clone());
                    tokio::spawn(async move {
                        auth.open_session(&alice, None, ClientInfo::default())
                            .await
                            .unwrap();
                    });
                    written += 1;
                }
                written
            })
        };
        // The sampler: one more change at a time, timed from its commit
        // until a reader sees it in MongoDB.
        let sampler_user = user(&hub.hub, "sampler").await;
        let mut visible = Vec::new();
        while started.elapsed() < run {
            let (session, _) = auth
                .open_session(&sampler_user, None, ClientInfo::default())
                .await
                .unwrap();
            let committed = Instant::now();
            loop {
                let found = events
                    .find_one(doc! { "session_id": session.id.to_string() })
                    .await
                    .unwrap();
                if found.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            visible.push(committed.elapsed());
        }
        let written = writer.await.unwrap();
        let elapsed = started.elapsed();
        // Every event: the relay's write time minus the event's time.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut lags = Vec::new();
        let mut cursor = events
            .find(doc! { "user_id": alice.id.to_string() })
            .await
            .unwrap();
        while cursor.advance().await.unwrap() {
            let event = cursor.deserialize_current().unwrap();
            let at = event.get_datetime("at").unwrap().timestamp_millis();
            let delivered = event
                .get_datetime("delivered_at")
                .unwrap()
                .timestamp_millis();
            lags.push(Duration::from_millis(
                u64::try_from(delivered - at).unwrap_or(0),
            ));
        }
        println!(
            "| relay lag at {:.0} changes/s | commit to visible in MongoDB: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} samples) | commit to relay write, every event: p50 {:.0} ms, p99 {:.0} ms ({} events) |",
            written as f64 / elapsed.as_secs_f64(),
            percentile(&mut visible, 0.5),
            percentile(&mut visible, 0.99),
            percentile(&mut visible, 1.0),
            visible.len(),
            percentile(&mut lags, 0.5),
            percentile(&mut lags, 0.99),
            lags.len(),
        );
        hub.stop().await;
    }
}
